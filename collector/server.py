"""The collector's gRPC server: enrolment over TLS, ingest and bundles over mutual TLS.

Two ``grpc.Server`` instances, because gRPC decides about client certificates per port and
serves every registered service on every port of a server:

- the **enrolment** server (``listen.enroll_port``) serves only ``Enrollment``; TLS without a
  client certificate, since an agent has none before it enrols;
- the **ingest** server (``listen.ingest_port``) serves ``Ingest`` and ``Bundles`` with
  ``require_client_auth=True`` and the collector's CA as the only trusted root, so the TLS layer
  rejects any peer without a certificate from this collector.

Both present the server certificate followed by the CA, so that an agent pinned only by the CA's
fingerprint (``collector.ca_sha256``) finds the CA in the handshake.

Every mutual-TLS call then takes the agent id from the peer certificate (``auth_context``), never
from the message, and checks it against the store on each call (gRPC's TLS checks no CRL), so a
revoked agent is refused at once; so is a certificate that renewal replaced, once the agent has
used its new one for ``pki.replaced_cert_grace_seconds`` (``AgentGate``). Per-agent token
buckets (and, on the enrolment port, per client address ones) answer RESOURCE_EXHAUSTED with a
``retry-after-ms`` trailer; requests above ``limits.max_message_bytes`` are refused by gRPC with
RESOURCE_EXHAUSTED before they are parsed. Validated batches are stored by a child process
(``collector.ingest``) so that SQLite and the gRPC work each get a core.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import Message

from collector.api import lantern_pb2 as pb
from collector.bundles import DEFAULT_DIRS, BundleSource
from collector.config import Settings
from collector.convert import agent_info_from_pb, submit_to_batch
from collector.exceptions import (
    AgentRefusedError,
    BadRequestError,
    BundleError,
    CertificateReplacedError,
    PkiError,
    StoreError,
    TokenError,
    TokenUnknownError,
)
from collector.ingest import IngestProcess
from collector.pki import Pki, init_pki, is_initialised, load_pki, new_agent_id
from collector.ratelimit import RateLimiter, peer_address
from collector.store import AgentRecord, SqliteStore, Store, open_store
from collector.tokens import hash_token

log = logging.getLogger("lantern.collector")

RETRY_AFTER = "retry-after-ms"
MODES = ("", "endpoint", "gateway")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[[Any, Any], Any]


def _abort(context: Any, code: Any, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _unary(fn: Handler, request: type[Message], response: type[Message]) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request.FromString,
        response_serializer=response.SerializeToString,
    )


def _refuse_for_rate(context: Any, wait: float, who: str) -> NoReturn:
    ms = max(1, math.ceil(wait * 1000))
    context.set_trailing_metadata(((RETRY_AFTER, str(ms)),))
    _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{who}; retry after {ms} ms")


@contextmanager
def _token_refusals(context: Any, what: str, unavailable: str) -> Iterator[None]:
    """A refused token as its status (unknown: UNAUTHENTICATED; expired, used up, revoked:
    PERMISSION_DENIED), a store failure as UNAVAILABLE."""
    try:
        yield
    except TokenUnknownError as exc:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
    except TokenError as exc:
        _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except StoreError as exc:
        log.error("%s: %s", what, exc)
        _abort(context, grpc.StatusCode.UNAVAILABLE, unavailable)


class EnrollmentService:
    """``lantern.v1.Enrollment``: token + CSR → agent id and client certificate.

    Anyone may call it, so each client address has a token bucket (``limiter``), taken before
    the token is looked up or the CSR signed: guessing tokens costs the caller its bucket. The
    token is then checked (a read that spends nothing) before the CSR is parsed, so only a
    token that can enrol makes the CA sign. Refusals are logged at most once a minute, as a
    count, so a flood cannot flood the log too."""

    LOG_EVERY = 60.0

    def __init__(
        self,
        pki: Pki,
        store: Store,
        cert_days: float,
        limiter: RateLimiter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pki = pki
        self.store = store
        self.cert_days = cert_days
        self.limiter = limiter
        self.clock = clock
        self._refused = 0
        self._logged_at = float("-inf")
        self._log_lock = threading.Lock()

    def _limit(self, context: Any) -> None:
        address = peer_address(context.peer())
        wait = self.limiter.take(address)
        if wait <= 0:
            return
        with self._log_lock:
            self._refused += 1
            now = self.clock()
            if now - self._logged_at >= self.LOG_EVERY:
                log.warning(
                    "refused %d enrolment call(s) over the per-address rate limit "
                    "(rate_limit.enroll_per_second); the latest from %s",
                    self._refused,
                    address,
                )
                self._refused = 0
                self._logged_at = now
        _refuse_for_rate(context, wait, f"too many enrolment attempts from {address}")

    def Enroll(self, req: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:  # noqa: N802
        self._limit(context)
        if not req.token:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "token is empty")
        details = agent_info_from_pb(req.agent)
        if not details.hostname:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "agent.hostname is empty")
        if details.mode not in MODES:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"agent.mode {details.mode!r} is not endpoint or gateway",
            )
        token_hash = hash_token(req.token)
        # A cheap read first, spending nothing, so a bad token costs the CA no work; the
        # transaction after signing checks again and spends the use (a token spent or revoked
        # in between is refused there with the same messages).
        with _token_refusals(
            context, "enrolment token not read", "the collector cannot read its store; retry"
        ):
            self.store.check_token(token_hash, time.time())
        agent_id = new_agent_id()
        try:
            cert = self.pki.issue_agent_certificate(req.csr_der, agent_id, self.cert_days)
        except PkiError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        not_after = cert.not_valid_after_utc.timestamp()
        with _token_refusals(context, "enrolment not stored", "the collector cannot store; retry"):
            self.store.enroll(
                token_hash,
                time.time(),
                agent_id,
                details,
                format(cert.serial_number, "x"),
                not_after,
            )
        log.info("enrolled agent %s (%s)", agent_id, details.hostname)
        return pb.EnrollResponse(
            agent_id=agent_id,
            certificate_der=cert.public_bytes(serialization.Encoding.DER),
            ca_certificate_der=self.pki.ca_cert_der,
            not_after_unix=int(not_after),
            bundle_signing_key=self.pki.signing_public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """An agent the gate let in, and the serial (hex) of the certificate it called with."""

    agent_id: str
    cert_serial: str


def replaced_certificate(agent: AgentRecord, serial: str, now: float, grace: float) -> bool:
    """Whether ``serial`` is a certificate of ``agent`` that renewal has replaced for good.

    Accepted: the current certificate, and the one it replaced until ``grace`` seconds after
    the agent first called with the current one. Until that first call the agent may hold
    only the old one (the renewal's answer was lost, or it crashed before switching), so the
    old one stays accepted. Any other serial was replaced longer ago, or never handed out."""
    if serial == agent.cert_serial:
        return False
    if serial != agent.prev_cert_serial:
        return True
    return agent.cert_first_used_at is not None and now - agent.cert_first_used_at >= grace


class AgentGate:
    """Who is calling, from the TLS peer certificate, checked against the store on every call:
    the agent id (enrolled, not revoked) and the certificate's serial (not replaced by
    renewal: gRPC's TLS accepts any unexpired certificate from our CA)."""

    def __init__(
        self,
        store: Store,
        limiter: RateLimiter,
        replaced_grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.replaced_grace = replaced_grace
        self.clock = clock

    def agent_id(self, context: Any) -> str:
        return self.caller(context).agent_id

    def caller(self, context: Any) -> Caller:
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        pems = auth.get("x509_pem_cert") or []
        if len(names) != 1 or len(pems) != 1:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        agent_id: str = names[0].decode("utf-8", "replace")
        try:
            serial = format(x509.load_pem_x509_certificate(pems[0]).serial_number, "x")
        except ValueError:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unreadable client certificate")
        try:
            agent = self.store.agent(agent_id)
        except StoreError as exc:
            log.error("agent check failed: %s", exc)
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the collector cannot read its store")
        if agent is None:
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"the certificate names agent {agent_id}, which is not enrolled here",
            )
        if agent.revoked:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"agent {agent_id} is revoked")
        now = self.clock()
        if replaced_certificate(agent, serial, now, self.replaced_grace):
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"the certificate {serial} of agent {agent_id} was replaced by renewal; "
                "connect with the current one",
            )
        if (
            serial == agent.cert_serial
            and agent.prev_cert_serial is not None
            and agent.cert_first_used_at is None
        ):
            self._first_use(agent_id, serial, now)
        wait = self.limiter.take(agent_id)
        if wait > 0:
            _refuse_for_rate(context, wait, f"agent {agent_id} is over its rate limit")
        return Caller(agent_id, serial)

    def _first_use(self, agent_id: str, serial: str, now: float) -> None:
        """The agent holds its renewed certificate: start the old one's grace period. Once per
        renewal; if it cannot be written the next call tries again, and meanwhile the old
        certificate stays accepted, as it was a moment ago."""
        try:
            if self.store.cert_in_use(agent_id, serial, now):
                log.info("agent %s calls with its renewed certificate %s", agent_id, serial)
        except StoreError as exc:
            log.error("first use of agent %s's renewed certificate not stored: %s", agent_id, exc)


