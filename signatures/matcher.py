"""Compiled hostname, process and port matcher over the catalog (a hot path)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from signatures.exceptions import CatalogError, SignatureError
from signatures.loader import Catalog, load_catalog
from signatures.model import HostPattern, Match, Service
from signatures.names import normalise_name

_CACHE_MAX = 16384


class Matcher:
    """Matches hostnames at label boundaries, exact names, regexes, and process names.

    Domain patterns live in one dict probed once per label suffix of the name, so a lookup costs
    O(labels), not O(patterns). Regexes are rare and are joined into one alternation.
    Precedence, most specific first: exact, regex, longest domain.
    """

    def __init__(self, services: Iterable[Service]) -> None:
        self._exact: dict[str, Match] = {}
        self._domain: dict[str, Match] = {}
        self._regex_matches: list[Match] = []
        self._process: dict[str, Service] = {}
        self._ports: dict[int, tuple[Service, ...]] = {}
        self.services: tuple[Service, ...] = tuple(services)
        regex_parts: list[str] = []
        for service in self.services:
            for host in service.hosts:
                match = Match(service, host, host.tier or service.tier)
                if host.kind == "regex":
                    regex_parts.append(f"(?P<r{len(self._regex_matches)}>{host.pattern})")
                    self._regex_matches.append(match)
                    continue
                table = self._exact if host.kind == "exact" else self._domain
                other = table.get(host.pattern)
                if other is not None:
                    raise CatalogError(
                        f"{service.file}: service '{service.id}': field 'hosts': "
                        f"{host.kind} '{host.pattern}' is also claimed by '{other.service.id}' "
                        f"({other.service.file})"
                    )
                table[host.pattern] = match
            for proc in service.processes:
                self._process.setdefault(_process_key(proc), service)
            for port in service.ports:
                self._ports[port] = (*self._ports.get(port, ()), service)
        self._regex = re.compile("|".join(regex_parts)) if regex_parts else None
        self._cache: dict[str, Match | None] = {}

    @classmethod
    def from_catalog(cls, catalog: Catalog | None = None) -> Matcher:
        return cls((catalog or load_catalog()).services)

    def match_name(self, name: str) -> Match | None:
        """The most specific service for a hostname, or None. ``name`` may be in any case, with
        a trailing dot or in Unicode form; decoders pass it already normalised, which is cheapest.
        """
        cached = self._cache.get(name, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        result = self._lookup(name)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[name] = result
        return result

    def _lookup(self, name: str) -> Match | None:
        try:
            key = normalise_name(name)
        except SignatureError:
            return None
        hit = self._exact.get(key)
        if hit is not None:
            return hit
        if self._regex is not None:
            m = self._regex.fullmatch(key)
            if m is not None and m.lastgroup is not None:
                return self._regex_matches[int(m.lastgroup[1:])]
        domain = self._domain
        pos = 0
        while True:
            hit = domain.get(key[pos:] if pos else key)
            if hit is not None:
                return hit
            dot = key.find(".", pos)
            if dot < 0:
                return None
            pos = dot + 1

    def match_process(self, process_name: str) -> Service | None:
        """The service whose desktop app or CLI has this process name (case-insensitive)."""
        return self._process.get(_process_key(process_name))

    def services_on_port(self, port: int) -> tuple[Service, ...]:
        """Local runtimes that listen on this port by default (a hint; ports collide)."""
        return self._ports.get(port, ())

    def host_patterns(self) -> tuple[HostPattern, ...]:
        return tuple(h for s in self.services for h in s.hosts)


_MISS = object()


def _process_key(name: str) -> str:
    key = name.lower()
    return key[:-4] if key.endswith(".exe") else key
