"""The spool keeps every unacknowledged version across crashes and stores nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from agent.counters import Counters
from agent.spool import (
    MIGRATIONS,
    Batch,
    Spool,
    SpoolError,
    UnknownBatchError,
    session_from_json,
    session_to_json,
)
from tests.records import make_session

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


@pytest.fixture
def spool(spool_path: Path) -> Iterator[Spool]:
    with Spool(spool_path) as sp:
        yield sp


def ids(batch: Batch | None) -> list[str]:
    return [e.event_id for e in batch.events] if batch else []


# ---------------------------------------------------------------------- storing


def test_session_json_round_trips() -> None:
    s = make_session(bytes_up=None, hostnames=("a.example", "b.example"))
    assert session_from_json(session_to_json(s)) == s


def test_a_newer_version_replaces_an_older_one_and_a_late_older_one_is_ignored(
    spool: Spool,
) -> None:
    spool.put_session(make_session(version=1, connections=1))
    spool.put_session(make_session(version=3, connections=3))
    spool.put_session(make_session(version=2, connections=2))
    spool.put_session(make_session(version=3, connections=99))
    assert spool.sessions() == [make_session(version=3, connections=3)]
    assert spool.counters.get("spool.stale_ignored") == 2


def test_sessions_filter_by_user_and_since(spool: Spool) -> None:
    spool.put_session(make_session(id="a", user="alice", last_seen=100.0))
    spool.put_session(make_session(id="b", user="bob", last_seen=200.0))
    spool.put_session(make_session(id="c", user="alice", last_seen=300.0))
    assert [s.id for s in spool.sessions(user="alice")] == ["a", "c"]
    assert [s.id for s in spool.sessions(since=150.0)] == ["b", "c"]
    assert [s.id for s in spool.sessions(user="alice", since=150.0)] == ["c"]
    assert spool.sessions(user="mallory") == []


def test_files_are_private_and_the_database_is_wal(spool: Spool, spool_path: Path) -> None:
    spool.put_session(make_session())
    assert stat.S_IMODE(spool_path.parent.stat().st_mode) == 0o700
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(f"{spool_path}{suffix}").st_mode)
        assert mode == 0o600, f"{suffix or 'db'}: {oct(mode)}"
    db = sqlite3.connect(spool_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with Spool(tmp_path / "spool.db"):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_a_spool_from_a_newer_lantern_is_refused(spool_path: Path) -> None:
    Spool(spool_path).close()
    db = sqlite3.connect(spool_path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="newer than this Lantern"):
        Spool(spool_path)


def test_a_corrupt_file_is_a_spool_error(spool_path: Path) -> None:
    spool_path.parent.mkdir()
    spool_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(spool_path)


def test_readonly_reads_and_refuses_writes(spool: Spool, spool_path: Path) -> None:
    spool.put_session(make_session())
    with Spool(spool_path, readonly=True) as ro:
        assert ro.sessions() == [make_session()]
        with pytest.raises(SpoolError, match="read-only"):
            ro.put_session(make_session(version=2))
        with pytest.raises(SpoolError, match="read-only"):
            ro.next_batch()


def test_readonly_of_a_missing_spool_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no spool at"):
        Spool(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


# ---------------------------------------------------------------------- batches


def test_a_batch_leases_exact_versions(spool: Spool) -> None:
    spool.put_session(make_session(id="a", version=1))
    spool.put_session(make_session(id="b", version=1))
    batch = spool.next_batch()
    assert batch is not None
    assert ids(batch) == ["a:1", "b:1"]
    assert [e.kind for e in batch.events] == ["session", "session"]
    assert spool.next_batch() is None  # both in flight
    spool.put_session(make_session(id="a", version=2))
    assert spool.next_batch() is None  # a newer version waits for the one in flight
    spool.ack(batch.id)
    again = spool.next_batch()
    assert ids(again) == ["a:2"]  # not acknowledged by the first batch


def test_ack_deletes_closed_sessions_and_keeps_open_ones_unsent_until_they_change(
    spool: Spool,
) -> None:
    spool.put_session(make_session(id="open", version=4))
    spool.put_session(make_session(id="done", version=7, closed=True))
    batch = spool.next_batch()
    assert batch is not None
    spool.ack(batch.id)
    entries = spool.entries()
    assert [(e.session.id, e.sent, e.sent_version) for e in entries] == [("open", True, 4)]
    assert spool.next_batch() is None
    spool.put_session(make_session(id="open", version=5))
    assert [(e.sent, e.sent_version) for e in spool.entries()] == [(False, 4)]
    assert ids(spool.next_batch()) == ["open:5"]


def test_release_returns_a_batch_for_resending(spool: Spool) -> None:
    spool.put_session(make_session())
    batch = spool.next_batch()
    assert batch is not None
    spool.release(batch.id)
    again = spool.next_batch()
    assert ids(again) == ["s1:1"]
    assert again is not None and again.id != batch.id
    with pytest.raises(UnknownBatchError):
        spool.ack(batch.id)  # settled by release


def test_ack_twice_is_an_error(spool: Spool) -> None:
    spool.put_session(make_session())
    batch = spool.next_batch()
    assert batch is not None
    spool.ack(batch.id)
    with pytest.raises(UnknownBatchError, match="no batch"):
        spool.ack(batch.id)


def test_max_events_limits_a_batch(spool: Spool) -> None:
    for i in range(5):
        spool.put_session(make_session(id=f"s{i}"))
    first = spool.next_batch(max_events=2)
    second = spool.next_batch(max_events=2)
    third = spool.next_batch(max_events=2)
    assert (ids(first), ids(second), ids(third)) == (
        ["s0:1", "s1:1"],
        ["s2:1", "s3:1"],
        ["s4:1"],
    )
    assert spool.in_flight() == 5


def test_leases_do_not_survive_a_restart(spool_path: Path) -> None:
    with Spool(spool_path) as sp:
        sp.put_session(make_session(id="a"))
        sp.put_session(make_session(id="b"))
        first = sp.next_batch()
        assert first is not None
    with Spool(spool_path) as sp:
        assert ids(sp.next_batch()) == ["a:1", "b:1"]


@dataclass
class FakeCollector:
    """Stores the highest version per id; records every event id it was sent."""

    received: list[str] = field(default_factory=list)
    stored: dict[str, int] = field(default_factory=dict)

    def upload(self, batch: Batch) -> None:
        for e in batch.events:
            self.received.append(e.event_id)
            s = e.session
            self.stored[s.id] = max(self.stored.get(s.id, 0), s.version)


def drain(sp: Spool, collector: FakeCollector) -> None:
    while (batch := sp.next_batch(max_events=3)) is not None:
        collector.upload(batch)
        sp.ack(batch.id)


def test_ack_after_restart_loses_nothing_and_repeats_nothing(spool_path: Path) -> None:
    collector = FakeCollector()
    with Spool(spool_path) as sp:
        for i in range(10):
            sp.put_session(make_session(id=f"s{i}", version=1, closed=i % 2 == 0))
        in_flight = sp.next_batch(max_events=4)
        assert in_flight is not None
        collector.upload(in_flight)  # the collector stored it; the agent died before the ack
    with Spool(spool_path) as sp:
        drain(sp, collector)
        assert sp.next_batch() is None
        sent_once = list(collector.received)
    with Spool(spool_path) as sp:
        assert sp.next_batch() is None  # acknowledged: never sent again
        assert sorted(s.id for s in sp.sessions()) == ["s1", "s3", "s5", "s7", "s9"]
        assert all(e.sent for e in sp.entries())
    assert collector.stored == {f"s{i}": 1 for i in range(10)}
    # at-least-once: only the unacknowledged batch was repeated, and only once
    repeats = sorted({e for e in sent_once if sent_once.count(e) > 1})
    assert repeats == sorted(ids(in_flight))
    assert all(sent_once.count(e) == 2 for e in repeats)


# ---------------------------------------------------------------------- size bound


def test_size_bound_drops_sent_rows_first_then_the_oldest_unsent(spool_path: Path) -> None:
    counters = Counters()
    with Spool(spool_path, max_rows=4, counters=counters) as sp:
        sp.put_session(make_session(id="old-unsent"))
        sp.put_session(make_session(id="sent"))
        batch = sp.next_batch()
        assert batch is not None
        sp.ack(batch.id)
        sp.put_session(make_session(id="old-unsent", version=2))  # unsent again, newer seq
        sp.put_session(make_session(id="u1"))
        sp.put_session(make_session(id="u2"))
        sp.put_session(make_session(id="u3"))  # 5 rows: "sent" goes first
        assert sorted(s.id for s in sp.sessions()) == ["old-unsent", "u1", "u2", "u3"]
        sp.put_session(make_session(id="u4"))  # now the oldest unsent
        assert sorted(s.id for s in sp.sessions()) == ["u1", "u2", "u3", "u4"]
        st_ = sp.stats()
        assert (st_.rows, st_.unsent, st_.dropped, st_.dropped_unsent) == (4, 4, 2, 1)
        assert st_.file_bytes > 0
    assert counters.get("spool.dropped") == 2
    with Spool(spool_path, max_rows=4) as sp:
        assert sp.stats().dropped == 2  # persisted, not only in memory
        sp.put_session(make_session(id="u5"))
        assert sp.stats().dropped == 3


# ---------------------------------------------------------------------- crash safety

WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.records import make_session
from agent.spool import Spool

run = int(sys.argv[1])
with Spool(Path(sys.argv[2])) as sp:
    i = 0
    while True:
        # a new session, and an update of one of a few long-lived ones
        for s in (
            make_session(id=f"r{{run}}-{{i}}", version=1, closed=i % 3 == 0),
            make_session(id=f"long{{i % 7}}", version=run * 1_000_000 + i),
        ):
            sp.put_session(s)
            print(f"{{s.id}} {{s.version}}", flush=True)
        i += 1
"""


