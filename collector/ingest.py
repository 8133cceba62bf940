"""Ingest in a child process: SQLite writes off the gRPC process, so ingest uses two cores.

CPython runs one thread of Python at a time, so one process that serves gRPC, converts protobuf
to rows and drives SQLite uses one core. The gRPC process keeps TLS, the per-call agent check,
rate limiting, parsing and validation (``convert.submit_to_batch``), and sends the validated rows
(pickled: about 1 µs an event each way) to this child, which commits the batches queued meanwhile
in one transaction (group commit) and answers each. A batch is acknowledged only after its
transaction committed.

The child ignores SIGINT/SIGTERM (the parent decides when to stop: ``close()`` drains the queue)
and exits when the parent goes away (end of file on the pipe), even after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import signal
import threading
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from collector.convert import IngestBatch
from collector.exceptions import StoreError
from collector.store import IngestResult, SqliteStore

log = logging.getLogger("lantern.collector")

GROUP_MAX_BATCHES = 64  # most batches one transaction takes

# child -> parent answers: (job id, "ok", (accepted, duplicates)) or (job id, "error", message)
Answer = tuple[int, str, Any]


@dataclass(slots=True)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[str, Any] | None = None


class IngestProcess:
    """The parent's handle: ``submit`` blocks until the child stored (or refused) the batch."""

    def __init__(self, db_path: Path) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs gRPC threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=child_main,
            args=(str(db_path), child),
            name="lantern-ingest",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._receiver = threading.Thread(target=self._receive, name="ingest-answers", daemon=True)
        self._receiver.start()
        self.batches = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def submit(self, batch: IngestBatch, timeout: float | None) -> IngestResult:
        """Store one validated batch; StoreError when it was not stored (in time)."""
        pending = _Pending()
        with self._lock:
            if self._broken is not None:
                raise StoreError(self._broken)
            job = next(self._ids)
            self._pending[job] = pending
            try:
                self._conn.send((job, batch))
            except (OSError, ValueError) as exc:
                del self._pending[job]
                raise StoreError(f"the ingest process is gone: {exc}") from exc
        if not pending.done.wait(timeout):
            with self._lock:
                self._pending.pop(job, None)
            raise StoreError("the batch was not stored within the deadline")
        assert pending.answer is not None
        kind, payload = pending.answer
        if kind == "ok":
            accepted, duplicates = payload
            return IngestResult(accepted, duplicates)
        raise StoreError(payload)

    def _receive(self) -> None:
        while True:
            try:
                job, kind, payload = self._conn.recv()
            except (EOFError, OSError):
                self._fail("the ingest process exited")
                return
            with self._lock:
                pending = self._pending.pop(job, None)
            if pending is not None:
                pending.answer = (kind, payload)
                pending.done.set()

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = reason
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.answer = ("error", reason)
            p.done.set()

    def close(self, timeout: float = 30.0) -> None:
        """Let the child store what it was sent, then stop it."""
        with self._lock:
            if self._broken is None:
                self._broken = "the ingest process is stopping"
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(None)
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.error("the ingest process did not stop within %.0f s; killing it", timeout)
            self._proc.kill()
            self._proc.join()
        self._receiver.join(timeout=5)
        self._conn.close()


# ---------------------------------------------------------------- the child


def child_main(db_path: str, conn: Connection) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    queue: deque[tuple[int, IngestBatch]] = deque()
    ready = threading.Condition()
    ended = False

    def read() -> None:
        nonlocal ended
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = None
            with ready:
                if msg is None:
                    ended = True
                else:
                    queue.append(msg)
                ready.notify()
            if msg is None:
                return

    threading.Thread(target=read, name="ingest-reader", daemon=True).start()
    store = SqliteStore(Path(db_path))
    try:
        while True:
            with ready:
                while not queue and not ended:
                    ready.wait()
                if not queue:
                    return
                jobs = [queue.popleft() for _ in range(min(len(queue), GROUP_MAX_BATCHES))]
            _store_group(store, jobs, conn)
    finally:
        store.close()
        log.info(
            "ingest process: %d batches written in %d commits",
            store.batches_written,
            store.commits,
        )


def _store_group(store: SqliteStore, jobs: list[tuple[int, IngestBatch]], conn: Connection) -> None:
    answers: list[Answer]
    try:
        results = store.write_group([batch for _, batch in jobs])
    except StoreError as exc:
        answers = [(job, "error", str(exc)) for job, _ in jobs]
    else:
        answers = [
            (job, "ok", (r.accepted, r.duplicates))
            for (job, _), r in zip(jobs, results, strict=True)
        ]
    for answer in answers:
        try:
            conn.send(answer)
        except (OSError, ValueError):
            return  # the parent is gone: what was committed is committed; it will resend
