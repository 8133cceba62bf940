"""After an outage, a real agent reconnects to a real collector (loopback, real certificates)
within its own retry ceiling, drains its spool backlog at ``collector.max_events_per_second``,
measured by the collector's own receive times, and every event is stored once.

The outage is long (30 s) on purpose: gRPC's channel has a reconnect backoff of its own (1 s,
growing 1.6 times per failed attempt, up to 120 s), and by then its next attempt would come
some 10 s after the collector is back, whatever ``collector.retry_max_seconds`` says. The
agent opens a fresh channel after UNAVAILABLE so that its own backoff is the only one.

The collector stamps each batch with the time it handled the Submit (``events.received_at``).
The uploader's pacer puts the next batch ``batch_size / max_events_per_second`` seconds after
the acknowledgement of the one before, and a batch is received before it is acknowledged, so
consecutive receive times are at least that far apart. An uploader that ignored the bound would
send the next batch as soon as the last was acknowledged: milliseconds apart on loopback.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from collector.testing import running_collector
from tests.integration.agent_harness import (
    agent_options,
    expected_fingerprints,
    put_sessions,
    query,
    running_agent,
    wait_for,
    wait_stored,
)

pytestmark = pytest.mark.slow

RATE = 200  # collector.max_events_per_second
BATCH = 50  # collector.batch_size: a batch every 0.25 s at most
BACKLOG = 1000  # 20 batches, about 5 s at the bound
SLOT = BATCH / RATE
OUTAGE = 30.0  # seconds
RETRY_MAX = 1.0  # collector.retry_max_seconds


def test_a_backlog_drains_at_the_configured_rate_after_an_outage(tmp_path: Path) -> None:
    # The collector's own per-agent limit is far above the agent's: only the agent bounds it.
    with running_collector(tmp_path, rate_limit_per_second=1000.0, rate_limit_burst=1000) as c:
        options = agent_options(
            tmp_path / "agent",
            c,
            c.create_token("1h"),
            {
                "collector.max_events_per_second": RATE,
                "collector.batch_size": BATCH,
                "collector.retry_max_seconds": RETRY_MAX,
            },
        )
        with running_agent(options) as agent:
            put_sessions(agent.spool, range(1))
            wait_stored(c, agent, 1)  # enrolled and connected
            assert c.stop() == 0
            put_sessions(agent.spool, range(1, BACKLOG + 1))  # the backlog of the outage
            down = time.monotonic()
            wait_for(
                lambda: agent.counters.get("upload.retries") >= 2,
                30,
                "uploads to fail during the outage",
            )
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))  # the outage goes on
            assert c.event_count() == 1
            c.start()
            back = time.time()
            wait_stored(c, agent, BACKLOG + 1, timeout=60)
            agent_id = (agent.identity_dir / "agent_id").read_text().strip()
        batches = query(
            c,
            "SELECT received_at, COUNT(*) FROM events GROUP BY received_at ORDER BY received_at",
        )
        stored = [row[0] for row in query(c, "SELECT fingerprint FROM events")]

    assert len(stored) == len(set(stored)) == BACKLOG + 1
    assert set(stored) == expected_fingerprints(agent_id, range(BACKLOG + 1))
    # the one event before the outage, then the backlog in full batches
    assert batches[0][1] == 1
    drain = batches[1:]
    assert [n for _, n in drain] == [BATCH] * (BACKLOG // BATCH)
    times = [t for t, _ in drain]

    # reconnected by the agent's own retry, not when gRPC's hidden backoff allowed it
    assert times[0] - back <= RETRY_MAX + 2.0, f"first batch {times[0] - back:.1f}s after"

    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= SLOT * 0.98, f"batches {min(gaps):.3f}s apart, bound {SLOT}s"

    # in any one second, no more than a second's worth of events (plus the batch that opens it)
    most = max(sum(n for t2, n in drain if t <= t2 < t + 1.0) for t, _ in drain)
    assert most <= RATE + BATCH, f"{most} events received within one second"

    # and it does drain: the measured rate is the bound, less the time each call takes
    rate = (BACKLOG - BATCH) / (times[-1] - times[0])
    assert RATE * 0.5 <= rate <= RATE * 1.02, f"drained at {rate:.0f} events/s"
