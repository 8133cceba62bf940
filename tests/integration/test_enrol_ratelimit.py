"""A real agent refused by the enrolment port's per-address rate limit (a real collector on
loopback) backs off for the collector's retry hint and then enrols; it never gives up."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest

from collector.testing import enroll_agent, running_collector
from tests.integration.agent_harness import (
    agent_options,
    expected_fingerprints,
    put_sessions,
    query,
    running_agent,
)

pytestmark = pytest.mark.slow


def test_an_agent_refused_for_rate_backs_off_for_the_hint_then_enrols(tmp_path: Path) -> None:
    rate = 0.25  # one enrolment call per 4 s from an address, none saved up
    with running_collector(
        tmp_path, rate_limit_enroll_burst=1, rate_limit_enroll_per_second=rate
    ) as c:
        with pytest.raises(grpc.RpcError) as guess:  # someone on this address spends the call
            enroll_agent(c, "lnt_guess_nope")
        assert guess.value.code() == grpc.StatusCode.UNAUTHENTICATED
        options = agent_options(tmp_path / "agent", c, c.create_token("1h"))
        with running_agent(options, start=False) as agent:
            put_sessions(agent.spool, range(3))
            up = agent.uploader
            delay = up.step()
            assert (up.last_outcome, up.state) == ("retry", "retrying")
            assert up.problem is not None
            assert up.problem.startswith("collector busy (RESOURCE_EXHAUSTED: too many enrolment")
            assert agent.counters.get("upload.errors.resource_exhausted") == 1
            assert not (agent.identity_dir / "client.pem").exists()
            # the backoff is the collector's hint: the jitter (retry_initial_seconds 0.2) is less
            hint = int(re.findall(r"retry after (\d+) ms", up.problem)[0]) / 1000
            assert 1.0 <= hint <= 1 / rate
            assert delay == pytest.approx(hint)
            time.sleep(delay)
            assert up.step() >= 0 and up.last_outcome == "sent", up.problem
            assert up.state == "sending" and up.problem is None
            agent_id = (agent.identity_dir / "agent_id").read_text().strip()
    stored = {row[0] for row in query(c, "SELECT fingerprint FROM events")}
    assert stored == expected_fingerprints(agent_id, range(3))
