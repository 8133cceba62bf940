"""The collector's store: events, sessions, usage, agents and enrolment tokens in SQLite.

``Store`` is the narrow interface the server uses, so a PostgreSQL store can follow;
``SqliteStore`` implements it with one write connection (WAL, one transaction per batch) and a
read connection per thread, so per-call revocation checks never wait behind a write.

Idempotence (DESIGN.md invariant 4): ``sessions`` keeps the highest version per
``(agent_id, id)`` (an upsert that only moves forward) and ``usage`` is keyed by ``(agent_id, id)``
(INSERT OR IGNORE), so a resent batch changes nothing. ``events`` is the ledger that tells a
resend apart for the acknowledgement: one row per event, keyed by a 64-bit BLAKE2b fingerprint of
``(agent id, event id)``, filled with INSERT OR IGNORE (``accepted`` = rows it added). A narrow
integer key keeps this random-order index small; it made ingest about 30% faster than a
``(agent_id, event_id)`` text key. A fingerprint collision (about n²/2⁶⁵ for n stored events)
could only miscount an event as a duplicate: its data is stored all the same. Keys are scoped by
the certificate's agent id, so one agent can neither overwrite nor shadow another's records.

Durability: WAL with ``synchronous=NORMAL``. A batch is acknowledged only after its transaction
committed to the WAL, so a killed collector process loses no acknowledged batch; only a power cut
can undo the last commits before a checkpoint (use ``synchronous=FULL`` where that matters more
than throughput).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sqlite_utils

from collector.convert import AgentDetails, HeartbeatRow, IngestBatch
from collector.exceptions import (
    AgentRefusedError,
    CertificateReplacedError,
    StoreError,
    TokenExpiredError,
    TokenRevokedError,
    TokenUnknownError,
    TokenUsedUpError,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        fingerprint INTEGER PRIMARY KEY,
        received_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        agent_id TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        tool TEXT NOT NULL,
        service_id TEXT NOT NULL,
        category TEXT NOT NULL,
        process_name TEXT,
        process_exe TEXT,
        parent_name TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        connections INTEGER NOT NULL,
        hostnames TEXT NOT NULL,
        seen_as TEXT NOT NULL,
        bytes_up INTEGER,
        bytes_down INTEGER,
        closed INTEGER NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (agent_id, id)
    );
    CREATE INDEX sessions_user ON sessions(user, last_seen);
    CREATE INDEX sessions_service ON sessions(service_id, last_seen);
    CREATE INDEX sessions_time ON sessions(last_seen);
    CREATE TABLE usage (
        agent_id TEXT NOT NULL,
        id TEXT NOT NULL,
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        process_name TEXT,
        process_exe TEXT,
        service_id TEXT,
        host TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        provider TEXT NOT NULL,
        model TEXT,
        operation TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        streaming INTEGER NOT NULL,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cache_read_tokens INTEGER,
        cache_write_tokens INTEGER,
        reasoning_tokens INTEGER,
        estimated INTEGER NOT NULL,
        cost_usd REAL,
        status_code INTEGER,
        deployment TEXT,
        tags TEXT NOT NULL,
        key_fingerprint TEXT,
        key_hint TEXT,
        data_class TEXT NOT NULL,
        labels TEXT NOT NULL,
        labels_truncated INTEGER NOT NULL,
        uploads TEXT NOT NULL,
        bytes_up INTEGER NOT NULL,
        bytes_down INTEGER NOT NULL,
        error TEXT,
        received_at REAL NOT NULL,
        PRIMARY KEY (agent_id, id)
    );
    CREATE INDEX usage_user ON usage(user, started);
    CREATE INDEX usage_provider ON usage(provider, model, started);
    CREATE INDEX usage_time ON usage(started);
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        os TEXT NOT NULL,
        os_version TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        mode TEXT NOT NULL,
        enrolled_at REAL NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        cert_serial TEXT NOT NULL,
        cert_not_after REAL NOT NULL,
        token_id TEXT NOT NULL,
        health TEXT NOT NULL DEFAULT '',
        counters TEXT NOT NULL DEFAULT '{}',
        spool_rows INTEGER NOT NULL DEFAULT 0,
        spool_dropped INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0,
        revoked_at REAL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        uses_left INTEGER NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: the certificate that renewal replaced, accepted until a grace period after the agent
    # first calls with its new one (collector.server.AgentGate).
    """
    ALTER TABLE agents ADD COLUMN prev_cert_serial TEXT;
    ALTER TABLE agents ADD COLUMN cert_renewed_at REAL;
    ALTER TABLE agents ADD COLUMN cert_first_used_at REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
