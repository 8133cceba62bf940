"""Collector fixtures: a shared real collector on loopback, enrolled agents, record factories."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.records import Session
from collector.api import lantern_pb2 as pb
from collector.api import lantern_pb2_grpc as pbg
from collector.convert import session_to_event
from collector.store import SqliteStore
from collector.testing import AgentIdentity, CollectorProcess, enroll_agent, running_collector
from tests import records

_ids = itertools.count(1)


def make_session(**overrides: Any) -> Session:
    """A session with an id of its own (``tests.records.make_session`` otherwise)."""
    values: dict[str, Any] = {
        "id": f"s{next(_ids)}-{uuid.uuid4().hex[:8]}",
        "device": "alice-laptop",
        "parent_name": None,
        "first_seen": 1_760_000_000.0,
        "last_seen": 1_760_000_060.0,
        "connections": 3,
        "bytes_down": None,
        **overrides,
    }
    return records.make_session(**values)


def make_batch(n: int = 3, batch_id: str | None = None, **overrides: Any) -> pb.SubmitRequest:
    return pb.SubmitRequest(
        batch_id=batch_id or uuid.uuid4().hex,
        events=[session_to_event(make_session(**overrides)) for _ in range(n)],
    )


class RefusedError(Exception):
    """What ``FakeContext.abort`` raises: ``args`` are the status code and the message."""


class FakeContext:
    """The part of a gRPC servicer context the collector's services use, without a network."""

    def __init__(
        self, peer: str = "ipv4:192.0.2.1:4000", auth: dict[str, list[bytes]] | None = None
    ):
        self._peer = peer
        self._auth = auth or {}
        self.trailers: tuple[tuple[str, str], ...] = ()

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailers = md

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise RefusedError(code, message)


def submit(agent: AgentIdentity, req: pb.SubmitRequest, **kw: Any) -> pb.SubmitResponse:
    with agent.ingest_channel(**kw) as ch:
        resp: pb.SubmitResponse = pbg.IngestStub(ch).Submit(req, timeout=30)
        return resp


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    with running_collector(
        tmp_path_factory.mktemp("shared"),
        rate_limit_per_second=1000.0,
        rate_limit_burst=1000,
        rate_limit_enroll_per_second=1000.0,  # the tests here enrol many agents from one address
        rate_limit_enroll_burst=1000,
        limits_max_message_bytes=256 * 1024,
        limits_max_batch_events=100,
    ) as c:
        yield c


@pytest.fixture
def agent(collector: CollectorProcess) -> AgentIdentity:
    return enroll_agent(collector, collector.create_token("1h"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "c.db") as s:
        yield s
