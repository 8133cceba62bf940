"""The enrolment port's per-address rate limit: the token bucket, its bounded table, the peer
key, and a real collector on loopback refusing the N+1th rapid attempt until the bucket refills."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from collector.api import lantern_pb2 as pb
from collector.api import lantern_pb2_grpc as pbg
from collector.ratelimit import RateLimiter, peer_address
from collector.server import EnrollmentService
from collector.store import open_store
from collector.testing import enroll_agent, enroll_channel, new_key_and_csr, running_collector
from tests.collector.conftest import FakeContext, RefusedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the bucket


def test_a_burst_is_allowed_then_the_next_call_waits_for_one_token() -> None:
    clock = Clock()
    limiter = RateLimiter(0.5, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(2.0)  # one token at 0.5/s
    clock.now += 1.5
    assert limiter.take("a") == pytest.approx(0.5)  # refilling, not reset by the refusal
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(2.0)


def test_an_idle_bucket_refills_to_the_burst_and_no_further() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.take("a")
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_addresses_have_their_own_buckets() -> None:
    limiter = RateLimiter(0.1, 1, clock=Clock())
    assert limiter.take("192.0.2.1") == 0.0
    assert limiter.take("192.0.2.1") > 0
    assert limiter.take("192.0.2.2") == 0.0


def test_the_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    clock = Clock()
    limiter = RateLimiter(0.001, 1, clock=clock, max_keys=3)
    limiter.take("old")
    limiter.take("kept")
    limiter.take("c")
    limiter.take("kept")  # seen again: now the most recent
    assert limiter.take("kept") > 0  # (and out of tokens)
    for i in range(100):
        limiter.take(f"flood-{i}")
        assert len(limiter) <= 3
    assert limiter.take("old") == 0.0  # forgotten, so it starts again full
    limiter = RateLimiter(0.001, 1, clock=clock, max_keys=3)
    limiter.take("kept")
    limiter.take("x")
    limiter.take("y")
    limiter.take("kept")  # most recent again
    limiter.take("z")  # evicts "x", the least recently seen, not "kept"
    assert limiter.take("kept") > 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 1, max_keys=0)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:192.0.2.7:51234", "192.0.2.7"),
        ("ipv6:[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:bbbb::9]:50000", "2001:db8:1:2::/64"),  # same /64, same bucket
        ("ipv6:[::ffff:192.0.2.7]:51234", "192.0.2.7"),  # dual-stack listener
        ("ipv6:[fe80::1%eth0]:51234", "fe80::/64"),
        ("unix:/run/lantern.sock", "unix:/run/lantern.sock"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
    ],
)
def test_the_peer_key_is_the_address_or_the_ipv6_slash_64(peer: str, key: str) -> None:
    assert peer_address(peer) == key


# ---------------------------------------------------------------- the service, without a network


def test_refusals_are_logged_once_a_minute_as_a_count_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = RateLimiter(0.001, 1, clock=clock)
    service = EnrollmentService(None, None, 30.0, limiter, clock=clock)  # type: ignore[arg-type]
    secret = "lnt_abcd1234_SECRET-PART"
    req = pb.EnrollRequest(token=secret)
    limiter.take("192.0.2.9")  # the bucket is empty
    caplog.set_level(logging.WARNING, logger="lantern.collector")
    codes = []
    for _ in range(5):
        with pytest.raises(RefusedError) as err:
            service.Enroll(req, FakeContext("ipv4:192.0.2.9:4000"))
        codes.append(err.value.args[0])
        clock.now += 1
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
    clock.now += 60
    with pytest.raises(RefusedError):
        service.Enroll(req, FakeContext("ipv4:192.0.2.9:4001"))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("refused 1 enrolment call(s)")
    assert warnings[1].startswith("refused 5 enrolment call(s)")  # 4 held back + this one
    assert all("192.0.2.9" in w and secret not in w for w in warnings)


# ---------------------------------------------------------------- a real collector


def _enroll(ch: Any, token: str) -> pb.EnrollResponse:
    _, csr = new_key_and_csr()
    resp: pb.EnrollResponse = pbg.EnrollmentStub(ch).Enroll(
        pb.EnrollRequest(token=token, csr_der=csr, agent=pb.AgentInfo(hostname="h")), timeout=10
    )
    return resp


def test_the_n_plus_first_rapid_enrolment_is_refused_until_the_bucket_refills(
    tmp_path: Path,
) -> None:
    burst, rate = 3, 0.4  # a token every 2.5 s: the four calls below take far less
    with running_collector(
        tmp_path, rate_limit_enroll_burst=burst, rate_limit_enroll_per_second=rate
    ) as c:
        token = c.create_token("1h", uses=1)
        with enroll_channel(c) as ch:
            for i in range(burst):  # guesses: each refused for the token, each spends a call
                with pytest.raises(grpc.RpcError) as err:
                    _enroll(ch, f"lnt_guess{i}_nope")
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                _enroll(ch, token)  # the right token, but this address is out of calls
        refused = err.value
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hint = int(dict(refused.trailing_metadata() or ())["retry-after-ms"])
        assert 1 <= hint <= 1000 / rate
        assert refused.details() == (
            f"too many enrolment attempts from 127.0.0.1; retry after {hint} ms"
        )
        with open_store(c.data_dir) as store:  # refused before the token was looked at
            assert [t.uses_left for t in store.tokens()] == [1]
        time.sleep(hint / 1000)  # what the collector asked for; then one token is due
        agent = enroll_agent(c, token)
        assert agent.agent_id.startswith("agt-")
        c.stop()
        log = c.log()
    assert "refused 1 enrolment call(s) over the per-address rate limit" in log
    assert token not in log and "lnt_guess" not in log
