"""A real agent inside the test process, against a real collector (``collector.testing``).

The agent is built as ``lantern agent run`` builds it: its declared options, ``build_link``
(CA pinning, enrolment, renewal, gRPC over mutual TLS) and the ``Uploader`` on its own thread.
Only capture is replaced: tests put sessions into the spool, so what was made is known exactly.

    options = agent_options(tmp_path / "agent", collector, token, {"collector.batch_size": 50})
    with running_agent(options) as agent:
        put_sessions(agent.spool, range(10))
        wait_for(lambda: collector.event_count() == 10, 30, "the sessions")
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli_agent import all_options
from agent.counters import Counters
from agent.enroll import CollectorLink, agent_info, build_link
from agent.options import Options
from agent.records import Session
from agent.spool import Spool
from agent.state import StateDir
from agent.uploader import Uploader, spool_heartbeat
from collector.testing import CollectorProcess
from tests.records import numbered_session


def agent_options(
    directory: Path,
    c: CollectorProcess,
    token: str | None,
    values: dict[str, Any] | None = None,
    *,
    ca_file: bool = True,
) -> Options:
    """Options of an agent in ``directory`` pointed at ``c``; ``values`` override (dotted keys).

    The token goes through a ``$file`` secret, as an MDM profile would give it. ``ca_file=False``
    leaves the CA unpinned, for tests that pin it by ``collector.ca_sha256``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    options = all_options()
    settings: dict[str, Any] = {
        "state.dir": str(directory / "state"),
        "device.name": "test-host",
        "collector.address": c.address,
        "collector.enroll_address": c.enroll_address,
        "collector.timeout": 5.0,
        "collector.retry_initial_seconds": 0.2,
        "collector.retry_max_seconds": 1.0,
    }
    if ca_file:
        (directory / "collector-ca.pem").write_bytes(c.ca_cert_pem)
        settings["collector.ca_file"] = str(directory / "collector-ca.pem")
    if token is not None:
        (directory / "token").write_text(token)
        settings["collector.token"] = {"$file": str(directory / "token")}
    settings.update(values or {})
    for key, value in settings.items():
        options.set(key, value, "test")
    return options


@dataclass
class InProcessAgent:
    state: StateDir
    spool: Spool
    link: CollectorLink
    uploader: Uploader
    counters: Counters

    @property
    def identity_dir(self) -> Path:
        return self.state.state / "identity"


@contextmanager
def running_agent(options: Options, *, start: bool = True) -> Iterator[InProcessAgent]:
    """The agent's link and uploader; the uploader thread runs unless ``start=False`` (then the
    test drives ``uploader.step()`` itself). Stopped and closed on exit."""
    state = StateDir.from_options(options)
    state.create()
    counters = Counters()
    spool = Spool(state.spool, counters=counters)
    link = build_link(options, state.state)
    beat = spool_heartbeat(agent_info(options), spool, counters)
    uploader = Uploader.from_options(options, spool, link, beat, counters)
    if start:
        uploader.start()
    try:
        yield InProcessAgent(state, spool, link, uploader, counters)
    finally:
        uploader.stop()
        spool.close()


def make_session(i: int) -> Session:
    return numbered_session(i, device="test-host")


def put_sessions(spool: Spool, numbers: Iterable[int]) -> None:
    for i in numbers:
        spool.put_session(make_session(i))


def fingerprint(agent_id: str, event_id: str) -> int:
    """The collector's ledger key for an event (see ``collector.store``)."""
    digest = hashlib.blake2b(agent_id.encode() + b"\0" + event_id.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def expected_fingerprints(agent_id: str, numbers: Iterable[int]) -> set[int]:
    return {fingerprint(agent_id, f"g{i:06d}:1") for i in numbers}


def query(c: CollectorProcess, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from the collector's database, read-only (the collector keeps writing)."""
    db = sqlite3.connect(f"{c.db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def wait_stored(c: CollectorProcess, agent: InProcessAgent, n: int, timeout: float = 30) -> None:
    """Until the collector holds ``n`` events; fails at once, with why, if uploading stopped."""

    def done() -> bool:
        if agent.uploader.state == "stopped":
            raise AssertionError(f"the uploader stopped: {agent.uploader.problem}")
        return c.event_count() >= n

    wait_for(done, timeout, f"{n} events at the collector")


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