GROUP_MAX_EVENTS = 20_000  # most events one group commit takes
# New databases only (SQLite fixes it when the first table is made). Session rows are a few
# hundred bytes and arrive in random key order; 16 KiB pages split less often than 4 KiB ones,
# which made inserting them about 16% cheaper (12 against 10 µs an event, measured).
PAGE_SIZE = 16384
# The WAL is copied back into the database by a thread of its own once it holds this much, so
# the writer never stops for it; past WAL_FORCE_BYTES (the checkpoints cannot keep up, or a
# reader holds them back) the writer waits for one itself, keeping the WAL bounded.
WAL_CHECKPOINT_BYTES = 40 << 20
WAL_FORCE_BYTES = 4 * WAL_CHECKPOINT_BYTES
CACHE_KIB = 64 * 1024  # page cache per connection: keeps the indexes' hot pages in memory
DB_NAME = "collector.db"


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(slots=True)
class _Job:
    """A batch waiting for the writer thread, and what became of it."""

    batch: IngestBatch
    done: threading.Event = field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: StoreError | None = None


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    hostname: str
    os: str
    os_version: str
    agent_version: str
    mode: str
    enrolled_at: float
    first_seen: float
    last_seen: float
    cert_serial: str
    cert_not_after: float
    token_id: str
    health: str
    counters: dict[str, int]
    spool_rows: int
    spool_dropped: int
    revoked: bool
    # Renewal: the certificate the current one replaced (None: never renewed), when, and when
    # the agent first called with the current one (None: not yet, so it may still hold only the
    # one it replaced).
    prev_cert_serial: str | None
    cert_renewed_at: float | None
    cert_first_used_at: float | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    created_at: float
    expires_at: float
    uses_left: int
    used: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class PruneResult:
    events: int
    sessions: int
    usage: int


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Metered calls of one provider's model over a period, summed. Token sums count only the
    calls that reported them; ``cost_usd`` sums the priced calls, and ``unpriced`` counts the
    calls with no price (an unknown model is never priced by guess)."""

    provider: str
    model: str | None  # None: the call did not name one
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    reasoning_tokens: int
    estimated: int  # calls whose tokens were estimated from sizes (web apps)
    cost_usd: float
    unpriced: int


class Store(Protocol):
    """What the server and the CLI need from storage."""

    def ingest(self, batch: IngestBatch, timeout: float | None = None) -> IngestResult: ...
    def agent(self, agent_id: str) -> AgentRecord | None: ...
    def agents(self) -> list[AgentRecord]: ...
    def revoke_agent(self, agent_id: str, now: float) -> bool: ...
    def enroll(
        self,
        token_hash: str,
        now: float,
        agent_id: str,
        details: AgentDetails,
        cert_serial: str,
        cert_not_after: float,
    ) -> None: ...
    def check_token(self, token_hash: str, now: float) -> str: ...
    def renewed(
        self,
        agent_id: str,
        presented_serial: str,
        cert_serial: str,
        cert_not_after: float,
        now: float,
    ) -> None: ...
    def cert_in_use(self, agent_id: str, cert_serial: str, now: float) -> bool: ...
    def add_token(
        self, token_id: str, token_hash: str, now: float, ttl: float, uses: int
    ) -> None: ...
    def tokens(self) -> list[TokenRecord]: ...
    def revoke_token(self, token_id: str) -> bool: ...
    def prune(self, older_than: float) -> PruneResult: ...
    def usage_by_model(self, since: float, until: float) -> list[ModelUsage]: ...
    def close(self) -> None: ...


_SESSION_UPSERT = """
INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (agent_id, id) DO UPDATE SET
    version = excluded.version, user = excluded.user, device = excluded.device,
    tool = excluded.tool, service_id = excluded.service_id, category = excluded.category,
    process_name = excluded.process_name, process_exe = excluded.process_exe,
    parent_name = excluded.parent_name, first_seen = excluded.first_seen,
    last_seen = excluded.last_seen, connections = excluded.connections,
    hostnames = excluded.hostnames, seen_as = excluded.seen_as, bytes_up = excluded.bytes_up,
    bytes_down = excluded.bytes_down, closed = excluded.closed,
    received_at = excluded.received_at
