"""Sessionizer: grouping, throttled updates, idle close, shutdown, bounds, bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.exceptions import ConfigError
from agent.options import Options
from agent.records import Attributed, Observation, ProcessInfo, Proto, Session
from agent.sessions import MAX_HOSTNAMES, Conn, Sessionizer, declare_options


def attributed(
    ts: float = 1000.0,
    *,
    user: str = "alice",
    tool: str = "python3 via OpenAI API",
    name: str = "api.openai.com",
    proto: Proto = "tls",
    sport: int = 50000,
    pid: int | None = 100,
    process_name: str = "python3",
) -> Attributed:
    obs = Observation(ts, "192.0.2.10", sport, "203.0.113.10", 443, proto, name)
    proc = (
        ProcessInfo(pid, process_name, f"/usr/bin/{process_name}", user, 1000, 1, "bash")
        if pid is not None
        else None
    )
    return Attributed(obs, "openai-api", "api", tool, user, "laptop-7", proc)


class Rig:
    def __init__(self, **kw: object) -> None:
        self.now = 0.0
        self.updates: list[Session] = []
        self.sent_at: dict[tuple[str, int], float] = {}
        self.s = Sessionizer(
            kw.pop("idle_timeout", 900.0),  # type: ignore[arg-type]
            self._on_update,
            clock=lambda: self.now,
            **kw,  # type: ignore[arg-type]
        )

    def _on_update(self, s: Session) -> None:
        self.updates.append(s)
        self.sent_at[(s.id, s.version)] = self.now

    def feed(self, a: Attributed, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        self.s.on_attributed(a)


def _check_versions(updates: list[Session]) -> None:
    by_id: dict[str, list[int]] = {}
    for u in updates:
        by_id.setdefault(u.id, []).append(u.version)
    for versions in by_id.values():
        assert versions == sorted(set(versions)), versions
        assert versions[0] == 1


def test_first_sighting_opens_a_session_at_once() -> None:
    rig = Rig()
    rig.feed(attributed())
    [s] = rig.updates
    assert (s.version, s.user, s.device, s.tool, s.process_name) == (
        1,
        "alice",
        "laptop-7",
        "python3 via OpenAI API",
        "python3",
    )
    assert (s.process_exe, s.parent_name, s.service_id, s.category) == (
        "/usr/bin/python3",
        "bash",
        "openai-api",
        "api",
    )
    assert (s.first_seen, s.last_seen, s.connections) == (1000.0, 1000.0, 1)
    assert (s.hostnames, s.seen_as, s.bytes_up, s.bytes_down, s.closed) == (
        ("api.openai.com",),
        ("tls",),
        None,
        None,
        False,
    )
    assert rig.s.open_sessions() == [s]


def test_same_program_new_pid_continues_other_keys_split() -> None:
    rig = Rig(update_interval=0.0)
    rig.feed(attributed())
    rig.feed(attributed(1001.0, pid=200, sport=50001))  # same name, new pid: same session
    rig.feed(attributed(1002.0, user="bob"))
    rig.feed(attributed(1003.0, tool="Cursor", process_name="Cursor"))
    rig.feed(attributed(1004.0, pid=None, tool="OpenAI API"))
    sessions = rig.s.open_sessions()
    assert len(sessions) == 4
    first = next(s for s in sessions if s.user == "alice" and s.process_name == "python3")
    assert (first.connections, first.last_seen, first.version) == (2, 1001.0, 2)
    assert len({s.id for s in sessions}) == 4


def test_connections_hostnames_and_protocols() -> None:
    rig = Rig(update_interval=0.0)
    rig.feed(attributed())
    rig.feed(attributed(1001.0))  # same tuple again: not a new connection
    rig.feed(attributed(1002.0, proto="dns", name="chat.openai.com"))  # same ports, other proto
    rig.feed(attributed(1003.0, sport=50001, name="files.openai.com", proto="quic"))
    s = rig.updates[-1]
    assert s.connections == 3
    assert s.hostnames == ("api.openai.com", "chat.openai.com", "files.openai.com")
    assert s.seen_as == ("dns", "quic", "tls")
    for i in range(MAX_HOSTNAMES + 5):
        rig.feed(attributed(1100.0 + i, name=f"h{i:03}.openai.com"))
    assert len(rig.s.open_sessions()[0].hostnames) == MAX_HOSTNAMES
    assert rig.s.counters.get("sessions.hostnames_dropped") > 0


def test_updates_are_throttled_but_open_and_close_are_not() -> None:
    rig = Rig(update_interval=30.0, idle_timeout=100.0)
    rig.feed(attributed(1000.0), now=0.0)
    for i in range(1, 20):
        rig.feed(attributed(1000.0 + i, sport=50000 + i), now=float(i))
    assert [u.version for u in rig.updates] == [1]  # within 30 s of the opening
    rig.s.tick(1025.0)
    assert len(rig.updates) == 1
    rig.now = 31.0
    rig.s.tick(1031.0)  # the waiting change goes out now
    assert [u.version for u in rig.updates] == [1, 2]
    assert rig.updates[-1].connections == 20
    rig.s.tick(1040.0)
    assert len(rig.updates) == 2  # nothing new
    rig.feed(attributed(1041.0, sport=60000), now=62.0)  # interval passed: sent at once
    assert [u.version for u in rig.updates] == [1, 2, 3]
    rig.feed(attributed(1042.0, sport=60001), now=63.0)
    rig.s.tick(1141.0)  # idle 99 s: still open
    assert not rig.updates[-1].closed
    rig.now = 64.0
    rig.s.tick(1142.0)  # idle 100 s: closed at once, throttle or not, with the waiting change
    closed = rig.updates[-1]
    assert closed.closed and closed.connections == 22 and closed.last_seen == 1042.0
    assert rig.s.open_sessions() == []
    _check_versions(rig.updates)
    # The next sighting opens a new session.
    rig.feed(attributed(2000.0), now=100.0)
    assert rig.updates[-1].id != closed.id and rig.updates[-1].version == 1


def test_close_all_closes_everything() -> None:
    rig = Rig()
    rig.feed(attributed())
    rig.feed(attributed(user="bob"))
    rig.s.close_all(2000.0)
    closed = [u for u in rig.updates if u.closed]
    assert sorted(u.user for u in closed) == ["alice", "bob"]
    assert all(u.version == 2 for u in closed)
    assert rig.s.open_sessions() == []
    assert rig.s.counters.get("sessions.closed") == 2


def test_max_open_closes_the_longest_idle_first() -> None:
    rig = Rig(max_open=3, update_interval=0.0)
    for user in ("a", "b", "c"):
        rig.feed(attributed(1000.0, user=user))
    rig.feed(attributed(1001.0, user="a", sport=1))  # a is active again; b is now the oldest
    rig.feed(attributed(1002.0, user="d"))
    closed = [u.user for u in rig.updates if u.closed]
    assert closed == ["b"]
    assert sorted(s.user for s in rig.s.open_sessions()) == ["a", "c", "d"]
    assert rig.s.counters.get("sessions.evicted") == 1
    _check_versions(rig.updates)


class FakeBytes:
    def __init__(self) -> None:
        self.table: dict[Conn, tuple[int, int]] = {}
        self.asked: list[list[Conn]] = []

    def __call__(self, conns: Iterable[Conn]) -> Mapping[Conn, tuple[int, int]]:
        wanted = list(conns)
        self.asked.append(wanted)
        return {c: self.table[c] for c in wanted if c in self.table}


def test_bytes_are_summed_and_kept_after_a_connection_closes() -> None:
    source = FakeBytes()
    rig = Rig(update_interval=0.0, bytes_source=source)
    a1, a2 = attributed(sport=1), attributed(sport=2)
    quic = attributed(sport=3, proto="quic")
    c1, c2 = ("192.0.2.10", 1, "203.0.113.10", 443), ("192.0.2.10", 2, "203.0.113.10", 443)
    for a in (a1, a2, quic):
        rig.feed(a)
    assert rig.s.open_sessions()[0].bytes_up is None
    source.table = {c1: (100, 1000), c2: (5, 50)}
    rig.s.tick(1001.0)
    assert (rig.updates[-1].bytes_up, rig.updates[-1].bytes_down) == (105, 1050)
    assert sorted(source.asked[-1]) == [c1, c2]  # QUIC (UDP) is never asked
    del source.table[c1]  # c1 closed: its last count stands
    source.table[c2] = (7, 70)
    rig.s.tick(1002.0)
    assert (rig.updates[-1].bytes_up, rig.updates[-1].bytes_down) == (107, 1070)
    rig.s.tick(1003.0)
    assert source.asked[-1] == [c2]  # a closed connection is not asked again
    versions = len(rig.updates)
    rig.s.tick(1004.0)
    assert len(rig.updates) == versions  # unchanged bytes are not an update


def test_options_are_declared_and_checked() -> None:
    options = Options()
    declare_options(options)
    assert (
        options["sessions.idle_timeout"],
        options["sessions.update_interval"],
        options["sessions.max_open"],
    ) == (900.0, 30.0, 10000)
    options.set("sessions.idle_timeout", 60, "agent.yaml:4")
    assert options["sessions.idle_timeout"] == 60.0
    with pytest.raises(ConfigError, match=r"agent.yaml:5: key 'sessions.max_open'"):
        options.set("sessions.max_open", 0, "agent.yaml:5")
    updates: list[Session] = []
    s = Sessionizer.from_options(options, updates.append)
    s.on_attributed(attributed())
    s.tick(1059.0)
    assert not updates[-1].closed
    s.tick(1060.0)
    assert updates[-1].closed


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.sampled_from(["a", "b", "c"]), st.integers(1, 60000)),
        st.tuples(st.just("tick"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, steps=st.lists(st.floats(0, 40), min_size=60, max_size=60))
def test_invariants_hold_for_any_sequence(
    ops: list[tuple[str, str, int]], steps: list[float]
) -> None:
    rig = Rig(update_interval=30.0, idle_timeout=120.0, max_open=2)
    for (op, user, port), step in zip(ops, steps, strict=False):
        rig.now += step
        if op == "feed":
            rig.feed(attributed(rig.now, user=user, sport=port))
        else:
            rig.s.tick(rig.now)
    rig.s.close_all(rig.now)
    _check_versions(rig.updates)
    by_id: dict[str, list[Session]] = {}
    for u in rig.updates:
        by_id.setdefault(u.id, []).append(u)
    for states in by_id.values():
        assert [s.closed for s in states] == [False] * (len(states) - 1) + [True]
        assert all(a.connections <= b.connections for a, b in itertools.pairwise(states))
        assert len({(s.user, s.tool, s.process_name) for s in states}) == 1
        # Between opening and closing, updates of one session are at least 30 s apart.
        middle = [rig.sent_at[(s.id, s.version)] for s in states[:-1]]
        assert all(b - a >= 30.0 for a, b in itertools.pairwise(middle))
    assert rig.s.open_sessions() == []
