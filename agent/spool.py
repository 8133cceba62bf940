"""The agent's durable spool: sessions and usage records kept in SQLite until the collector acks.

One row per session id holds its newest version and the highest version the collector has
acknowledged (``sent_version``). A row is unsent while ``sent_version < version``. Batches lease
exact ``(id, version)`` pairs in memory only, so a restart forgets every lease and everything
unacknowledged is sent again (at-least-once; the collector dedups on ``event_id``).

Usage records (metering) live in their own table: each is written once, never updated, and is
deleted when acknowledged. Batches carry both kinds, oldest first within each kind.

Durability: WAL with ``synchronous=NORMAL``. Every commit is in the WAL before ``put_session``
returns, so a killed agent loses nothing it committed and the file is never corrupt; only a power
cut can undo the last commits before a checkpoint. That costs no event the collector has
acknowledged as lost for good: an undone put is re-emitted by the sessionizer's next update and an
undone ack means one resend, which the collector dedups. FULL would fsync on every session update
of a laptop for no gain in what invariant 4 promises.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from agent.counters import Counters
from agent.exceptions import SpoolError, UnknownBatchError
from agent.records import Session, UsageRecord

# Each entry moves the schema one version on; ``PRAGMA user_version`` counts those applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        user TEXT NOT NULL,
        last_seen REAL NOT NULL,
        closed INTEGER NOT NULL,
        sent_version INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX sessions_seq ON sessions(seq);
    CREATE INDEX sessions_user ON sessions(user, last_seen);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    """
    CREATE TABLE usage (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        ended REAL NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX usage_seq ON usage(seq);
    CREATE INDEX usage_user ON usage(user, ended);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
DROPPED = "spool.dropped"  # rows removed by the size bound
DROPPED_UNSENT = "spool.dropped_unsent"  # of those, rows whose newest version was never acked
USAGE_DROPPED = "spool.usage_dropped"  # usage records removed by the size bound (never sent)


@dataclass(frozen=True, slots=True)
class SpoolEvent:
    """One version of one record to upload; ``event_id`` is what the collector dedups on."""

    event_id: str
    kind: Literal["session", "usage"]
    session: Session | None  # set for kind "session"
    usage: UsageRecord | None = None  # set for kind "usage"


@dataclass(frozen=True, slots=True)
class Batch:
    """Events leased together: ``ack`` or ``release`` them by ``id``."""

    id: str
    events: tuple[SpoolEvent, ...]


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A spooled session with what the collector has of it (for ``lantern me``)."""

    session: Session
    sent: bool  # this exact version is acknowledged
    sent_version: int | None  # the highest acknowledged version, None when none


@dataclass(frozen=True, slots=True)
class SpoolStats:
    rows: int
    unsent: int
    dropped: int
    dropped_unsent: int
    file_bytes: int  # database plus its WAL
    usage_rows: int = 0  # usage records awaiting acknowledgement
    usage_dropped: int = 0


def event_id(s: Session) -> str:
    return f"{s.id}:{s.version}"


def session_to_json(s: Session) -> str:
    return json.dumps(asdict(s), separators=(",", ":"), sort_keys=True)


_SESSION_FIELDS = frozenset(f.name for f in fields(Session))


def usage_to_json(u: UsageRecord) -> str:
    return json.dumps(asdict(u), separators=(",", ":"), sort_keys=True)


_USAGE_FIELDS = frozenset(f.name for f in fields(UsageRecord))
_NESTED = ("tags", "labels", "uploads")


def usage_from_json(text: str) -> UsageRecord:
    data = json.loads(text)
    if not isinstance(data, dict) or set(data) != _USAGE_FIELDS:
        raise SpoolError("spooled usage does not match this version's UsageRecord")
    for key in _NESTED:
        data[key] = tuple(tuple(item) for item in data[key])
    return UsageRecord(**data)


def session_from_json(text: str) -> Session:
    data = json.loads(text)
    if not isinstance(data, dict) or set(data) != _SESSION_FIELDS:
        raise SpoolError("spooled session does not match this version's Session record")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Session(**values)


class Spool:
    """Durable, bounded store of session versions awaiting upload. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 200_000,
        counters: Counters | None = None,
        readonly: bool = False,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = path
        self.max_rows = max_rows
        self.counters = counters if counters is not None else Counters()
        self.readonly = readonly
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[tuple[str, int], ...]] = {}
        self._leased_ids: set[str] = set()
        self._usage_leases: dict[str, tuple[str, ...]] = {}
        self._leased_usage: set[str] = set()
        with _translate(f"cannot open spool {path}"):
            self._db = self._open()
            self._rows: int = self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            self._usage_rows: int = self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]

    # ------------------------------------------------------------------ open and migrate

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.is_file():
                raise SpoolError(f"no spool at {self.path}")
            if not os.access(self.path, os.R_OK):
                raise SpoolError(f"cannot read spool {self.path}: permission denied")
            db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found != SCHEMA_VERSION:
                db.close()
                raise SpoolError(
                    f"spool {self.path} has schema version {found}, this Lantern reads "
                    f"{SCHEMA_VERSION}; run the agent once to migrate it"
                )
            return db
        self._prepare_file()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare_file(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            # only a directory we create is tightened: the configured one may be shared
            parent.mkdir(mode=0o700, parents=True)
            parent.chmod(0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.fchmod(fd, 0o600)  # SQLite gives its -wal and -shm files the same mode
        finally:
            os.close(fd)

    def _migrate(self, db: sqlite3.Connection) -> None:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {self.path} has schema version {found}, newer than this Lantern "
                f"({SCHEMA_VERSION}); upgrade Lantern or move the file away"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            try:
                db.execute("BEGIN IMMEDIATE")
                for statement in _statements(MIGRATIONS[version - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def put_session(self, s: Session) -> None:
        """Store ``s`` unless the spool holds ``s.id`` at this version or newer; apply the bound."""
        self._writable()
        with self._lock, _translate("cannot write to spool"), self._transaction():
            row = self._db.execute("SELECT version FROM sessions WHERE id = ?", (s.id,)).fetchone()
            if row is not None and row[0] >= s.version:
                self.counters.inc("spool.stale_ignored")
                return
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions").fetchone()[0]
            values = (s.version, s.user, s.last_seen, int(s.closed), seq, session_to_json(s), s.id)
            if row is None:
                self._db.execute(
                    "INSERT INTO sessions (version, user, last_seen, closed, seq, body, id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                self._rows += 1
            else:
                self._db.execute(
                    "UPDATE sessions SET version = ?, user = ?, last_seen = ?, closed = ?, "
                    "seq = ?, body = ? WHERE id = ?",
                    values,
                )
            if self._rows > self.max_rows:
                self._drop(self._rows - self.max_rows)

    def put_usage(self, u: UsageRecord) -> None:
        """Store one usage record (a repeated id is ignored); apply the bound."""
        self._writable()
        with self._lock, _translate("cannot write to spool"), self._transaction():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM usage").fetchone()[0]
            added = self._db.execute(
                "INSERT OR IGNORE INTO usage (id, user, ended, seq, body) VALUES (?, ?, ?, ?, ?)",
                (u.id, u.user, u.ended, seq, usage_to_json(u)),
            ).rowcount
            if not added:
                self.counters.inc("spool.usage_duplicate")
                return
            self._usage_rows += 1
            if self._usage_rows > self.max_rows:
                n = self._usage_rows - self.max_rows
                gone = self._db.execute(
                    "DELETE FROM usage WHERE id IN (SELECT id FROM usage ORDER BY seq LIMIT ?)",
                    (n,),
                ).rowcount
                self._usage_rows -= gone
                self._bump(USAGE_DROPPED, gone)
                self.counters.inc(USAGE_DROPPED, gone)

    def _drop(self, n: int) -> None:
        # Sent rows first (only the local view loses them), oldest first; then the oldest unsent.
        victims = self._db.execute(
            "SELECT id, sent_version >= version FROM sessions "
            "ORDER BY sent_version >= version DESC, closed DESC, seq LIMIT ?",
            (n,),
        ).fetchall()
        self._db.executemany("DELETE FROM sessions WHERE id = ?", [(v[0],) for v in victims])
        unsent = sum(1 for v in victims if not v[1])
        self._rows -= len(victims)
        self._bump(DROPPED, len(victims))
        self._bump(DROPPED_UNSENT, unsent)
        self.counters.inc(DROPPED, len(victims))
        if unsent:
            self.counters.inc(DROPPED_UNSENT, unsent)

    def _bump(self, key: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (key, n),
            )

    # ------------------------------------------------------------------ sending

    def next_batch(self, max_events: int = 500) -> Batch | None:
        """Lease up to ``max_events`` unsent versions not already in flight; None when none."""
        self._writable()
        with self._lock, _translate("cannot read spool"):
            picked: list[SpoolEvent] = []
            cursor = self._db.execute(
                "SELECT id, body FROM sessions WHERE sent_version < version ORDER BY seq"
            )
            for sid, body in cursor:
                if sid in self._leased_ids:
                    continue  # one version of a session in flight at a time
                s = session_from_json(body)
                picked.append(SpoolEvent(event_id(s), "session", s))
                if len(picked) >= max_events:
                    break
            cursor.close()
            sessions = [e.session for e in picked if e.session is not None]
            if len(picked) < max_events:
                cursor = self._db.execute("SELECT id, body FROM usage ORDER BY seq")
                for uid, body in cursor:
                    if uid in self._leased_usage:
                        continue
                    u = usage_from_json(body)
                    picked.append(SpoolEvent(u.id, "usage", None, u))
                    if len(picked) >= max_events:
                        break
                cursor.close()
            if not picked:
                return None
            batch = Batch(uuid.uuid4().hex, tuple(picked))
            self._leases[batch.id] = tuple((s.id, s.version) for s in sessions)
            usage_ids = tuple(e.usage.id for e in picked if e.usage is not None)
            self._usage_leases[batch.id] = usage_ids
            self._leased_ids.update(s.id for s in sessions)
            self._leased_usage.update(usage_ids)
            return batch

    def ack(self, batch_id: str) -> None:
        """The collector stored the batch: mark exactly its versions sent, delete finished rows."""
        self._writable()
        with self._lock, _translate("cannot write to spool"):
            lease, usage_ids = self._settle(batch_id)
            with self._transaction():
                for uid in usage_ids:
                    self._usage_rows -= self._db.execute(
                        "DELETE FROM usage WHERE id = ?", (uid,)
                    ).rowcount
                for sid, version in lease:
                    self._db.execute(
                        "UPDATE sessions SET sent_version = MAX(sent_version, ?) WHERE id = ?",
                        (version, sid),
                    )
                    gone = self._db.execute(
                        "DELETE FROM sessions "
                        "WHERE id = ? AND closed = 1 AND sent_version >= version",
                        (sid,),
                    ).rowcount
                    self._rows -= gone

    def release(self, batch_id: str) -> None:
        """The upload failed: its versions become eligible for the next batch again."""
        with self._lock:
            self._settle(batch_id)

    def _settle(self, batch_id: str) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
        lease = self._leases.pop(batch_id, None)
        if lease is None:
            raise UnknownBatchError(f"no batch {batch_id} in flight")
        usage_ids = self._usage_leases.pop(batch_id, ())
        self._leased_ids.difference_update(sid for sid, _ in lease)
        self._leased_usage.difference_update(usage_ids)
        return lease, usage_ids

    # ------------------------------------------------------------------ reading

    def entries(self, user: str | None = None, since: float | None = None) -> list[SpoolEntry]:
        """Spooled sessions, oldest activity first; ``since`` compares with ``last_seen``."""
        where: list[str] = []
        args: list[object] = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        sql = "SELECT body, sent_version FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_seen, id"
        with self._lock, _translate("cannot read spool"):
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for body, sent_version in rows:
            s = session_from_json(body)
            out.append(SpoolEntry(s, sent_version >= s.version, sent_version or None))
        return out

    def sessions(self, user: str | None = None, since: float | None = None) -> list[Session]:
        return [e.session for e in self.entries(user, since)]

    def usage_records(self, user: str | None = None) -> list[UsageRecord]:
        """Spooled (not yet acknowledged) usage records, oldest first."""
        sql, args = "SELECT body FROM usage", []
        if user is not None:
            sql, args = sql + " WHERE user = ?", [user]
        with self._lock, _translate("cannot read spool"):
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [usage_from_json(body) for (body,) in rows]

    def stats(self) -> SpoolStats:
        with self._lock, _translate("cannot read spool"):
            rows, unsent = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(sent_version < version), 0) FROM sessions"
            ).fetchone()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            usage_rows = self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        size = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return SpoolStats(
            rows=rows,
            unsent=unsent,
            dropped=meta.get(DROPPED, 0),
            dropped_unsent=meta.get(DROPPED_UNSENT, 0),
            file_bytes=size,
            usage_rows=usage_rows,
            usage_dropped=meta.get(USAGE_DROPPED, 0),
        )

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(lease) for lease in self._leases.values()) + sum(
                len(ids) for ids in self._usage_leases.values()
            )

    # ------------------------------------------------------------------ helpers

    def _writable(self) -> None:
        if self.readonly:
            raise SpoolError(f"spool {self.path} is open read-only")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise SpoolError(f"{what}: {exc}") from exc