WHERE excluded.version > sessions.version
"""
_USAGE_INSERT = f"INSERT OR IGNORE INTO usage VALUES ({','.join('?' * 35)})"
_EVENT_INSERT = "INSERT OR IGNORE INTO events VALUES (?,?)"


class SqliteStore:
    """The default store: one SQLite file, safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self._stopping = False
        self._queue: deque[_Job] = deque()
        self._queue_lock = threading.Lock()
        self._queue_ready = threading.Condition(self._queue_lock)
        self._wal = Path(f"{path}-wal")
        self._checkpoint_due = threading.Event()
        self.checkpoints = 0  # background checkpoints run, and ones the writer had to wait for
        self.forced_checkpoints = 0
        self.commits = 0  # group commits so far, and the batches they held
        self.batches_written = 0
        with _translate(f"cannot open the store {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._migrate()
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        self._checkpointer_thread = threading.Thread(
            target=self._checkpointer, name="store-checkpoint", daemon=True
        )
        self._checkpointer_thread.start()
        self._writer_thread = threading.Thread(
            target=self._writer, name="store-writer", daemon=True
        )
        self._writer_thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        # takes effect only on a database not written yet, so before the switch to WAL
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return conn

    def _checkpointer(self) -> None:
        """Copy the WAL into the database whenever the writer says it has grown: PASSIVE, so
        neither the writer nor readers wait, and its disk writes overlap the next batches."""
        conn = self._connect()
        try:
            while not self._closed:
                if not self._checkpoint_due.wait(1.0):
                    continue
                self._checkpoint_due.clear()
                with suppress(sqlite3.Error):  # retried on the next signal
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
        finally:
            conn.close()

    def _after_commit(self, cur: sqlite3.Cursor) -> None:
        try:
            size = self._wal.stat().st_size
        except OSError:
            return
        if size >= WAL_FORCE_BYTES:
            cur.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.forced_checkpoints += 1
        elif size >= WAL_CHECKPOINT_BYTES:
            self._checkpoint_due.set()

    def _migrate(self) -> None:
        db = self._db
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {found}; this collector knows {SCHEMA_VERSION}"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            with self._tx() as cur:
                for stmt in _statements(MIGRATIONS[version - 1]):
                    cur.execute(stmt)
                cur.execute(f"PRAGMA user_version = {version}")

    @property
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """A sqlite-utils view of this thread's read connection (for reports and tests)."""
        return sqlite_utils.Database(self._reader)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the store {self.path} is closed")
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
                self._after_commit(cur)

    # ------------------------------------------------------------------ ingest

    def ingest(self, batch: IngestBatch, timeout: float | None = None) -> IngestResult:
        """Store a batch; returns once it is committed (StoreError if it could not be).

        Batches from concurrent calls are committed together by one writer thread (group
        commit): each batch is still all-or-nothing, and no call returns before its batch is
        in the WAL, but a commit and the index pages it touches are shared by many batches.
        """
        job = _Job(batch)
        with self._queue_lock:
            if self._closed:
                raise StoreError(f"the store {self.path} is closed")
            self._queue.append(job)
            self._queue_ready.notify()
        if not job.done.wait(timeout):
            raise StoreError("the batch was not stored within the deadline")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _writer(self) -> None:
        while True:
            with self._queue_lock:
                while not self._queue and not self._stopping:
                    self._queue_ready.wait()
                if not self._queue:
                    return  # stopping, and everything queued has been written
                jobs: list[_Job] = []
                n = 0
                while self._queue and n < GROUP_MAX_EVENTS:
                    job = self._queue.popleft()
                    jobs.append(job)
                    n += len(job.batch.events)
            self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        try:
            results = self.write_group([job.batch for job in jobs])
        except StoreError as exc:
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        for job, result in zip(jobs, results, strict=True):
            job.result = result
            job.done.set()

    def write_group(self, batches: list[IngestBatch]) -> list[IngestResult]:
        """Store batches in one transaction (all or none); StoreError if it fails."""
        results: list[IngestResult] = []
        with _translate("cannot store a batch"), self._tx() as cur:
            for batch in batches:
                before = self._db.total_changes
                if batch.events:
                    cur.executemany(_EVENT_INSERT, batch.events)
                accepted = self._db.total_changes - before
                # Both are idempotent on their own keys, so they run for duplicates too:
                # the ledger only counts, and a fingerprint collision cannot drop data.
                if batch.sessions:
                    cur.executemany(_SESSION_UPSERT, batch.sessions)
                if batch.usage:
                    cur.executemany(_USAGE_INSERT, batch.usage)
                self._seen(cur, batch.agent_id, batch.heartbeat)
                results.append(IngestResult(accepted, len(batch.events) - accepted))
        self.commits += 1
        self.batches_written += len(batches)
        return results

    def _seen(self, cur: sqlite3.Cursor, agent_id: str, hb: HeartbeatRow | None) -> None:
        now = time.time()
        if hb is None:
            cur.execute("UPDATE agents SET last_seen = ? WHERE id = ?", (now, agent_id))
            return
        cur.execute(
            "UPDATE agents SET last_seen = ?, health = ?, counters = ?, spool_rows = ?, "
            "spool_dropped = ? WHERE id = ?",
            (
                now,
                hb.health,
                json.dumps(hb.counters, sort_keys=True),
                hb.spool_rows,
                hb.spool_dropped,
                agent_id,
            ),
        )
        if hb.agent is not None:
            a = hb.agent
            cur.execute(
                "UPDATE agents SET hostname = ?, os = ?, os_version = ?, agent_version = ?, "
                "mode = ? WHERE id = ?",
                (a.hostname, a.os, a.os_version, a.agent_version, a.mode, agent_id),
            )

    # ------------------------------------------------------------------ agents

    def agent(self, agent_id: str) -> AgentRecord | None:
        with _translate("cannot read agents"):
            row = self._reader.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
        return _agent(row) if row is not None else None

    def agents(self) -> list[AgentRecord]:
        with _translate("cannot read agents"):
            rows = self._reader.execute("SELECT * FROM agents ORDER BY enrolled_at, id")
            return [_agent(r) for r in rows]

    def revoke_agent(self, agent_id: str, now: float) -> bool:
        with _translate("cannot revoke an agent"), self._tx() as cur:
            cur.execute(
                "UPDATE agents SET revoked = 1, revoked_at = ? WHERE id = ? AND revoked = 0",
                (now, agent_id),
            )
            return cur.rowcount == 1

    def enroll(
        self,
        token_hash: str,
        now: float,
        agent_id: str,
        details: AgentDetails,
        cert_serial: str,
        cert_not_after: float,
    ) -> None:
        """Spend one use of the token and add the agent, atomically (TokenError says why not).

        The server calls ``check_token`` before it signs; this checks again in the transaction
        that spends the use, so a token spent or revoked in between is refused here."""
        with _translate("cannot enrol"), self._tx() as cur:
            token_id = _usable_token(cur.execute(_TOKEN_SELECT, (token_hash,)).fetchone(), now)
            cur.execute(
                "UPDATE tokens SET uses_left = uses_left - 1, used = used + 1 WHERE id = ?",
                (token_id,),
            )
            cur.execute(
                "INSERT INTO agents (id, hostname, os, os_version, agent_version, mode, "
                "enrolled_at, first_seen, last_seen, cert_serial, cert_not_after, token_id) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    agent_id,
                    details.hostname,
                    details.os,
                    details.os_version,
                    details.agent_version,
                    details.mode,
                    now,
                    now,
                    now,
                    cert_serial,
                    cert_not_after,
                    token_id,
                ),
            )

    def check_token(self, token_hash: str, now: float) -> str:
        """The id of the token if it could enrol an agent now, spending nothing (TokenError
        says why not): one indexed read, so a bad token is refused before the CA signs."""
        with _translate("cannot read tokens"):
            row = self._reader.execute(_TOKEN_SELECT, (token_hash,)).fetchone()
        return _usable_token(tuple(row) if row is not None else None, now)

    def renewed(
        self,
        agent_id: str,
        presented_serial: str,
        cert_serial: str,
        cert_not_after: float,
        now: float,
    ) -> None:
        """Record ``cert_serial`` as the agent's certificate, issued by a renewal asked for
        with ``presented_serial`` (AgentRefusedError, and nothing recorded, if that one may no
        longer renew).

        Renewing with the current certificate makes it the previous one. Renewing with the
        previous one is an agent that never got (or never stored) the last renewal's answer:
        allowed while the current certificate has never been used, which then is dropped, and
        the previous one stays the previous one. Checked in the write transaction, so two
        renewals racing cannot both replace the same certificate."""
        with _translate("cannot record a renewal"), self._tx() as cur:
            row = cur.execute(
                "SELECT cert_serial, prev_cert_serial, cert_first_used_at, revoked "
                "FROM agents WHERE id = ?",
                (agent_id,),
            ).fetchone()
            if row is None:
                raise AgentRefusedError(f"agent {agent_id} is not enrolled here")
            current, previous, first_used, revoked = row
            if revoked:
                raise AgentRefusedError(f"agent {agent_id} is revoked")
            if presented_serial == current:
                previous = current
            elif presented_serial != previous or first_used is not None:
                raise CertificateReplacedError(
                    f"the certificate {presented_serial} of agent {agent_id} was replaced by "
                    "renewal; renew with the current one"
                )
            cur.execute(
                "UPDATE agents SET cert_serial = ?, cert_not_after = ?, prev_cert_serial = ?, "
                "cert_renewed_at = ?, cert_first_used_at = NULL, last_seen = ? WHERE id = ?",
                (cert_serial, cert_not_after, previous, now, now, agent_id),
            )

    def cert_in_use(self, agent_id: str, cert_serial: str, now: float) -> bool:
        """Note the first call made with a renewed certificate (from then on the one it
        replaced has a grace period left); True if this call was the first."""
        with _translate("cannot record a certificate's first use"), self._tx() as cur:
            cur.execute(
                "UPDATE agents SET cert_first_used_at = ? WHERE id = ? AND cert_serial = ? "
                "AND prev_cert_serial IS NOT NULL AND cert_first_used_at IS NULL",
                (now, agent_id, cert_serial),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------ tokens

    def add_token(self, token_id: str, token_hash: str, now: float, ttl: float, uses: int) -> None:
        with _translate("cannot add a token"), self._tx() as cur:
            cur.execute(
                "INSERT INTO tokens (id, hash, created_at, expires_at, uses_left) "
                "VALUES (?,?,?,?,?)",
                (token_id, token_hash, now, now + ttl, uses),
            )

    def tokens(self) -> list[TokenRecord]:
        with _translate("cannot read tokens"):
            rows = self._reader.execute(
                "SELECT id, created_at, expires_at, uses_left, used, revoked FROM tokens "
                "ORDER BY created_at, id"
            )
            return [
                TokenRecord(r["id"], r["created_at"], r["expires_at"], r["uses_left"],
                            r["used"], bool(r["revoked"]))
                for r in rows
            ]  # fmt: skip

    def revoke_token(self, token_id: str) -> bool:
        with _translate("cannot revoke a token"), self._tx() as cur:
            cur.execute("UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,))
            return cur.rowcount == 1

    # ------------------------------------------------------------------ reports

    def usage_by_model(self, since: float, until: float) -> list[ModelUsage]:
        """Calls started in [since, until) per provider and model, costliest first."""
        with _translate("cannot read usage"):
            rows = self._reader.execute(
                """
                SELECT provider, model, COUNT(*),
                       TOTAL(input_tokens), TOTAL(output_tokens), TOTAL(cache_read_tokens),
                       TOTAL(reasoning_tokens), TOTAL(estimated), TOTAL(cost_usd),
                       TOTAL(cost_usd IS NULL)
                FROM usage WHERE started >= ? AND started < ?
                GROUP BY provider, model
                ORDER BY TOTAL(cost_usd) DESC, COUNT(*) DESC, provider, model
                """,
                (since, until),
            ).fetchall()
        return [
            ModelUsage(
                r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), r[8],
                int(r[9]),
            )
            for r in rows
        ]  # fmt: skip

    # ------------------------------------------------------------------ retention

    def prune(self, older_than: float) -> PruneResult:
        """Delete sessions last seen, usage timed and event keys received before ``older_than``."""
        with _translate("cannot prune"), self._tx() as cur:
            sessions = cur.execute("DELETE FROM sessions WHERE last_seen < ?", (older_than,))
            n_sessions = sessions.rowcount
            n_usage = cur.execute("DELETE FROM usage WHERE started < ?", (older_than,)).rowcount
            n_events = cur.execute(
                "DELETE FROM events WHERE received_at < ?", (older_than,)
            ).rowcount
        return PruneResult(n_events, n_sessions, n_usage)

    def close(self) -> None:
        """Write what is queued, then close (later calls raise StoreError)."""
        with self._queue_lock:
            self._stopping = True
            self._queue_ready.notify()
        self._writer_thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._checkpoint_due.set()
            self._checkpointer_thread.join()
            for conn in self._readers:
                conn.close()
            self._db.execute("PRAGMA optimize")
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _agent(r: sqlite3.Row) -> AgentRecord:
    return AgentRecord(
        id=r["id"],
        hostname=r["hostname"],
        os=r["os"],
        os_version=r["os_version"],
        agent_version=r["agent_version"],
        mode=r["mode"],
        enrolled_at=r["enrolled_at"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        cert_serial=r["cert_serial"],
        cert_not_after=r["cert_not_after"],
        token_id=r["token_id"],
        health=r["health"],
        counters=json.loads(r["counters"]),
        spool_rows=r["spool_rows"],
        spool_dropped=r["spool_dropped"],
        revoked=bool(r["revoked"]),
        prev_cert_serial=r["prev_cert_serial"],
        cert_renewed_at=r["cert_renewed_at"],
        cert_first_used_at=r["cert_first_used_at"],
    )


_TOKEN_SELECT = "SELECT id, expires_at, uses_left, revoked FROM tokens WHERE hash = ?"


def _usable_token(row: tuple[str, float, int, int] | None, now: float) -> str:
    """The token's id, or the TokenError that says why it cannot enrol an agent now."""
    if row is None:
        raise TokenUnknownError("the enrolment token is not known to this collector")
    token_id, expires_at, uses_left, revoked = row
    if revoked:
        raise TokenRevokedError(f"the enrolment token {token_id} has been revoked")
    if expires_at <= now:
        raise TokenExpiredError(f"the enrolment token {token_id} expired at {_iso(expires_at)}")
    if uses_left <= 0:
        raise TokenUsedUpError(f"the enrolment token {token_id} has no uses left")
    return token_id


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


def open_store(data_dir: Path) -> SqliteStore:
    return SqliteStore(data_dir / DB_NAME)
