"""The uploader acks the spool only after the collector did, retries only transient statuses with
jittered backoff, honours retry-after, stops visibly on refusal and paces a backlog."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.counters import Counters
from agent.exceptions import CollectorError
from agent.records import Session
from agent.spool import Spool
from agent.transport import (
    Ack,
    AgentInfo,
    Heartbeat,
    InProcessTransport,
    Submission,
    to_wire,
)
from agent.uploader import Backoff, Pacer, StaticLink, Uploader, spool_heartbeat
from tests.records import numbered_session

INFO = AgentInfo("laptop-1", "linux", "6.1", "0.1.0", "endpoint")


def make_session(i: int, *, version: int = 1, closed: bool = True, **over: Any) -> Session:
    values: dict[str, Any] = {
        "id": f"s{i:06d}",
        "version": version,
        "last_seen": 1010.0 + i,
        "bytes_down": 5400,
        "closed": closed,
        **over,
    }
    return numbered_session(i, **values)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db") as s:
        yield s


def fill(spool: Spool, n: int, **over: Any) -> None:
    for i in range(n):
        spool.put_session(make_session(i, **over))


def make_uploader(
    spool: Spool, transport: Any, clock: FakeClock | None = None, **kw: Any
) -> Uploader:
    counters = Counters()
    kw.setdefault("backoff", Backoff(1.0, 300.0, random.Random(7)))
    return Uploader(
        spool,
        StaticLink(transport),
        spool_heartbeat(INFO, spool, counters),
        counters=counters,
        clock=clock or FakeClock(),
        **kw,
    )


def drive(up: Uploader, clock: FakeClock, *, until: str = "idle", limit: int = 10_000) -> None:
    """Run rounds on the fake clock until one ends with ``until``."""
    for _ in range(limit):
        delay = up.step()
        if up.last_outcome == until:
            return
        clock.now += delay
    raise AssertionError(f"no {until!r} round in {limit} rounds")


def test_spool_keeps_a_batch_until_the_collector_acknowledges_it(spool: Spool) -> None:
    fill(spool, 3)
    seen_unsent: list[int] = []

    class Checking(InProcessTransport):
        def submit(self, submission: Submission) -> Ack:
            seen_unsent.append(spool.stats().unsent)  # nothing is marked sent before the ack
            return super().submit(submission)

    fake = Checking()
    fake.fail("UNAVAILABLE")
    up = make_uploader(spool, fake)
    up.step()
    assert up.last_outcome == "retry"
    assert spool.stats().unsent == 3 and spool.in_flight() == 0  # released, not acked
    up.step()
    assert up.last_outcome == "sent"
    assert seen_unsent == [3, 3]
    assert spool.stats().rows == 0  # closed and acknowledged: deleted only now
    assert sorted(fake.stored) == ["s000000:1", "s000001:1", "s000002:1"]


def test_open_sessions_stay_in_the_spool_marked_sent(spool: Spool) -> None:
    fill(spool, 2, closed=False)
    clock = FakeClock()
    up = make_uploader(spool, InProcessTransport(), clock)
    drive(up, clock)
    stats = spool.stats()
    assert (stats.rows, stats.unsent) == (2, 0)
    spool.put_session(make_session(0, version=2, closed=True))
    drive(up, clock)
    assert spool.stats().rows == 1  # v2 closed and acked: gone; s1 still open


def test_lost_acknowledgement_is_resent_and_stored_once(spool: Spool) -> None:
    fill(spool, 5)
    fake = InProcessTransport()
    fake.fail("DEADLINE_EXCEEDED", stored=True)  # the collector stored it; the answer is lost
    clock = FakeClock()
    up = make_uploader(spool, fake, clock)
    drive(up, clock)
    assert len(fake.submissions) == 2
    assert fake.submissions[0].batch_id != fake.submissions[1].batch_id
    assert [e.event_id for e in fake.submissions[0].events] == [
        e.event_id for e in fake.submissions[1].events
    ]
    assert len(fake.stored) == 5
    assert up.counters.get("upload.duplicates") == 5
    assert up.counters.get("upload.events") == 5
    assert spool.stats().rows == 0


def test_backoff_is_exponential_with_full_jitter_up_to_the_cap(spool: Spool) -> None:
    fill(spool, 1)
    fake = InProcessTransport()
    fake.fail("UNAVAILABLE", times=14)
    up = make_uploader(spool, fake, backoff=Backoff(1.0, 300.0, random.Random(1)))
    delays = []
    for _ in range(14):
        delays.append(up.step())
        assert up.last_outcome == "retry"
    ceilings = [min(300.0, 2.0**k) for k in range(14)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert ceilings[-1] == 300.0
    assert max(delays[9:]) > 64  # grew well past the early ceilings
    assert up.counters.get("upload.retries") == 14
    assert up.counters.get("upload.errors.unavailable") == 14
    up.step()
    assert up.last_outcome == "sent"
    assert up.backoff.failures == 0  # success resets the schedule


def test_full_jitter_spreads_over_the_whole_interval() -> None:
    rng = random.Random(3)
    samples = []
    for _ in range(2000):
        b = Backoff(1.0, 300.0, rng)
        b.failures = 4  # ceiling 16
        samples.append(b.next())
    assert min(samples) >= 0 and max(samples) <= 16
    assert min(samples) < 1 and max(samples) > 15  # not just "base plus a little"
    assert 7 < sum(samples) / len(samples) < 9


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"])
def test_named_transient_statuses_are_retried(spool: Spool, code: str) -> None:
    fill(spool, 1)
    fake = InProcessTransport()
    fake.fail(code)
    up = make_uploader(spool, fake)
    up.step()
    assert (up.last_outcome, up.state) == ("retry", "retrying")
    assert code in (up.problem or "")
    up.step()
    assert up.last_outcome == "sent" and up.problem is None


def test_retry_after_from_the_collector_is_honoured(spool: Spool) -> None:
    fill(spool, 1)
    fake = InProcessTransport()
    fake.fail("RESOURCE_EXHAUSTED", retry_after=42.5)
    up = make_uploader(spool, fake)
    assert up.step() >= 42.5  # first backoff ceiling is 1 s: retry-after wins


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("PERMISSION_DENIED", "refused this agent"),
        ("UNAUTHENTICATED", "refused this agent"),
        ("INVALID_ARGUMENT", "rejected an upload"),
    ],
)
def test_a_permanent_error_stops_uploading_visibly_and_keeps_the_spool(
    spool: Spool, code: str, words: str
) -> None:
    fill(spool, 4)
    fake = InProcessTransport()
    fake.fail(code)
    up = make_uploader(spool, fake)
    up.step()
    assert up.state == "stopped"
    (problem,) = up.problems()
    assert words in problem and code in problem and "4 unsent" in problem
    for _ in range(3):
        up.step()
    assert fake.calls["submit"] == 1  # never retried
    assert spool.stats().unsent == 4 and spool.in_flight() == 0
    assert up.counters.get("upload.stopped") == 1


def test_revoked_agent_message_from_the_collector_is_shown(spool: Spool) -> None:
    fill(spool, 1)
    fake = InProcessTransport()
    fake.revoke("agent a-123 was revoked by admin")
    up = make_uploader(spool, fake)
    up.step()
    assert "agent a-123 was revoked by admin" in up.problems()[0]


def test_a_backlog_drains_at_the_bounded_rate(spool: Spool) -> None:
    fill(spool, 5000)
    fake = InProcessTransport()
    clock = FakeClock()
    up = make_uploader(spool, fake, clock, batch_size=5000, max_events_per_second=1000)
    sent_at: list[tuple[float, int]] = []
    total = 0
    while True:
        delay = up.step()
        if up.last_outcome == "idle":
            break
        if up.last_outcome == "sent":
            total = len(fake.stored)
            sent_at.append((clock.now, total))
        clock.now += delay
    assert total == 5000
    assert max(len(s.events) for s in fake.submissions) == 1000  # batch capped at 1 s worth
    for t, n in sent_at:
        assert n <= 1000 * t + 1000  # never ahead of the rate (one batch of slack)
    assert sent_at[-1][0] >= 4.0


def test_pacer_allows_a_burst_after_idle_time() -> None:
    p = Pacer(100)
    assert p.delay(0) == 0
    p.spent(50, 0)
    assert p.delay(0) == pytest.approx(0.5)
    assert p.delay(10) == 0
    p.spent(100, 10)
    assert p.delay(10) == pytest.approx(1.0)


def test_heartbeat_carries_spool_and_counters(spool: Spool) -> None:
    fill(spool, 2)
    fake = InProcessTransport()
    up = make_uploader(spool, fake)
    up.counters.inc("capture.frames", 9)
    up.step()
    hb = fake.submissions[0].heartbeat
    assert (hb.spool_rows, hb.health, hb.agent) == (2, "ok", INFO)
    assert hb.counters["capture.frames"] == 9


def test_stop_finishes_the_in_flight_batch(spool: Spool) -> None:
    fill(spool, 3)
    entered, proceed = threading.Event(), threading.Event()

    class Slow(InProcessTransport):
        def submit(self, submission: Submission) -> Ack:
            entered.set()
            assert proceed.wait(10)
            return super().submit(submission)

    fake = Slow()
    up = make_uploader(spool, fake, clock=None)
    up.clock = __import__("time").monotonic
    up.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=up.stop)
    stopper.start()
    proceed.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert spool.in_flight() == 0 and spool.stats().rows == 0 and len(fake.stored) == 3
    assert fake.closed


def test_stop_releases_a_failed_in_flight_batch(spool: Spool) -> None:
    fill(spool, 3)
    entered, proceed = threading.Event(), threading.Event()

    class Failing(InProcessTransport):
        def submit(self, submission: Submission) -> Ack:
            entered.set()
            assert proceed.wait(10)
            raise CollectorError("UNAVAILABLE", "connection reset")

    up = make_uploader(spool, Failing())
    up.clock = __import__("time").monotonic
    up.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=up.stop)
    stopper.start()
    proceed.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert spool.in_flight() == 0 and spool.stats().unsent == 3


def test_stop_with_drain_sends_the_backlog_first(spool: Spool) -> None:
    fake = InProcessTransport()
    up = make_uploader(spool, fake, batch_size=10, max_events_per_second=100_000)
    up.clock = __import__("time").monotonic
    up.idle_seconds = 30.0  # asleep on an empty spool when the sessions arrive
    up.start()
    fill(spool, 95)
    up.stop(drain_seconds=10)
    assert len(fake.stored) == 95 and spool.stats().rows == 0


def test_a_spool_failure_stops_the_thread_visibly(spool: Spool) -> None:
    fill(spool, 1)
    up = make_uploader(spool, InProcessTransport())
    up.clock = __import__("time").monotonic
    spool.close()
    up.start()
    assert up._thread is not None
    up._thread.join(10)
    assert up.state == "stopped"
    assert "SpoolError" in (up.problem or "")


def test_submission_converts_to_the_wire_and_back(spool: Spool) -> None:
    pytest.importorskip("collector.convert")
    from collector.convert import session_from_pb

    s1 = make_session(1, process_exe="/usr/bin/x", bytes_up=7)
    s2 = make_session(2, process_name=None, bytes_down=None, closed=False)
    spool.put_session(s1)
    spool.put_session(s2)
    batch = spool.next_batch()
    assert batch is not None
    hb = Heartbeat(INFO, 5.0, {"a.b": 3}, "degraded", 2, 1)
    msg = to_wire(Submission(batch.id, batch.events, hb))
    assert msg.batch_id == batch.id
    assert [e.event_id for e in msg.events] == ["s000001:1", "s000002:1"]
    assert [session_from_pb(e.session) for e in msg.events] == [s1, s2]
    assert not msg.events[1].session.HasField("process_name")
    assert msg.heartbeat.agent.hostname == "laptop-1"
    assert (msg.heartbeat.health, dict(msg.heartbeat.counters)) == ("degraded", {"a.b": 3})
    assert (msg.heartbeat.spool_rows, msg.heartbeat.spool_dropped) == (2, 1)
