"""The agent's line to the collector: the Transport interface, gRPC over mutual TLS, a fake.

The uploader, the enrolment client and the bundle client talk to a ``Transport`` in typed agent
records; only ``GrpcTransport`` knows the wire (``lantern.v1``, the collector's generated
messages, imported when a real transport is built so unit tests need no generated code).

Errors, all ``CollectorError`` (an ``AgentError``)::

    CollectorError(code, message, retry_after)   the collector (or the path to it) said no
        .transient   UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED: retry later
        .revoked     UNAUTHENTICATED, PERMISSION_DENIED: this agent or token is refused
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections import deque
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from agent.exceptions import AgentError, CollectorError
from agent.spool import SpoolEvent

RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata the collector sets when it sheds load
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the collector's default limits.max_message_bytes


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class AgentInfo:
    hostname: str
    os: str
    os_version: str
    agent_version: str
    mode: str  # "endpoint" | "gateway"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The agent's health at send time: aggregate numbers only."""

    agent: AgentInfo
    sent_at: float
    counters: dict[str, int]
    health: str
    spool_rows: int
    spool_dropped: int


@dataclass(frozen=True, slots=True)
class Submission:
    batch_id: str
    events: tuple[SpoolEvent, ...]
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class Ack:
    batch_id: str
    accepted: int  # stored now
    duplicates: int  # already stored: a resend after a lost acknowledgement


@dataclass(frozen=True, slots=True)
class Issued:
    """A client certificate the collector issued (enrolment or renewal), PEM encoded."""

    certificate_pem: bytes
    not_after: float
    agent_id: str = ""
    ca_pem: bytes | None = None  # enrolment only


@dataclass(frozen=True, slots=True)
class SignedBundle:
    """A catalog or policy bundle as served; attribute names match ``lantern.v1.SignedBundle``."""

    kind: str
    version: str
    payload: bytes  # empty when the agent already has this version
    signature: bytes
    key_id: str


class Transport(Protocol):
    """Calls over mutual TLS, as the enrolled agent."""

    def submit(self, submission: Submission) -> Ack: ...

    def renew(self, csr_der: bytes) -> Issued: ...

    def get_bundle(self, kind: str, have_version: str) -> SignedBundle: ...

    def close(self) -> None: ...


class EnrollTransport(Protocol):
    """The one call made before the agent has a certificate (server-authenticated TLS only)."""

    def enroll(self, token: str, csr_der: bytes, agent: AgentInfo) -> Issued: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- gRPC


def wire_modules() -> tuple[ModuleType, ModuleType]:
    """The collector's generated messages and stubs; ConfigError-like AgentError when absent."""
    try:
        pb = importlib.import_module("collector.api.lantern_pb2")
        stubs = importlib.import_module("collector.api.lantern_pb2_grpc")
    except ImportError as exc:
        raise AgentError(
            f"the collector API (collector.api, grpcio, protobuf) is not installed: {exc}"
        ) from exc
    return pb, stubs


def to_wire(submission: Submission) -> Any:
    """``Submission`` → ``lantern.v1.SubmitRequest``, with the collector's conversion module."""
    from collector import convert  # noqa: PLC0415 - the wire is imported only to use it
    from collector.api import lantern_pb2 as pb  # noqa: PLC0415

    events = []
    for e in submission.events:
        if e.session is not None:
            events.append(pb.Event(event_id=e.event_id, session=convert.session_to_pb(e.session)))
            continue
        if e.usage is None:
            raise AgentError(f"cannot send {e.kind} event {e.event_id}: it carries no record")
        events.append(pb.Event(event_id=e.event_id, usage=convert.usage_to_pb(e.usage)))
    hb = submission.heartbeat
    heartbeat = pb.Heartbeat(
        agent=_agent_info(hb.agent),
        sent_at=hb.sent_at,
        counters=hb.counters,
        health=hb.health,
        spool_rows=hb.spool_rows,
        spool_dropped=hb.spool_dropped,
    )
    return pb.SubmitRequest(batch_id=submission.batch_id, events=events, heartbeat=heartbeat)


def _agent_info(info: AgentInfo) -> Any:
    from collector import convert  # noqa: PLC0415

    return convert.agent_info_to_pb(
        convert.AgentDetails(info.hostname, info.os, info.os_version, info.agent_version, info.mode)
    )


def der_to_pem(der: bytes) -> bytes:
    from cryptography import x509  # noqa: PLC0415 - cheap, but only the wire needs it here
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


