"""Conversion between typed records, protobuf messages and store rows: the only place that knows
both sides of a wire field.

``Session ↔ SessionEvent`` for the agent and tests; ``Event → row`` for ingest, validating what
the collector relies on and raising ``BadRequestError`` that names the event and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent.records import Session, UsageRecord
from collector.api import lantern_pb2 as pb
from collector.exceptions import BadRequestError

MAX_ID_CHARS = 200
DATA_CLASSES = frozenset({"", "public", "internal", "confidential", "restricted"})

# Store row layouts (column order of the INSERTs in collector.store).
SessionRow = tuple[
    str, str, int, str, str, str, str, str,
    str | None, str | None, str | None,
    float, float, int, str, str, int | None, int | None, int, float,
]  # fmt: skip
UsageRow = tuple[Any, ...]  # the usage table's columns, in order (see _usage_row)
EventRow = tuple[int, float]  # fingerprint of (agent id, event id), received_at


@dataclass(frozen=True, slots=True)
class AgentDetails:
    """What an agent says about itself (AgentInfo)."""

    hostname: str
    os: str
    os_version: str
    agent_version: str
    mode: str


@dataclass(frozen=True, slots=True)
class HeartbeatRow:
    agent: AgentDetails | None
    sent_at: float
    counters: dict[str, int]
    health: str
    spool_rows: int
    spool_dropped: int


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """One Submit, validated and flattened into store rows."""

    agent_id: str
    batch_id: str
    events: list[EventRow]
    sessions: list[SessionRow]
    usage: list[UsageRow]
    heartbeat: HeartbeatRow | None


# ---------------------------------------------------------------- Session <-> SessionEvent


def session_event_id(s: Session) -> str:
    return f"{s.id}:{s.version}"


def session_to_pb(s: Session) -> pb.SessionEvent:
    msg = pb.SessionEvent(
        id=s.id,
        version=s.version,
        user=s.user,
        device=s.device,
        tool=s.tool,
        service_id=s.service_id,
        category=s.category,
        first_seen=s.first_seen,
        last_seen=s.last_seen,
        connections=s.connections,
        hostnames=list(s.hostnames),
        seen_as=list(s.seen_as),
        closed=s.closed,
    )
    # proto3 optional: leave unset (not "" or 0) what the record does not know
    if s.process_name is not None:
        msg.process_name = s.process_name
    if s.process_exe is not None:
        msg.process_exe = s.process_exe
    if s.parent_name is not None:
        msg.parent_name = s.parent_name
    if s.bytes_up is not None:
        msg.bytes_up = s.bytes_up
    if s.bytes_down is not None:
        msg.bytes_down = s.bytes_down
    return msg


def session_from_pb(m: pb.SessionEvent) -> Session:
    return Session(
        id=m.id,
        version=m.version,
        user=m.user,
        device=m.device,
        tool=m.tool,
        service_id=m.service_id,
        category=m.category,
        process_name=m.process_name if m.HasField("process_name") else None,
        process_exe=m.process_exe if m.HasField("process_exe") else None,
        parent_name=m.parent_name if m.HasField("parent_name") else None,
        first_seen=m.first_seen,
        last_seen=m.last_seen,
        connections=m.connections,
        hostnames=tuple(m.hostnames),
        seen_as=tuple(m.seen_as),
        bytes_up=m.bytes_up if m.HasField("bytes_up") else None,
        bytes_down=m.bytes_down if m.HasField("bytes_down") else None,
        closed=m.closed,
    )


def session_to_event(s: Session) -> pb.Event:
    return pb.Event(event_id=session_event_id(s), session=session_to_pb(s))


def usage_to_pb(u: UsageRecord) -> pb.UsageEvent:
    msg = pb.UsageEvent(
        id=u.id,
        user=u.user,
        device=u.device,
        host=u.host,
        started=u.started,
        ended=u.ended,
        provider=u.provider,
        operation=u.operation,
        endpoint=u.endpoint,
        streaming=u.streaming,
        estimated=u.estimated,
        tags=dict(u.tags),
        data_class=u.data_class,
        labels=dict(u.labels),
        labels_truncated=u.labels_truncated,
        uploads=[
            pb.Upload(file_kind=k, extension_class=e, count=c, bytes=b) for k, e, c, b in u.uploads
        ],
        bytes_up=u.bytes_up,
        bytes_down=u.bytes_down,
    )
    for name in _USAGE_OPTIONAL:
        value = getattr(u, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


_USAGE_OPTIONAL = (
    "process_name",
    "process_exe",
    "service_id",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "status_code",
    "deployment",
    "key_fingerprint",
    "key_hint",
    "error",
)


def usage_from_pb(m: pb.UsageEvent) -> UsageRecord:
    opt = {name: getattr(m, name) if m.HasField(name) else None for name in _USAGE_OPTIONAL}
    return UsageRecord(
        id=m.id,
        user=m.user,
        device=m.device,
        host=m.host,
        started=m.started,
        ended=m.ended,
        provider=m.provider,
        operation=m.operation,
        endpoint=m.endpoint,
        streaming=m.streaming,
        estimated=m.estimated,
        tags=tuple(sorted(m.tags.items())),
        data_class=m.data_class,
        labels=tuple(sorted(m.labels.items())),
        labels_truncated=m.labels_truncated,
        uploads=tuple((u.file_kind, u.extension_class, u.count, u.bytes) for u in m.uploads),
        bytes_up=m.bytes_up,
        bytes_down=m.bytes_down,
        **opt,
    )


def usage_to_event(u: UsageRecord) -> pb.Event:
    return pb.Event(event_id=u.id, usage=usage_to_pb(u))


def agent_info_to_pb(a: AgentDetails) -> pb.AgentInfo:
    return pb.AgentInfo(
        hostname=a.hostname,
        os=a.os,
        os_version=a.os_version,
        agent_version=a.agent_version,
        mode=a.mode,
    )


def agent_info_from_pb(m: pb.AgentInfo) -> AgentDetails:
    return AgentDetails(m.hostname, m.os, m.os_version, m.agent_version, m.mode)


# ---------------------------------------------------------------- Submit -> store rows


_JSON_CACHE: dict[tuple[str, ...], str] = {}
_JSON_CACHE_MAX = 50_000


def _json_list(values: tuple[str, ...]) -> str:
    """JSON of a short list of names; cached, as the same few lists repeat in every batch
    (json.dumps was most of the conversion time)."""
    text = _JSON_CACHE.get(values)
    if text is None:
        if len(_JSON_CACHE) >= _JSON_CACHE_MAX:
            _JSON_CACHE.clear()
        text = _JSON_CACHE[values] = json.dumps(list(values))
    return text


def _session_row(agent_id: str, eid: str, m: pb.SessionEvent, now: float, i: int) -> SessionRow:
    # Each field read builds a new Python object, so each is read once (this runs per event).
    sid, version, has = m.id, m.version, m.HasField
    if not sid or len(sid) > MAX_ID_CHARS:
        raise BadRequestError(f"events[{i}].session.id must be 1 to {MAX_ID_CHARS} characters")
    if version < 1:
        raise BadRequestError(f"events[{i}].session.version must be at least 1, not {version}")
    if eid != f"{sid}:{version}":
        raise BadRequestError(
            f"events[{i}].event_id {eid!r} must be '<session id>:<version>' ({sid}:{version})"
        )
    return (
        agent_id,
        sid,
        version,
        m.user,
        m.device,
        m.tool,
        m.service_id,
        m.category,
        m.process_name if has("process_name") else None,
        m.process_exe if has("process_exe") else None,
        m.parent_name if has("parent_name") else None,
        m.first_seen,
        m.last_seen,
        m.connections,
        _json_list(tuple(m.hostnames)),
        _json_list(tuple(m.seen_as)),
        m.bytes_up if has("bytes_up") else None,
        m.bytes_down if has("bytes_down") else None,
        int(m.closed),
        now,
    )


def _usage_row(agent_id: str, eid: str, m: pb.UsageEvent, now: float, i: int) -> UsageRow:
    if not m.id or len(m.id) > MAX_ID_CHARS:
        raise BadRequestError(f"events[{i}].usage.id must be 1 to {MAX_ID_CHARS} characters")
    if eid != m.id:
        raise BadRequestError(f"events[{i}].event_id {eid!r} must be the usage id {m.id!r}")
    if not m.provider:
        raise BadRequestError(f"events[{i}].usage.provider is empty")
    if m.data_class not in DATA_CLASSES:
        raise BadRequestError(
            f"events[{i}].usage.data_class {m.data_class!r} is not one of "
            "public, internal, confidential, restricted"
        )

    def opt(name: str) -> Any:
        return getattr(m, name) if m.HasField(name) else None

    return (
        agent_id,
        m.id,
        m.user,
        m.device,
        opt("process_name"),
        opt("process_exe"),
        opt("service_id"),
        m.host,
        m.started,
        m.ended,
        m.provider,
        opt("model"),
        m.operation,
        m.endpoint,
        int(m.streaming),
        opt("input_tokens"),
        opt("output_tokens"),
        opt("cache_read_tokens"),
        opt("cache_write_tokens"),
        opt("reasoning_tokens"),
        int(m.estimated),
        opt("cost_usd"),
        opt("status_code"),
        opt("deployment"),
        json.dumps(dict(sorted(m.tags.items()))),
        opt("key_fingerprint"),
        opt("key_hint"),
        m.data_class,
        json.dumps(dict(sorted(m.labels.items()))),
        int(m.labels_truncated),
        json.dumps([[u.file_kind, u.extension_class, u.count, u.bytes] for u in m.uploads]),
        m.bytes_up,
        m.bytes_down,
        opt("error"),
        now,
    )


def heartbeat_from_pb(m: pb.Heartbeat) -> HeartbeatRow:
    return HeartbeatRow(
        agent=agent_info_from_pb(m.agent) if m.HasField("agent") else None,
        sent_at=m.sent_at,
        counters=dict(m.counters),
        health=m.health,
        spool_rows=m.spool_rows,
        spool_dropped=m.spool_dropped,
    )


def submit_to_batch(
    agent_id: str, req: pb.SubmitRequest, now: float, max_events: int
) -> IngestBatch:
    """Validate a SubmitRequest and flatten it (BadRequestError names what is wrong)."""
    if not req.batch_id or len(req.batch_id) > MAX_ID_CHARS:
        raise BadRequestError(f"batch_id must be 1 to {MAX_ID_CHARS} characters")
    n = len(req.events)
    if n > max_events:
        raise BadRequestError(f"the batch has {n} events; at most {max_events} are accepted")
    events: list[EventRow] = []
    sessions: list[SessionRow] = []
    usage: list[UsageRow] = []
    agent_hash = hashlib.blake2b(agent_id.encode() + b"\0", digest_size=8)
    for i, ev in enumerate(req.events):
        eid = ev.event_id
        if not eid or len(eid) > MAX_ID_CHARS:
            raise BadRequestError(f"events[{i}].event_id must be 1 to {MAX_ID_CHARS} characters")
        body = ev.WhichOneof("body")
        if body == "session":
            sessions.append(_session_row(agent_id, eid, ev.session, now, i))
        elif body == "usage":
            usage.append(_usage_row(agent_id, eid, ev.usage, now, i))
        else:
            raise BadRequestError(f"events[{i}] has no body (session or usage)")
        h = agent_hash.copy()
        h.update(eid.encode())
        events.append((int.from_bytes(h.digest(), "big", signed=True), now))
    heartbeat = heartbeat_from_pb(req.heartbeat) if req.HasField("heartbeat") else None
    if not events and heartbeat is None:
        raise BadRequestError("the batch has neither events nor a heartbeat")
    return IngestBatch(agent_id, req.batch_id, events, sessions, usage, heartbeat)
