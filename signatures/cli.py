"""`lantern catalog`: list the AI-service catalog and match names against it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lantern.output import print_table
from signatures.exceptions import SignatureError
from signatures.loader import Catalog, load_catalog
from signatures.matcher import Matcher
from signatures.model import Match, Service

catalog_dir_option = click.option(
    "--catalog-dir",
    "catalog_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra catalog directory (repeatable), merged with the built-in catalog.",
)


def load_or_exit(catalog_dirs: tuple[Path, ...]) -> Catalog:
    try:
        return load_catalog(catalog_dirs)
    except SignatureError as exc:
        click.echo(f"lantern: {exc}", err=True)
        sys.exit(2)


def service_json(service: Service) -> dict[str, object]:
    return {
        "id": service.id,
        "tool": service.name,
        "vendor": service.vendor,
        "category": service.category,
        "tier": service.tier,
        "hosts": [
            {"kind": h.kind, "pattern": h.pattern, "tier": h.tier, "pinned": h.pinned}
            for h in service.hosts
        ],
        "processes": list(service.processes),
        "ports": list(service.ports),
        "risk": [
            {
                k: v
                for k, v in (
                    ("attribute", f.attribute),
                    ("value", f.value),
                    ("tier", f.tier),
                    ("source", f.source),
                    ("note", f.note),
                )
                if v is not None
            }
            for f in service.risk
        ],
        "hq_country": service.hq_country,
    }


@click.group()
def catalog() -> None:
    """The catalog of AI services (signatures/)."""


@catalog.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per service per line.")
@catalog_dir_option
def list_cmd(as_json: bool, catalog_dirs: tuple[Path, ...]) -> None:
    """List every service in the catalog."""
    cat = load_or_exit(catalog_dirs)
    if as_json:
        for service in cat.services:
            click.echo(json.dumps(service_json(service)))
        return
    rows = [
        (
            s.id,
            s.name,
            s.vendor,
            s.category,
            ", ".join(h.pattern for h in s.hosts[:3]) + (" …" if len(s.hosts) > 3 else ""),
        )
        for s in cat.services
    ]
    print_table(("SERVICE", "TOOL", "VENDOR", "CATEGORY", "HOSTS"), rows)
    vendors = len({s.vendor_id for s in cat.services})
    click.echo(f"\n{len(cat.services)} services from {vendors} vendors")


@catalog.command("match")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per name per line.")
@catalog_dir_option
def match_cmd(names: tuple[str, ...], as_json: bool, catalog_dirs: tuple[Path, ...]) -> None:
    """Match hostnames (or process names, with a `process:` prefix) against the catalog."""
    matcher = Matcher(load_or_exit(catalog_dirs).services)
    for name in names:
        if name.startswith("process:"):
            service = matcher.match_process(name[len("process:") :])
            match = Match(service, None, service.tier) if service else None
        else:
            match = matcher.match_name(name)
        if as_json:
            click.echo(json.dumps(match_json(name, match)))
        else:
            click.echo(f"{name}\t{match.service.id if match else '-'}")


def match_json(name: str, match: Match | None) -> dict[str, object]:
    s = match.service if match else None
    return {
        "name": name,
        "service": s.id if s else None,
        "tool": s.name if s else None,
        "vendor": s.vendor if s else None,
        "category": s.category if s else None,
        "tier": match.tier if match else None,
    }
