"""Gateway attribution: the user behind a source IP, from a mapping file; no processes.

The map is YAML (``users: [{ip: 10.0.0.5, user: alice}, {cidr: 10.1.0.0/16, user: dept-eng}]``)
or CSV (header ``ip_or_cidr,user``), chosen by the file suffix (``.csv``; anything else is
YAML). The longest matching prefix wins. The file is re-read when its mtime or size changes,
checked at most once per second; a broken file on reload keeps the previous map (counted as
``gateway.map_reload_failed`` and logged) so one bad edit does not unmap everyone. An address in
no entry becomes ``unknown:<ip>``.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from agent.attribution.sockets import Transport
from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.records import Attributed, Observation
from signatures.model import Match

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UserMap:
    """Longest-prefix map from addresses to user names.

    Entries are kept per (IP version, prefix length); a lookup masks the address once per prefix
    length present, longest first, so it costs at most 33 (IPv4) or 129 (IPv6) dict probes.
    """

    def __init__(self, entries: Iterable[tuple[Network, str]] = ()) -> None:
        self._tables: dict[tuple[int, int], dict[int, str]] = {}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self._size = 0
        for net, user in entries:
            self._tables.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = (
                user
            )
            self._size += 1
        for version, length in self._tables:
            self._lengths[version].append(length)
        for lengths in self._lengths.values():
            lengths.sort(reverse=True)

    def __len__(self) -> int:
        return self._size

    def lookup(self, addr: str) -> str | None:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        for length in self._lengths[ip.version]:
            mask = ((1 << length) - 1) << (bits - length)
            user = self._tables[(ip.version, length)].get(value & mask)
            if user is not None:
                return user
        return None


def load_user_map(path: Path) -> UserMap:
    """Parse a mapping file. Raises ConfigError naming file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read user map: {exc}") from exc
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _yaml_rows(path, text)
    entries: list[tuple[Network, str]] = []
    seen: dict[Network, tuple[str, int]] = {}
    for line, field, value, user in rows:
        net = _network(path, line, field, value)
        if not isinstance(user, str) or not user.strip():
            raise ConfigError(f"{path}:{line}: field 'user': must be a non-empty string")
        user = user.strip()
        other = seen.get(net)
        if other is not None and other[0] != user:
            raise ConfigError(
                f"{path}:{line}: field '{field}': {net} is already mapped to '{other[0]}' "
                f"on line {other[1]}"
            )
        seen[net] = (user, line)
        entries.append((net, user))
    return UserMap(entries)


def _network(path: Path, line: int, field: str, value: Any) -> Network:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}:{line}: field '{field}': must be an address, not {value!r}")
    text = value.strip()
    try:
        if field == "ip":
            if "/" in text:
                raise ValueError("use 'cidr' for a network")
            return ipaddress.ip_network(text)
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{path}:{line}: field '{field}': {text!r} is not valid: {exc}") from exc


_Row = tuple[int, str, Any, Any]  # line, address field name, address, user


def _csv_rows(path: Path, text: str) -> list[_Row]:
    reader = csv.reader(io.StringIO(text))
    rows: list[_Row] = []
    header_seen = False
    for record in reader:
        line = reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        if record[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in record]
        if not header_seen:
            if [c.lower() for c in cells] != ["ip_or_cidr", "user"]:
                raise ConfigError(
                    f"{path}:{line}: field 'header': expected 'ip_or_cidr,user', "
                    f"got {','.join(cells)!r}"
                )
            header_seen = True
            continue
        if len(cells) != 2:
            raise ConfigError(
                f"{path}:{line}: field 'user': expected 2 columns (ip_or_cidr,user), "
                f"got {len(cells)}"
            )
        field = "ip_or_cidr"
        rows.append((line, field, cells[0], cells[1]))
    if not header_seen:
        raise ConfigError(f"{path}:1: field 'header': expected 'ip_or_cidr,user'")
    return rows


def _yaml_rows(path: Path, text: str) -> list[_Row]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc}") from exc
    if root is None:
        return []
    users = _mapping_value(root, "users")
    if not isinstance(root, yaml.MappingNode) or users is None:
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: field 'users': missing")
    if not isinstance(users, yaml.SequenceNode):
        raise ConfigError(f"{path}:{users.start_mark.line + 1}: field 'users': must be a list")
    rows: list[_Row] = []
    for item in users.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(f"{path}:{line}: field 'users': each entry must be a mapping")
        fields: dict[str, Any] = {}
        for key_node, value_node in item.value:
            key = key_node.value
            if key not in ("ip", "cidr", "user"):
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: field '{key}': unknown field "
                    "(expected ip or cidr, and user)"
                )
            value = yaml.SafeLoader(io.StringIO()).construct_object(value_node, deep=True)
            fields[key] = (value, value_node.start_mark.line + 1)
        addr_fields = [k for k in ("ip", "cidr") if k in fields]
        if len(addr_fields) != 1:
            raise ConfigError(f"{path}:{line}: field 'ip': give exactly one of 'ip' or 'cidr'")
        if "user" not in fields:
            raise ConfigError(f"{path}:{line}: field 'user': missing")
        addr, addr_line = fields[addr_fields[0]]
        user, user_line = fields["user"]
        if not isinstance(user, str):
            raise ConfigError(f"{path}:{user_line}: field 'user': must be a string, not {user!r}")
        rows.append((addr_line, addr_fields[0], addr, user))
    return rows


def _mapping_value(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node  # type: ignore[no-any-return]
    return None


class GatewayAttributor:
    """Attributes matched observations to users by source address."""

    def __init__(
        self,
        map_path: Path | None,
        counters: Counters,
        device: str,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = map_path
        self._counters = counters
        self._device = device
        self._interval = check_interval
        self._clock = clock
        self._map = UserMap()
        self._stamp: tuple[int, int] | None = None
        self._checked = -float("inf")
        if map_path is not None:
            self._stamp = self._stat(map_path)
            if self._stamp is None:
                raise ConfigError(f"{map_path}: user map not found")
            self._map = load_user_map(map_path)
            self._checked = clock()

    @property
    def user_map(self) -> UserMap:
        return self._map

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def maybe_reload(self) -> None:
        """Re-read the map if the file changed; at most one check per ``check_interval``."""
        if self._path is None:
            return
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        stamp = self._stat(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            if stamp is None:
                raise ConfigError(f"{self._path}: user map not found")
            new = load_user_map(self._path)
        except ConfigError as exc:
            self._counters.inc("gateway.map_reload_failed")
            log.warning("keeping the previous user map: %s", exc)
            return
        self._map = new
        self._counters.inc("gateway.map_reloaded")
        log.info("user map reloaded from %s: %d entries", self._path, len(new))

    def close(self) -> None:
        """Nothing to release; here so both attributors can be closed alike."""

    def attribute(self, obs: Observation, match: Match, transport: Transport) -> Attributed:
        self.maybe_reload()
        user = self._map.lookup(obs.src)
        if user is None:
            self._counters.inc("gateway.unmapped")
            user = f"unknown:{obs.src}"
        service = match.service
        return Attributed(
            observation=obs,
            service_id=service.id,
            category=service.category,
            tool=service.name,
            user=user,
            device=self._device,
            process=None,
        )