class IngestService:
    """``lantern.v1.Ingest``: Submit batches (idempotent) and Renew certificates.

    Submit validates here and stores through the ingest process (``collector.ingest``)."""

    def __init__(
        self,
        gate: AgentGate,
        ingest: IngestProcess,
        store: Store,
        pki: Pki,
        max_events: int,
        cert_days: float,
    ) -> None:
        self.gate = gate
        self.ingest = ingest
        self.store = store
        self.pki = pki
        self.max_events = max_events
        self.cert_days = cert_days

    def Submit(self, req: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:  # noqa: N802
        agent_id = self.gate.agent_id(context)
        try:
            batch = submit_to_batch(agent_id, req, time.time(), self.max_events)
        except BadRequestError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before storing")
        try:
            # Past the caller's deadline the batch may still be committed: the caller then
            # sees DEADLINE_EXCEEDED, resends, and gets it acknowledged as duplicates.
            result = self.ingest.submit(batch, remaining)
        except StoreError as exc:
            log.error("batch %s from %s not stored: %s", req.batch_id, agent_id, exc)
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the collector cannot store; retry")
        return pb.SubmitResponse(
            batch_id=req.batch_id, accepted=result.accepted, duplicates=result.duplicates
        )

    def Renew(self, req: pb.RenewRequest, context: Any) -> pb.RenewResponse:  # noqa: N802
        caller = self.gate.caller(context)
        agent_id = caller.agent_id
        try:
            cert = self.pki.issue_agent_certificate(req.csr_der, agent_id, self.cert_days)
        except PkiError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        not_after = cert.not_valid_after_utc.timestamp()
        try:
            self.store.renewed(
                agent_id,
                caller.cert_serial,
                format(cert.serial_number, "x"),
                not_after,
                time.time(),
            )
        except CertificateReplacedError as exc:  # a renewal racing this one won
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except AgentRefusedError as exc:  # revoked since the gate looked
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StoreError as exc:
            log.error("renewal of %s not stored: %s", agent_id, exc)
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the collector cannot store; retry")
        return pb.RenewResponse(
            certificate_der=cert.public_bytes(serialization.Encoding.DER),
            not_after_unix=int(not_after),
        )


class BundleService:
    """``lantern.v1.Bundles``: the signed catalog and policy bundles."""

    def __init__(self, gate: AgentGate, source: BundleSource) -> None:
        self.gate = gate
        self.source = source

    def Get(self, req: pb.BundleRequest, context: Any) -> pb.SignedBundle:  # noqa: N802
        self.gate.agent_id(context)
        try:
            bundle = self.source.get(req.kind)
        except BundleError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if "unknown bundle kind" in str(exc)
                else grpc.StatusCode.INTERNAL
            )
            _abort(context, code, str(exc))
        if req.have_version and req.have_version == bundle.version:
            return pb.SignedBundle(kind=bundle.kind, version=bundle.version, key_id=bundle.key_id)
        return bundle