class GrpcTransport:
    """gRPC to one collector. Trusts only ``ca_pem`` (never system CAs); every call has a deadline.

    Without ``cert_pem``/``key_pem`` the channel is server-authenticated only: for ``enroll``.
    """

    def __init__(
        self,
        address: str,
        *,
        ca_pem: bytes,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        timeout: float = 10.0,
        server_name: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        import grpc  # noqa: PLC0415 - the agent imports grpc only when it talks to a collector

        if not ca_pem:
            raise AgentError("the collector's CA must be pinned (collector.ca_file/ca_sha256)")
        self._grpc = grpc
        self._pb, stubs = wire_modules()
        self.timeout = timeout
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),  # the uploader owns retries (and their backoff)
            ("grpc.keepalive_time_ms", 60_000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        self._target = (address, creds, options)
        self._stubs = stubs
        self._connect()

    def _connect(self) -> None:
        address, creds, options = self._target
        self._channel = self._grpc.secure_channel(address, creds, options=options)
        self._ingest = self._stubs.IngestStub(self._channel)
        self._enrollment = self._stubs.EnrollmentStub(self._channel)
        self._bundles = self._stubs.BundlesStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            error = _translate(exc)
            if error.code == "UNAVAILABLE":
                # A channel that could not connect waits out gRPC's own reconnect backoff
                # (growing with the outage, up to 120 s) and fails every call meanwhile without
                # trying. A fresh channel makes the uploader's next retry a real attempt, so
                # the uploader's backoff is the only one.
                self._channel.close()
                self._connect()
            raise error from exc

    def submit(self, submission: Submission) -> Ack:
        r = self._call(self._ingest.Submit, to_wire(submission))
        return Ack(r.batch_id, r.accepted, r.duplicates)

    def renew(self, csr_der: bytes) -> Issued:
        r = self._call(self._ingest.Renew, self._pb.RenewRequest(csr_der=csr_der))
        return Issued(der_to_pem(r.certificate_der), float(r.not_after_unix))

    def enroll(self, token: str, csr_der: bytes, agent: AgentInfo) -> Issued:
        request = self._pb.EnrollRequest(token=token, csr_der=csr_der, agent=_agent_info(agent))
        r = self._call(self._enrollment.Enroll, request)
        ca = der_to_pem(r.ca_certificate_der) if r.ca_certificate_der else None
        return Issued(der_to_pem(r.certificate_der), float(r.not_after_unix), r.agent_id, ca)

    def get_bundle(self, kind: str, have_version: str) -> SignedBundle:
        r = self._call(
            self._bundles.Get, self._pb.BundleRequest(kind=kind, have_version=have_version)
        )
        return SignedBundle(r.kind, r.version, r.payload, r.signature, r.key_id)

    def close(self) -> None:
        self._channel.close()


def _translate(exc: Any) -> CollectorError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    retry_after = None
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else ()
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            with contextlib.suppress(ValueError):
                retry_after = max(0.0, int(value) / 1000)
    return CollectorError(name, details or "", retry_after=retry_after)


# ---------------------------------------------------------------------------- in-process fake


@dataclass
class Failure:
    """One scripted failure of the fake. ``stored``: the call takes effect, then the ack is lost."""

    code: str
    message: str = "injected"
    retry_after: float | None = None
    stored: bool = False
    method: str = "submit"


@dataclass
class InProcessTransport:
    """A collector in memory for unit tests: dedups on event id like the real one.

    Script failures with ``fail(...)`` (consumed in order, per method), refuse everything with
    ``revoke(...)``; ``issuer`` signs CSRs for ``enroll``/``renew`` (see tests).
    """

    stored: dict[str, SpoolEvent] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    bundles: dict[str, SignedBundle] = field(default_factory=dict)
    issuer: Any = None  # callable(csr_der) -> Issued
    tokens: dict[str, str] = field(default_factory=dict)  # token -> "ok" or a refusal message
    calls: dict[str, int] = field(default_factory=dict)
    refused: str | None = None
    closed: bool = False
    _failures: deque[Failure] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self,
        code: str,
        *,
        times: int = 1,
        retry_after: float | None = None,
        stored: bool = False,
        method: str = "submit",
    ) -> None:
        for _ in range(times):
            self._failures.append(Failure(code, "injected", retry_after, stored, method))

    def revoke(self, message: str = "certificate revoked") -> None:
        self.refused = message

    def _enter(self, method: str) -> Failure | None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
        if self.refused is not None:
            raise CollectorError("PERMISSION_DENIED", self.refused)
        for f in self._failures:
            if f.method == method:
                self._failures.remove(f)
                if not f.stored:
                    raise CollectorError(f.code, f.message, retry_after=f.retry_after)
                return f
        return None

    def submit(self, submission: Submission) -> Ack:
        lost = self._enter("submit")
        accepted = duplicates = 0
        with self._lock:
            self.submissions.append(submission)
            for e in submission.events:
                if e.event_id in self.stored:
                    duplicates += 1
                else:
                    self.stored[e.event_id] = e
                    accepted += 1
        if lost is not None:
            raise CollectorError(lost.code, "acknowledgement lost", retry_after=lost.retry_after)
        return Ack(submission.batch_id, accepted, duplicates)

    def renew(self, csr_der: bytes) -> Issued:
        self._enter("renew")
        return self._issue(csr_der)

    def _issue(self, csr_der: bytes) -> Issued:
        if self.issuer is None:
            raise CollectorError("UNIMPLEMENTED", "no issuer configured")
        issued: Issued = self.issuer(csr_der)
        return issued

    def enroll(self, token: str, csr_der: bytes, agent: AgentInfo) -> Issued:
        self._enter("enroll")
        verdict = self.tokens.get(token, "unknown enrolment token")
        if verdict != "ok":
            raise CollectorError("UNAUTHENTICATED", verdict)
        self.tokens[token] = "enrolment token already used"
        return self._issue(csr_der)

    def get_bundle(self, kind: str, have_version: str) -> SignedBundle:
        self._enter("get_bundle")
        bundle = self.bundles.get(kind)
        if bundle is None:
            raise CollectorError("NOT_FOUND", f"no {kind} bundle")
        if bundle.version == have_version:
            return SignedBundle(bundle.kind, bundle.version, b"", b"", bundle.key_id)
        return bundle

    def close(self) -> None:
        self.closed = True
