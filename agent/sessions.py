"""Sessions: attributed sightings grouped per (user, device, tool, process name) until idle.

A session opens on the first sighting of its key and closes when nothing was seen for
``idle_timeout`` seconds (by ``tick``), when the table is full (the longest-idle session first,
counted as ``sessions.evicted``), or at shutdown (``close_all``). The key uses the process *name*,
not the pid: a program restarted, or one that forks workers, continues the same session.

Every emitted state is a new frozen :class:`~agent.records.Session` with a higher ``version``.
Opening and closing are emitted at once; other changes (a new connection, host, protocol, bytes,
a later ``last_seen``) at most once per ``update_interval`` seconds per session, the rest waiting
in the session until ``tick`` lets them out, so a busy session cannot flood the spool.

Times: ``first_seen``/``last_seen`` and the idle timeout use observation time (what ``tick(now)``
is given); throttling uses ``clock`` (wall time by default), because it paces writes.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.counters import Counters
from agent.options import Option, Options
from agent.records import Attributed, Session

Conn = tuple[str, int, str, int]  # local address, port, remote address, port (bytes lookups)
ConnKey = tuple[str, int, str, int, str]  # ... and the observation's proto
BytesSource = Callable[[Iterable[Conn]], Mapping[Conn, tuple[int, int]]]
SessionKey = tuple[str, str, str, str | None]  # user, device, tool, process name

MAX_HOSTNAMES = 32
MAX_CONNECTIONS = 4096  # tracked per session for de-duplication and bytes
# Observation protos carried over TCP, whose byte counts the kernel can tell.
_TCP_PROTOS = frozenset({"tls", "http", "ip"})
_MAX_MISSES = 2  # polls without an answer before a never-counted connection is given up


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "sessions.idle_timeout",
            float,
            900.0,
            "Seconds without a sighting after which a session closes.",
            check=_positive,
        )
    )
    options.declare(
        Option(
            "sessions.update_interval",
            float,
            30.0,
            "At most one update per session per this many seconds (opening and closing are "
            "always sent at once).",
            check=_not_negative,
        )
    )
    options.declare(
        Option(
            "sessions.max_open",
            int,
            10000,
            "Most sessions open at once; beyond it the longest-idle one is closed.",
            check=lambda v: None if v >= 1 else "must be at least 1",
        )
    )


@dataclass(slots=True)
class _ConnState:
    bytes: tuple[int, int] | None = None
    live: bool = True
    misses: int = 0


@dataclass(slots=True)
class _Open:
    id: str
    version: int
    user: str
    device: str
    tool: str
    service_id: str
    category: str
    process_name: str | None
    process_exe: str | None
    parent_name: str | None
    first_seen: float
    last_seen: float
    connections: int = 0
    conns: dict[ConnKey, _ConnState] = field(default_factory=dict)
    hostnames: set[str] = field(default_factory=set)
    seen_as: set[str] = field(default_factory=set)
    dirty: bool = False
    emitted_at: float = 0.0

    def snapshot(self, closed: bool) -> Session:
        counted = [c.bytes for c in self.conns.values() if c.bytes is not None]
        up = sum(b[0] for b in counted) if counted else None
        down = sum(b[1] for b in counted) if counted else None
        return Session(
            id=self.id,
            version=self.version,
            user=self.user,
            device=self.device,
            tool=self.tool,
            service_id=self.service_id,
            category=self.category,
            process_name=self.process_name,
            process_exe=self.process_exe,
            parent_name=self.parent_name,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            connections=self.connections,
            hostnames=tuple(sorted(self.hostnames)),
            seen_as=tuple(sorted(self.seen_as)),
            bytes_up=up,
            bytes_down=down,
            closed=closed,
        )


class Sessionizer:
    """Groups Attributed sightings into Sessions and reports each new state to ``on_update``."""

    def __init__(
        self,
        idle_timeout: float = 900.0,
        on_update: Callable[[Session], None] | None = None,
        *,
        bytes_source: BytesSource | None = None,
        clock: Callable[[], float] | None = None,
        update_interval: float = 30.0,
        max_open: int = 10000,
        counters: Counters | None = None,
    ) -> None:
        if on_update is None:
            raise TypeError("Sessionizer needs on_update")
        self._idle = idle_timeout
        self._emit = on_update
        self._bytes = bytes_source
        self._clock = clock or time.time
        self._interval = update_interval
        self._max_open = max_open
        self.counters = counters if counters is not None else Counters()
        # Ordered by last activity, so the longest-idle session is first.
        self._open: OrderedDict[SessionKey, _Open] = OrderedDict()

    @classmethod
    def from_options(
        cls,
        options: Options,
        on_update: Callable[[Session], None],
        *,
        bytes_source: BytesSource | None = None,
        counters: Counters | None = None,
    ) -> Sessionizer:
        return cls(
            options["sessions.idle_timeout"],
            on_update,
            bytes_source=bytes_source,
            update_interval=options["sessions.update_interval"],
            max_open=options["sessions.max_open"],
            counters=counters,
        )

    def open_sessions(self) -> list[Session]:
        """The current state of every open session (including changes not yet emitted)."""
        return [s.snapshot(closed=False) for s in self._open.values()]

    def on_attributed(self, a: Attributed) -> None:
        obs = a.observation
        proc = a.process
        key: SessionKey = (a.user, a.device, a.tool, proc.name if proc is not None else None)
        s = self._open.get(key)
        if s is None:
            if len(self._open) >= self._max_open:
                _, oldest = self._open.popitem(last=False)
                self.counters.inc("sessions.evicted")
                self._close(oldest)
            s = _Open(
                id=str(uuid.uuid4()),
                version=0,
                user=a.user,
                device=a.device,
                tool=a.tool,
                service_id=a.service_id,
                category=a.category,
                process_name=proc.name if proc is not None else None,
                process_exe=proc.exe if proc is not None else None,
                parent_name=proc.parent_name if proc is not None else None,
                first_seen=obs.ts,
                last_seen=obs.ts,
            )
            self._open[key] = s
            self._add(s, a)
            self.counters.inc("sessions.opened")
            self._send(s, closed=False)
            return
        self._open.move_to_end(key)
        if self._add(s, a):
            s.dirty = True
            self._maybe_send(s)

    def _add(self, s: _Open, a: Attributed) -> bool:
        """Fold one sighting into ``s``; True when anything changed."""
        obs = a.observation
        changed = False
        if obs.ts > s.last_seen:
            s.last_seen, changed = obs.ts, True
        if obs.ts < s.first_seen:
            s.first_seen, changed = obs.ts, True
        ck: ConnKey = (obs.src, obs.sport, obs.dst, obs.dport, obs.proto)
        if ck not in s.conns:
            if len(s.conns) < MAX_CONNECTIONS:
                s.conns[ck] = _ConnState(live=obs.proto in _TCP_PROTOS)
            else:
                # Past the bound, a repeat of an untracked tuple is counted again.
                self.counters.inc("sessions.connections_untracked")
            s.connections += 1
            changed = True
        if obs.name not in s.hostnames:
            if len(s.hostnames) < MAX_HOSTNAMES:
                s.hostnames.add(obs.name)
                changed = True
            else:
                self.counters.inc("sessions.hostnames_dropped")
        if obs.proto not in s.seen_as:
            s.seen_as.add(obs.proto)
            changed = True
        proc = a.process
        if proc is not None:
            # Fill what the first sighting could not tell; never overwrite (stable sessions).
            if s.process_exe is None and proc.exe is not None:
                s.process_exe, changed = proc.exe, True
            if s.parent_name is None and proc.parent_name is not None:
                s.parent_name, changed = proc.parent_name, True
        return changed

    def _send(self, s: _Open, closed: bool) -> None:
        s.version += 1
        s.dirty = False
        s.emitted_at = self._clock()
        self._emit(s.snapshot(closed=closed))

    def _maybe_send(self, s: _Open) -> None:
        if s.dirty and self._clock() - s.emitted_at >= self._interval:
            self._send(s, closed=False)

    def _close(self, s: _Open) -> None:
        self.counters.inc("sessions.closed")
        self._send(s, closed=True)

    def tick(self, now: float) -> None:
        """Close sessions idle past the timeout, refresh bytes, let throttled updates out."""
        idle = [k for k, s in self._open.items() if now - s.last_seen >= self._idle]
        live = [s for k, s in self._open.items() if now - s.last_seen < self._idle]
        self._refresh_bytes(live + [self._open[k] for k in idle])
        for k in idle:
            self._close(self._open.pop(k))
        for s in live:
            self._maybe_send(s)

    def close_all(self, now: float) -> None:
        """Close every open session (shutdown), after a last bytes refresh."""
        self._refresh_bytes(list(self._open.values()))
        while self._open:
            _, s = self._open.popitem(last=False)
            self._close(s)

    def _refresh_bytes(self, sessions: list[_Open]) -> None:
        if self._bytes is None or not sessions:
            return
        wanted: dict[Conn, list[tuple[_Open, _ConnState]]] = {}
        for s in sessions:
            for ck, cs in s.conns.items():
                if cs.live:
                    wanted.setdefault(ck[:4], []).append((s, cs))
        if not wanted:
            return
        try:
            counted = self._bytes(list(wanted))
        except OSError:
            # Bytes are a nicety; a failing source leaves them as they were.
            self.counters.inc("sessions.bytes_failed")
            return
        for conn, holders in wanted.items():
            got = counted.get(conn)
            for s, cs in holders:
                if got is not None:
                    if got != cs.bytes:
                        cs.bytes = got
                        s.dirty = True
                    cs.misses = 0
                elif cs.bytes is not None:
                    cs.live = False  # closed: its last count stands
                else:
                    cs.misses += 1
                    cs.live = cs.misses < _MAX_MISSES
