"""Load and validate the YAML catalog into typed Service records."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from signatures.exceptions import CatalogError, SignatureError
from signatures.model import (
    CATEGORIES,
    RISK_ATTRIBUTES,
    TIERS,
    HostPattern,
    RiskFact,
    Service,
    Tier,
)
from signatures.names import normalise_name

BUILTIN_DIR = Path(__file__).parent / "catalog"
SHARED_INFRA_FILE = Path(__file__).parent / "shared_infra.yaml"

_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9-]{2,63}$")
_VENDOR_KEYS = {"vendor", "id", "hq_country", "services"}
_SERVICE_KEYS = {
    "id",
    "name",
    "category",
    "tier",
    "description",
    "hosts",
    "processes",
    "ports",
    "risk",
}
_HOST_KEYS = {"domain", "exact", "regex", "tier", "pinned"}
_FACT_KEYS = {"value", "source", "tier", "note", "as_of"}


class _LineDict(dict[str, Any]):
    line: int = 0


# libyaml's loader is ~5x faster, and the catalog is read at every start; fall back to the
# pure-Python one where PyYAML was built without libyaml.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loader that remembers the line of every mapping, for error messages."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    mapping = _LineDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class _Where:
    file: Path
    line: int = 0
    entry: str | None = None

    def error(self, field_name: str, reason: str, line: int | None = None) -> CatalogError:
        at = f"{self.file}:{line or self.line}"
        entry = f" service '{self.entry}'" if self.entry else ""
        return CatalogError(f"{at}:{entry} field '{field_name}': {reason}")


@dataclass(frozen=True)
class Catalog:
    """All services, in load order, plus where they came from."""

    services: tuple[Service, ...]
    files: tuple[Path, ...] = field(default=())

    def by_id(self) -> dict[str, Service]:
        return {s.id: s for s in self.services}


def load_shared_infra(path: Path = SHARED_INFRA_FILE) -> frozenset[str]:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("domains"), list):
        raise CatalogError(f"{path}:1: field 'domains': must be a list of domain names")
    return frozenset(normalise_name(str(d)) for d in data["domains"])


def load_catalog(extra_dirs: Iterable[Path] = (), *, builtin: bool = True) -> Catalog:
    """Load the built-in catalog and any extra directories; raise CatalogError on the first
    invalid entry. Duplicate service ids across files are errors.
    """
    dirs = ([BUILTIN_DIR] if builtin else []) + [Path(d) for d in extra_dirs]
    shared = load_shared_infra()
    services: list[Service] = []
    files: list[Path] = []
    seen: dict[str, Path] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise CatalogError(f"{directory}: catalog directory does not exist")
        for path in sorted(directory.glob("*.yaml")):
            files.append(path)
            for service in load_file(path, shared):
                if service.id in seen:
                    raise CatalogError(
                        f"{path}: service '{service.id}': field 'id': duplicate, "
                        f"already defined in {seen[service.id]}"
                    )
                seen[service.id] = path
                services.append(service)
    return Catalog(tuple(services), tuple(files))


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"{path}{line}: not valid YAML: {exc}") from exc


def load_file(path: Path, shared_infra: frozenset[str] = frozenset()) -> list[Service]:
    """Validate one vendor file and return its services."""
    where = _Where(path, 1)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise where.error("(top level)", "must be a mapping with vendor, id, hq_country, services")
    _no_unknown(where, data, _VENDOR_KEYS, "")
    vendor = _req_str(where, data, "vendor")
    vendor_id = _req_str(where, data, "id")
    if not _ID.match(vendor_id):
        raise where.error("id", f"'{vendor_id}' must match [a-z0-9-]+")
    if vendor_id != path.stem:
        raise where.error("id", f"'{vendor_id}' must equal the file name stem '{path.stem}'")
    hq = _req_str(where, data, "hq_country")
    if not _COUNTRY.match(hq):
        raise where.error("hq_country", f"'{hq}' is not an ISO 3166-1 alpha-2 code")
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        raise where.error("services", "must be a non-empty list")
    return [
        _service(_Where(path, getattr(raw, "line", 1)), raw, vendor, vendor_id, hq, shared_infra)
        for raw in raw_services
    ]


def _service(
    where: _Where,
    raw: Any,
    vendor: str,
    vendor_id: str,
    hq: str,
    shared_infra: frozenset[str],
) -> Service:
    if not isinstance(raw, dict):
        raise where.error("services[]", "each service must be a mapping")
    sid = raw.get("id")
    if not isinstance(sid, str) or not _ID.match(sid):
        raise where.error("id", f"{sid!r} must be a string matching [a-z0-9-]+")
    where.entry = sid
    _no_unknown(where, raw, _SERVICE_KEYS, "")
    name = _req_str(where, raw, "name")
    category = _req_str(where, raw, "category")
    if category not in CATEGORIES:
        raise where.error("category", f"'{category}' is not one of {', '.join(CATEGORIES)}")
    tier = _tier(where, raw.get("tier"), "tier")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise where.error("description", "must be a string")
    hosts = tuple(_hosts(where, raw.get("hosts", []), shared_infra))
    processes = _str_list(where, raw.get("processes", []), "processes")
    ports = raw.get("ports", [])
    if not isinstance(ports, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        raise where.error("ports", "must be a list of port numbers 1-65535")
    if not hosts and not processes and not ports:
        raise where.error("hosts", "a service needs at least one of hosts, processes, ports")
    risk = tuple(_risk(where, raw.get("risk", {})))
    return Service(
        id=sid,
        name=name,
        vendor=vendor,
        vendor_id=vendor_id,
        category=category,  # type: ignore[arg-type]
        hosts=hosts,
        processes=processes,
        ports=tuple(ports),
        tier=tier,
        description=description,
        risk=risk,
        hq_country=hq,
        file=where.file.name,
    )


def _hosts(where: _Where, raw: Any, shared_infra: frozenset[str]) -> Iterator[HostPattern]:
    if not isinstance(raw, list):
        raise where.error("hosts", "must be a list")
    for i, item in enumerate(raw):
        fname = f"hosts[{i}]"
        line = getattr(item, "line", None)
        tier: Tier | None = None
        pinned = False
        if isinstance(item, str):
            kind, value = "domain", item
        elif isinstance(item, dict):
            _no_unknown(where, item, _HOST_KEYS, fname)
            kinds = [k for k in ("domain", "exact", "regex") if k in item]
            if len(kinds) != 1:
                raise where.error(fname, "needs exactly one of domain, exact, regex", line)
            kind = kinds[0]
            value = item[kind]
            tier = _tier(where, item.get("tier"), f"{fname}.tier", line)
            pinned = item.get("pinned", False)
            if not isinstance(pinned, bool):
                raise where.error(f"{fname}.pinned", "must be true or false", line)
        else:
            raise where.error(fname, "must be a domain string or a mapping", line)
        if not isinstance(value, str) or not value:
            raise where.error(f"{fname}.{kind}", "must be a non-empty string", line)
        if kind == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                raise where.error(f"{fname}.regex", f"invalid regex: {exc}", line) from exc
            if value.startswith(".*") or value in {".+", "."}:
                raise where.error(f"{fname}.regex", "must be anchored to a vendor domain", line)
            pattern = value
        else:
            try:
                pattern = normalise_name(value)
            except SignatureError as exc:
                raise where.error(f"{fname}.{kind}", str(exc), line) from exc
            if not _HOSTNAME.match(pattern):
                raise where.error(f"{fname}.{kind}", f"'{value}' is not a hostname", line)
            if "." not in pattern:
                raise where.error(f"{fname}.{kind}", f"'{value}' is a bare TLD or label", line)
            broad = _shared_parent(pattern, shared_infra)
            if broad:
                raise where.error(
                    f"{fname}.{kind}",
                    f"'{value}' is shared infrastructure (covers '{broad}'); "
                    "use a service-specific subdomain",
                    line,
                )
        yield HostPattern(kind, pattern, tier, pinned)  # type: ignore[arg-type]


def _shared_parent(pattern: str, shared_infra: frozenset[str]) -> str | None:
    """The shared-infrastructure domain that ``pattern`` equals or is a parent of, if any."""
    if pattern in shared_infra:
        return pattern
    suffix = "." + pattern
    for domain in shared_infra:
        if domain.endswith(suffix):
            return domain
    return None


def _risk(where: _Where, raw: Any) -> Iterator[RiskFact]:
    if not isinstance(raw, dict):
        raise where.error("risk", "must be a mapping of attribute -> fact(s)")
    for attribute, facts in raw.items():
        if attribute not in RISK_ATTRIBUTES:
            raise where.error(
                f"risk.{attribute}", f"unknown attribute; known: {', '.join(RISK_ATTRIBUTES)}"
            )
        items = facts if isinstance(facts, list) else [facts]
        for i, fact in enumerate(items):
            fname = f"risk.{attribute}" + (f"[{i}]" if isinstance(facts, list) else "")
            yield _fact(where, attribute, fact, fname)


def _fact(where: _Where, attribute: str, fact: Any, fname: str) -> RiskFact:
    line = getattr(fact, "line", None)
    if not isinstance(fact, dict):
        raise where.error(fname, "must be a mapping with value and source", line)
    _no_unknown(where, fact, _FACT_KEYS, fname)
    if "value" not in fact:
        raise where.error(f"{fname}.value", "is required", line)
    value: bool | str = fact["value"]
    expected = RISK_ATTRIBUTES[attribute]
    if not isinstance(value, expected):
        raise where.error(f"{fname}.value", f"must be a {expected.__name__}", line)
    if attribute == "hq_country" and not _COUNTRY.match(str(value)):
        raise where.error(f"{fname}.value", "must be an ISO 3166-1 alpha-2 code", line)
    source = fact.get("source")
    if not isinstance(source, str) or not source.startswith("https://"):
        raise where.error(f"{fname}.source", "must be the https:// URL the fact came from", line)
    note = fact.get("note")
    if note is not None and not isinstance(note, str):
        raise where.error(f"{fname}.note", "must be a string", line)
    as_of = fact.get("as_of")
    if as_of is not None:
        as_of = str(as_of)
        if not _DATE.match(as_of):
            raise where.error(f"{fname}.as_of", "must be a date YYYY-MM-DD", line)
    return RiskFact(
        attribute, value, source, _tier(where, fact.get("tier"), f"{fname}.tier", line), note, as_of
    )


def _tier(where: _Where, value: Any, fname: str, line: int | None = None) -> Tier | None:
    if value is None:
        return None
    if value not in TIERS:
        raise where.error(fname, f"{value!r} is not one of {', '.join(TIERS)}", line)
    return value  # type: ignore[no-any-return]


def _req_str(where: _Where, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, "is required and must be a non-empty string")
    return value


def _str_list(where: _Where, raw: Any, fname: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise where.error(fname, "must be a list of non-empty strings")
    return tuple(raw)


def _no_unknown(where: _Where, data: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            name = f"{prefix}.{key}" if prefix else str(key)
            raise where.error(
                name,
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
                getattr(data, "line", None),
            )