@dataclass(frozen=True, slots=True)
class Bound:
    enroll_port: int
    ingest_port: int


class Collector:
    """One collector: PKI, store, both gRPC servers and the retention loop, started and stopped
    together. ``start()`` initialises an empty data directory with safe defaults."""

    def __init__(self, settings: Settings, bundle_dirs: dict[str, Path] | None = None) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.pki = load_pki(data) if is_initialised(data) else init_pki(data, settings.hostnames)
        self.store: SqliteStore = open_store(data)
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self.enroll_limiter = RateLimiter(
            settings.enroll_rate_per_second,
            settings.enroll_rate_burst,
            max_keys=settings.enroll_max_addresses,
        )
        self.bundles = BundleSource(
            self.pki.signing_key, {**DEFAULT_DIRS, **settings.bundle_dirs, **(bundle_dirs or {})}
        )
        self._servers: list[Any] = []
        self._stop = threading.Event()
        self._pruner: threading.Thread | None = None
        self.ingest: IngestProcess | None = None
        self.bound: Bound | None = None

    def _server(self, workers: int) -> Any:
        s = self.settings
        return grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collector"),
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_calls,
        )

    def start(self) -> Bound:
        s = self.settings
        gate = AgentGate(self.store, self.limiter, s.replaced_cert_grace)
        enroll = EnrollmentService(self.pki, self.store, s.client_cert_days, self.enroll_limiter)
        self.ingest = IngestProcess(self.store.path)
        ingest = IngestService(
            gate, self.ingest, self.store, self.pki, s.max_batch_events, s.client_cert_days
        )
        bundles = BundleService(gate, self.bundles)
        # The chain includes the CA so that an agent pinned only by collector.ca_sha256 can
        # find it in the handshake (agent.enroll.fetch_ca_by_fingerprint); the CA is public.
        chain = self.pki.server_cert_pem.rstrip(b"\n") + b"\n" + self.pki.ca_cert_pem
        keypair = [(self.pki.server_key_pem, chain)]

        enroll_server = self._server(max(2, s.workers // 4))
        enroll_server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "lantern.v1.Enrollment",
                    {"Enroll": _unary(enroll.Enroll, pb.EnrollRequest, pb.EnrollResponse)},
                ),
            )
        )
        ingest_server = self._server(s.workers)
        ingest_server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "lantern.v1.Ingest",
                    {
                        "Submit": _unary(ingest.Submit, pb.SubmitRequest, pb.SubmitResponse),
                        "Renew": _unary(ingest.Renew, pb.RenewRequest, pb.RenewResponse),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "lantern.v1.Bundles",
                    {"Get": _unary(bundles.Get, pb.BundleRequest, pb.SignedBundle)},
                ),
            )
        )
        enroll_port = enroll_server.add_secure_port(
            f"{s.listen_host}:{s.enroll_port}", grpc.ssl_server_credentials(keypair)
        )
        ingest_port = ingest_server.add_secure_port(
            f"{s.listen_host}:{s.ingest_port}",
            grpc.ssl_server_credentials(
                keypair, root_certificates=self.pki.ca_cert_pem, require_client_auth=True
            ),
        )
        if not enroll_port or not ingest_port:
            raise OSError(f"cannot listen on {s.listen_host}:{s.enroll_port}/{s.ingest_port}")
        enroll_server.start()
        ingest_server.start()
        self._servers = [enroll_server, ingest_server]
        self._pruner = threading.Thread(target=self._prune_loop, name="prune", daemon=True)
        self._pruner.start()
        self.bound = Bound(enroll_port, ingest_port)
        return self.bound

    def prune_now(self) -> None:
        cutoff = time.time() - self.settings.retention_days * 86400
        result = self.store.prune(cutoff)
        if result.events or result.sessions or result.usage:
            log.info(
                "retention: removed %d events, %d sessions, %d usage records",
                result.events,
                result.sessions,
                result.usage,
            )

    def _prune_loop(self) -> None:
        while not self._stop.wait(self.settings.prune_interval):
            try:
                self.prune_now()
            except StoreError as exc:
                log.error("retention run failed: %s", exc)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace``, close the store."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self._stop.set()
        events = [server.stop(grace) for server in self._servers]
        for ev in events:
            ev.wait()
        if self._pruner is not None:
            self._pruner.join(timeout=5)
        if self.ingest is not None:
            self.ingest.close()
        self.store.close()

    def wait(self) -> None:
        for server in self._servers:
            server.wait_for_termination()
