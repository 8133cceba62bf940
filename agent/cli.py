"""`lantern scan`: hostnames of AI services (or all names) in pcap and pcapng files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from agent.exceptions import AgentError
from agent.scan import Scanner, Sighting, summarise
from lantern.output import Progress, print_table
from signatures.cli import catalog_dir_option, load_or_exit
from signatures.matcher import Matcher

AUTO_JOBS_BYTES = 16 << 20


class JsonLines:
    """Writes Sightings as JSON lines, equal to ``json.dumps(sighting_json(s))`` but built from
    cached pieces: the catalog part of a line repeats for every sighting of a service, and
    encoding it anew each time cost more than finding the name in the packet.
    """

    def __init__(self) -> None:
        self._tails: dict[tuple[str | None, str | None, str], str] = {}

    def line(self, s: Sighting) -> str:
        o, m = s.observation, s.match
        key = (m.service.id if m else None, m.tier if m else None, s.file)
        tail = self._tails.get(key)
        if tail is None:
            full = sighting_json(s)
            tail = self._tails[key] = json.dumps(
                {k: full[k] for k in ("service", "tool", "vendor", "category", "tier", "file")}
            )[1:]
        # src/dst are address texts and proto a fixed word: nothing in them needs escaping
        return (
            f'{{"ts": {round(o.ts, 6)!r}, "src": "{o.src}", "sport": {o.sport}, '
            f'"dst": "{o.dst}", "dport": {o.dport}, "proto": "{o.proto}", '
            f'"name": {json.dumps(o.name)}, {tail}'
        )


def sighting_json(s: Sighting) -> dict[str, object]:
    o, m = s.observation, s.match
    svc = m.service if m else None
    return {
        "ts": round(o.ts, 6),
        "src": o.src,
        "sport": o.sport,
        "dst": o.dst,
        "dport": o.dport,
        "proto": o.proto,
        "name": o.name,
        "service": svc.id if svc else None,
        "tool": svc.name if svc else None,
        "vendor": svc.vendor if svc else None,
        "category": svc.category if svc else None,
        "tier": m.tier if m else None,
        "file": s.file,
    }


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per observation per line.")
@click.option("--all", "all_names", is_flag=True, help="Every extracted name, not only AI matches.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=0,
    show_default="0: automatic",
    help="Processes per file; 0 picks one per core for files over 16 MB.",
)
@catalog_dir_option
def scan(
    files: tuple[Path, ...],
    as_json: bool,
    all_names: bool,
    progress: bool | None,
    jobs: int,
    catalog_dirs: tuple[Path, ...],
) -> None:
    """Read pcap/pcapng FILES and report the AI services seen (DNS, TLS SNI, QUIC, HTTP).

    Exit status: 0 when every file was read, 2 when one was missing or corrupt.
    """
    scanner = Scanner(Matcher(load_or_exit(catalog_dirs).services))
    bar = Progress(progress)
    # click.echo per line costs more than the scan of a packet; write to the stream directly
    out = sys.stdout
    lines = JsonLines()
    kept: list[Sighting] = []
    failed = False
    for path in files:
        try:
            for s in scanner.scan_file(path, progress=bar, jobs=jobs or _auto_jobs(path)):
                if s.match is None and not all_names:
                    continue
                if as_json:
                    out.write(lines.line(s) + "\n")
                else:
                    kept.append(s)
        except AgentError as exc:
            bar.clear()
            click.echo(f"lantern: {exc}", err=True)
            failed = True
        bar.clear()
    if not as_json:
        _print_summary(scanner, kept, all_names)
    if failed:
        sys.exit(2)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _auto_jobs(path: Path) -> int:
    """Parallel only pays past process start-up, and needs a second core."""
    try:
        big = path.stat().st_size > AUTO_JOBS_BYTES
    except OSError:
        return 1  # the scan reports the missing file
    return min(os.cpu_count() or 1, 4) if big else 1


def _print_summary(scanner: Scanner, kept: list[Sighting], all_names: bool) -> None:
    rows = [
        (
            r.service or "-",
            r.tool or "-",
            r.vendor or "-",
            r.name,
            " ".join(f"{p}:{n}" for p, n in sorted(r.protos.items())),
            str(r.count),
        )
        for r in summarise(kept)
    ]
    st = scanner.stats
    if rows:
        print_table(("SERVICE", "TOOL", "VENDOR", "NAME", "SEEN AS", "COUNT"), rows)
        click.echo()
    elif not all_names:
        click.echo("No AI services seen.")
    services = len({s.match.service.id for s in kept if s.match})
    malformed = sum(v for k, v in st.counters.items() if "malformed" in k)
    click.echo(
        f"{st.files} file(s), {st.packets:,} packets in {_duration(st.seconds)}: "
        f"{st.names:,} names, {st.matches:,} AI sightings of {services} service(s); "
        f"{malformed} malformed skipped"
    )