@pytest.mark.slow
def test_sigkill_mid_write_loses_no_committed_version(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    reported: dict[str, int] = {}
    for run in range(1, 6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(run), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for n, line in enumerate(proc.stdout):
            sid, text = line.split()
            reported[sid] = max(reported.get(sid, 0), int(text))
            if n >= 150 * run:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert len(reported) > 300
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    with Spool(path) as sp:
        stored = {s.id: s.version for s in sp.sessions()}
        for sid, version in reported.items():
            assert stored.get(sid, 0) >= version, f"{sid} v{version} was committed, then lost"
        collector = FakeCollector()
        drain(sp, collector)
    assert len(collector.received) == len(set(collector.received)) == len(stored)


# ---------------------------------------------------------------------- model check


class SpoolMachine(RuleBasedStateMachine):
    """put / next_batch / ack / release / restart against a dict model of the spool."""

    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lantern-spool-"))
        self.path = self.dir / "spool.db"
        self.spool = Spool(self.path)
        # id -> [version, closed, sent_version]
        self.rows: dict[str, list[Any]] = {}
        self.leases: dict[str, list[tuple[str, int]]] = {}

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir)

    def _leased_ids(self) -> set[str]:
        return {sid for lease in self.leases.values() for sid, _ in lease}

    @rule(sid=st.sampled_from(["a", "b", "c", "d"]), step=st.integers(-1, 2), closed=st.booleans())
    def put(self, sid: str, step: int, closed: bool) -> None:
        current = self.rows.get(sid, [0, False, 0])[0]
        version = max(1, current + step)
        self.spool.put_session(make_session(id=sid, version=version, closed=closed))
        if sid not in self.rows:
            self.rows[sid] = [version, closed, 0]
        elif version > current:
            self.rows[sid][:2] = [version, closed]

    @rule(target=batches, max_events=st.integers(1, 5))
    def next_batch(self, max_events: int) -> str:
        leased = self._leased_ids()
        eligible = {
            f"{sid}:{r[0]}" for sid, r in self.rows.items() if r[2] < r[0] and sid not in leased
        }
        batch = self.spool.next_batch(max_events)
        if not eligible:
            assert batch is None
            return "none"
        assert batch is not None
        got = ids(batch)
        assert len(got) == min(max_events, len(eligible)) == len(set(got))
        assert set(got) <= eligible
        self.leases[batch.id] = [(e.session.id, e.session.version) for e in batch.events]
        return batch.id

    @rule(batch_id=consumes(batches))
    def ack(self, batch_id: str) -> None:
        if batch_id not in self.leases:
            with pytest.raises(UnknownBatchError):
                self.spool.ack(batch_id)
            return
        self.spool.ack(batch_id)
        for sid, version in self.leases.pop(batch_id):
            row = self.rows.get(sid)
            if row is None:
                continue
            row[2] = max(row[2], version)
            if row[1] and row[2] >= row[0]:
                del self.rows[sid]

    @rule(batch_id=consumes(batches))
    def release(self, batch_id: str) -> None:
        if batch_id not in self.leases:
            with pytest.raises(UnknownBatchError):
                self.spool.release(batch_id)
            return
        self.spool.release(batch_id)
        del self.leases[batch_id]

    @rule()
    def restart(self) -> None:
        self.spool.close()
        self.spool = Spool(self.path)
        self.leases.clear()

    @invariant()
    def matches_the_model(self) -> None:
        got = {
            e.session.id: (e.session.version, e.session.closed, e.sent)
            for e in self.spool.entries()
        }
        want = {sid: (r[0], r[1], r[2] >= r[0]) for sid, r in self.rows.items()}
        assert got == want
        st_ = self.spool.stats()
        assert st_.rows == len(want)
        assert st_.unsent == sum(1 for r in self.rows.values() if r[2] < r[0])


SpoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_spool_state_machine = SpoolMachine.TestCase
