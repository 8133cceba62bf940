"""Enrolment tokens: expired, used up, revoked and unknown tokens are refused with the reason."""

from __future__ import annotations

import time

import pytest

from collector.convert import AgentDetails
from collector.exceptions import (
    TokenExpiredError,
    TokenRevokedError,
    TokenUnknownError,
    TokenUsedUpError,
)
from collector.store import SqliteStore
from collector.tokens import create_token, hash_token, parse_duration

DETAILS = AgentDetails("host", "linux", "6.1", "0.1.0", "endpoint")


def enroll(store: SqliteStore, token: str, agent_id: str, now: float | None = None) -> None:
    store.enroll(hash_token(token), now or time.time(), agent_id, DETAILS, "ab", 0.0)


def test_a_token_is_stored_only_as_a_hash(store: SqliteStore) -> None:
    token = create_token(store, 3600)
    raw = store.path.read_bytes() + store.path.with_name(store.path.name + "-wal").read_bytes()
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw


def test_a_counted_token_enrols_exactly_that_many_agents(store: SqliteStore) -> None:
    token = create_token(store, 3600, uses=2)
    enroll(store, token, "agt-1")
    enroll(store, token, "agt-2")
    with pytest.raises(TokenUsedUpError, match="has no uses left"):
        enroll(store, token, "agt-3")
    (t,) = store.tokens()
    assert (t.uses_left, t.used) == (0, 2)
    assert [a.id for a in store.agents()] == ["agt-1", "agt-2"]


def test_an_expired_token_is_refused(store: SqliteStore) -> None:
    token = create_token(store, 60, now=time.time() - 120)
    with pytest.raises(TokenExpiredError, match="expired at"):
        enroll(store, token, "agt-1")
    assert store.agents() == []
    assert store.tokens()[0].uses_left == 1  # a refused enrolment spends nothing


def test_a_revoked_token_is_refused(store: SqliteStore) -> None:
    token = create_token(store, 3600)
    assert store.revoke_token(token.split("_")[1])
    assert not store.revoke_token(token.split("_")[1])  # already revoked
    with pytest.raises(TokenRevokedError, match="has been revoked"):
        enroll(store, token, "agt-1")


def test_an_unknown_token_is_refused(store: SqliteStore) -> None:
    create_token(store, 3600)
    with pytest.raises(TokenUnknownError, match="not known"):
        enroll(store, "lnt_00000000_guess", "agt-1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "-1h", "0h", "1y"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
