"""The agent's identity: its own key pair, one-time enrolment with a token, certificate renewal.

The private key is generated here, written 0600 into the private state directory and never
leaves the device; the collector sees only a CSR. Every renewal makes a new key pair, so a key
copied off the device is worth nothing once the certificate issued for it expires. The
collector's CA is pinned before anything is sent: from ``collector.ca_file``, or found by its
SHA-256 fingerprint (``collector.ca_sha256``, what an MDM profile carries) in the chain the
collector presents, then used as the only root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import platform
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import lantern
from agent.exceptions import CollectorError, ConfigError, EnrollmentError
from agent.options import Option, Options
from agent.transport import AgentInfo, EnrollTransport, Issued, Transport

ENROLL_PORT = 7443  # the collector's default listen.enroll_port
RENEW_WHEN_LEFT = 1 / 3  # renew when less than this share of the lifetime remains


def _fingerprint_ok(value: str) -> str | None:
    hexed = value.replace(":", "").lower()
    if len(hexed) != 64 or any(c not in "0123456789abcdef" for c in hexed):
        return "must be a SHA-256 fingerprint: 64 hex digits, colons allowed"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be more than 0"


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "collector.address",
            str,
            None,
            "The collector's gRPC address (host:port). Unset: the agent keeps sessions in its "
            "spool and uploads nothing.",
        )
    )
    options.declare(
        Option(
            "collector.enroll_address",
            str,
            None,
            "The collector's enrolment address (host:port; TLS without a client certificate). "
            f"Default: the host of collector.address, port {ENROLL_PORT}.",
        )
    )
    options.declare(
        Option(
            "collector.token",
            str,
            None,
            "One-time enrolment token from `lantern collector token create`; used on first "
            "start only (the agent then has its own certificate).",
            secret=True,
        )
    )
    options.declare(
        Option(
            "collector.ca_file",
            Path,
            None,
            "PEM file of the collector's CA: the only root the agent trusts for the collector.",
        )
    )
    options.declare(
        Option(
            "collector.ca_sha256",
            str,
            None,
            "SHA-256 fingerprint of the collector's CA certificate (hex, colons allowed), for "
            "MDM profiles that carry no file. The CA presented by the collector must match it.",
            check=_fingerprint_ok,
        )
    )
    options.declare(
        Option(
            "collector.server_name",
            str,
            None,
            "Name to check the collector's certificate against when it differs from the host "
            "in collector.address (e.g. behind a load balancer).",
        )
    )
    options.declare(
        Option(
            "collector.timeout",
            float,
            15.0,
            "Deadline in seconds for every call to the collector.",
            check=_positive,
        )
    )


# ---------------------------------------------------------------------------- identity files


@dataclass(frozen=True, slots=True)
class Identity:
    agent_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    not_before: float
    not_after: float

    def renewal_due(self, now: float) -> bool:
        lifetime = self.not_after - self.not_before
        return self.not_after - now < lifetime * RENEW_WHEN_LEFT


class IdentityStore:
    """``<state>/identity/``: client.key (0600), client.pem, ca.pem, agent_id.

    A renewal replaces key and certificate together (``replace``): both are staged as
    ``client.next.pem`` and ``client.next.key`` first, then the key is moved into place (the
    commit point) and the certificate after it. ``load`` finishes or undoes a replacement a
    crash interrupted, so it always finds a key and a certificate that belong together: the old
    pair if the new key was not yet in place, the new pair if it was.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = directory / "client.key"
        self.cert = directory / "client.pem"
        self.ca = directory / "ca.pem"
        self.agent_id = directory / "agent_id"
        self.next_key = directory / "client.next.key"
        self.next_cert = directory / "client.next.pem"

    def _ensure_dir(self) -> None:
        if not self.dir.exists():
            self.dir.mkdir(mode=0o700, parents=True)
            self.dir.chmod(0o700)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The agent's key, created on first use (O_EXCL, 0600: never readable by others)."""
        self._ensure_dir()
        if not self.key.exists():
            _write_atomic(self.key, _key_pem(new_private_key()), 0o600)
        try:
            loaded = serialization.load_pem_private_key(self.key.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot read the agent key {self.key}: {exc}") from exc
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise EnrollmentError(f"{self.key} is not an EC private key")
        return loaded

    def load(self) -> Identity | None:
        """The stored identity, or None when this agent has not enrolled (or it is incomplete)."""
        self._settle_replacement()
        if not all(p.exists() for p in (self.key, self.cert, self.ca)):
            return None
        try:
            cert_pem = self.cert.read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
            key_pem = self.key.read_bytes()
            key = self.private_key()
            ca_pem = self.ca.read_bytes()
            agent_id = self.agent_id.read_text().strip() if self.agent_id.exists() else ""
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot read the agent identity in {self.dir}: {exc}") from exc
        if not _same_key(cert, key):
            raise EnrollmentError(f"{self.cert} does not belong to the key {self.key}")
        return Identity(
            agent_id=agent_id or _common_name(cert),
            key_pem=key_pem,
            cert_pem=cert_pem,
            ca_pem=ca_pem,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    def save(self, issued: Issued, ca_pem: bytes) -> Identity:
        """Store a certificate for our key (CA first: a crash leaves no cert without its CA)."""
        _check_issued(issued, self.private_key())
        _write_atomic(self.ca, ca_pem, 0o644)
        if issued.agent_id:
            _write_atomic(self.agent_id, issued.agent_id.encode() + b"\n", 0o644)
        _write_atomic(self.cert, issued.certificate_pem, 0o644)
        identity = self.load()
        assert identity is not None  # just written
        return identity

    def replace(self, key: ec.EllipticCurvePrivateKey, issued: Issued) -> Identity:
        """Switch to a new key and its certificate (a renewal); the old key is gone after.

        EnrollmentError when the certificate is not for ``key`` or cannot be stored; the old
        pair then stays in place and usable."""
        _check_issued(issued, key)
        try:
            # Staged, in this order: a staged key means "not committed" to _settle_replacement.
            _write_atomic(self.next_cert, issued.certificate_pem, 0o644)
            _write_atomic(self.next_key, _key_pem(key), 0o600)
            os.replace(self.next_key, self.key)  # the commit point
            os.replace(self.next_cert, self.cert)
            _sync_dir(self.dir)
        except OSError as exc:
            with contextlib.suppress(OSError):  # best effort: the next load() settles it too
                self._settle_replacement()
            raise EnrollmentError(
                f"cannot store the renewed key and certificate in {self.dir}: {exc}"
            ) from exc
        identity = self.load()
        assert identity is not None  # just written
        return identity

    def _settle_replacement(self) -> None:
        """Undo a replacement that did not reach its commit point; finish one that did."""
        for stale in self.dir.glob(".*.tmp"):  # a write cut short by a crash (may hold a key)
            stale.unlink(missing_ok=True)
        if self.next_key.exists():  # not committed: the old pair is whole, drop the new one
            self.next_key.unlink()
            self.next_cert.unlink(missing_ok=True)
            _sync_dir(self.dir)
            return
        if not self.next_cert.exists():
            return
        try:
            staged = x509.load_pem_x509_certificate(self.next_cert.read_bytes())
            key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        except (OSError, ValueError):
            staged_matches = False
        else:
            staged_matches = isinstance(key, ec.EllipticCurvePrivateKey) and _same_key(staged, key)
        if staged_matches:  # the new key is in place: its certificate follows it
            os.replace(self.next_cert, self.cert)
        else:  # staged before the key was: the current pair is the old one, whole
            self.next_cert.unlink()
        _sync_dir(self.dir)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (POSIX; elsewhere a rename is all there is)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_issued(issued: Issued, key: ec.EllipticCurvePrivateKey) -> None:
    """EnrollmentError unless the collector's certificate is readable and for ``key``."""
    try:
        cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    except ValueError as exc:
        raise EnrollmentError(f"the collector returned an unreadable certificate: {exc}") from exc
    if not _same_key(cert, key):
        raise EnrollmentError("the collector returned a certificate for another key")


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_csr(key: ec.EllipticCurvePrivateKey, hostname: str) -> bytes:
    """PKCS#10 for ``key``; the collector puts the agent id in the certificate, not us."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "lantern-agent")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def agent_info(options: Options) -> AgentInfo:
    return AgentInfo(
        hostname=options["device.name"],
        os=platform.system().lower(),
        os_version=platform.release(),
        agent_version=lantern.__version__,
        mode=options["mode"],
    )


# ---------------------------------------------------------------------------- CA pinning


def ca_fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _norm(fingerprint: str) -> str:
    return fingerprint.replace(":", "").lower()


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"collector.address: {address!r} is not host:port")
    return host.strip("[]"), int(port)


def fetch_ca_by_fingerprint(
    address: str, fingerprint: str, *, server_name: str | None = None, timeout: float = 10.0
) -> bytes:
    """Find the CA with this fingerprint in the chain the collector presents.

    The handshake is unverified on purpose and sends nothing but a ClientHello; the CA found is
    then the only root for the real (verified) connection, so a wrong server fails there.
    """
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
            ders = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    except OSError as exc:
        raise CollectorError("UNAVAILABLE", f"cannot reach {address}: {exc}") from exc
    for der in ders:
        if hashlib.sha256(der).hexdigest() == _norm(fingerprint):
            cert = x509.load_der_x509_certificate(der)
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise EnrollmentError("the certificate pinned by collector.ca_sha256 is not a CA")
            return cert.public_bytes(serialization.Encoding.PEM)
    raise EnrollmentError(
        f"the collector at {address} presented no CA certificate with fingerprint "
        f"{fingerprint} (collector.ca_sha256); check the fingerprint, or set collector.ca_file"
    )


def pinned_ca(options: Options) -> bytes:
    """The collector CA from collector.ca_file and/or collector.ca_sha256 (they must agree)."""
    path: Path | None = options["collector.ca_file"]
    fingerprint: str | None = options["collector.ca_sha256"]
    if path is not None:
        try:
            pem = path.read_bytes()
            found = ca_fingerprint(pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"collector.ca_file: cannot read a PEM certificate {path}: {exc}"
            ) from exc
        if fingerprint and found != _norm(fingerprint):
            raise ConfigError(
                f"collector.ca_file {path} has fingerprint {found}, not collector.ca_sha256"
            )
        return pem
    if fingerprint:
        return fetch_ca_by_fingerprint(
            options["collector.enroll_address"] or options["collector.address"],
            fingerprint,
            server_name=options["collector.server_name"],
            timeout=options["collector.timeout"],
        )
    raise ConfigError(
        "collector.address is set but the collector's CA is not pinned: set collector.ca_file "
        "or collector.ca_sha256"
    )


# ---------------------------------------------------------------------------- enrol and renew


class Enroller:
    """Gives the agent its identity: the stored one, or a new one enrolled with the token."""

    def __init__(
        self,
        store: IdentityStore,
        info: AgentInfo,
        token: str | None,
        ca: Callable[[], bytes],
        connect: Callable[[bytes], EnrollTransport],
    ) -> None:
        self.store = store
        self.info = info
        self.token = token
        self.ca = ca  # the pinned CA (may contact the collector: collector.ca_sha256)
        self.connect = connect  # server-authenticated channel trusting only that CA

    def identity(self) -> Identity:
        """Raises EnrollmentError (no retry helps) or CollectorError (transient: retry)."""
        existing = self.store.load()
        if existing is not None:
            return existing
        if not self.token:
            raise EnrollmentError(
                f"this agent is not enrolled (no certificate in {self.store.dir}) and "
                "collector.token is not set"
            )
        ca_pem = self.ca()
        csr = make_csr(self.store.private_key(), self.info.hostname)
        transport = self.connect(ca_pem)
        try:
            issued = transport.enroll(self.token, csr, self.info)
        except CollectorError as exc:
            if exc.transient:
                raise
            raise EnrollmentError(
                f"the collector refused the enrolment token ({exc.code}): "
                f"{exc.message or 'no reason given'}"
            ) from exc
        finally:
            transport.close()
        if issued.ca_pem is not None and ca_fingerprint(issued.ca_pem) != ca_fingerprint(ca_pem):
            raise EnrollmentError(
                "the collector's enrolment answer names a CA other than the pinned one"
            )
        return self.store.save(issued, ca_pem)


def renew(
    identity: Identity, store: IdentityStore, transport: Transport, hostname: str
) -> Identity:
    """A new key pair and a certificate for it, asked for over mutual TLS with the current
    pair; the new pair replaces the old one on disk only once the certificate is in hand."""
    key = new_private_key()
    issued = transport.renew(make_csr(key, hostname))
    cert_agent = _common_name(_load_cert(issued.certificate_pem))
    if cert_agent != identity.agent_id:
        raise EnrollmentError(
            f"the renewed certificate names agent {cert_agent!r}, not {identity.agent_id!r}"
        )
    return store.replace(key, issued)


def _load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EnrollmentError(f"the collector returned an unreadable certificate: {exc}") from exc


def certificate_days_left(identity: Identity, now: float | None = None) -> float:
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    return (identity.not_after - now) / 86400


class CollectorLink:
    """The uploader's way to the collector: enrol once, connect with the client certificate,
    renew key and certificate when a third of its lifetime is left, reconnect with the new pair.

    A failed renewal is retried every ``RENEW_RETRY_SECONDS``, or every tenth of the time left
    when that is sooner (at least a second apart), so a short-lived certificate is not lost to
    one failed attempt; the same pause follows a success, so a certificate that is due at once
    (a clock far off) cannot make the agent renew on every call."""

    RENEW_RETRY_SECONDS = 300.0
    RENEW_MIN_SECONDS = 1.0

    def __init__(
        self,
        enroller: Enroller,
        connect: Callable[[Identity], Transport],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enroller = enroller
        self.connect = connect
        self.clock = clock
        self._identity: Identity | None = None
        self._transport: Transport | None = None
        self._next_renewal = 0.0
        self._problem: str | None = None

    def transport(self) -> Transport:
        if self._identity is None:
            self._identity = self.enroller.identity()
        now = self.clock()
        if self._identity.renewal_due(now) and now >= self._next_renewal:
            self._renew(now)
        if self._identity.not_after <= now:
            raise EnrollmentError(
                f"the agent certificate expired at {_iso(self._identity.not_after)} and could "
                f"not be renewed; enrol the agent again ({self.enroller.store.dir})"
            )
        if self._transport is None:
            self._transport = self.connect(self._identity)
        return self._transport

    def _renew(self, now: float) -> None:
        assert self._identity is not None
        current = self._transport or self.connect(self._identity)
        try:
            self._identity = renew(
                self._identity, self.enroller.store, current, self.enroller.info.hostname
            )
        except (CollectorError, EnrollmentError) as exc:
            self._transport = current
            self._next_renewal = now + self._pause(now)
            self._problem = (
                f"certificate renewal failed ({exc}); it expires {_iso(self._identity.not_after)}"
            )
            return
        self._problem = None
        self._next_renewal = now + self._pause(now)
        current.close()
        self._transport = None  # reconnect with the new key and certificate

    def _pause(self, now: float) -> float:
        assert self._identity is not None
        left = self._identity.not_after - now
        return max(self.RENEW_MIN_SECONDS, min(self.RENEW_RETRY_SECONDS, left / 10))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def problems(self) -> list[str]:
        return [self._problem] if self._problem else []


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def build_link(options: Options, state_dir: Path) -> CollectorLink:
    """The real link: pinned CA, gRPC over mutual TLS, identity in ``<state>/identity``."""
    from agent.transport import GrpcTransport  # noqa: PLC0415 - imports grpc

    address: str = options["collector.address"]
    common = {
        "timeout": options["collector.timeout"],
        "server_name": options["collector.server_name"],
    }

    enroll_address: str = options["collector.enroll_address"] or (
        f"{address.rpartition(':')[0]}:{ENROLL_PORT}"
    )

    def enroll_channel(ca_pem: bytes) -> EnrollTransport:
        return GrpcTransport(enroll_address, ca_pem=ca_pem, **common)

    def mtls_channel(identity: Identity) -> Transport:
        return GrpcTransport(
            address,
            ca_pem=identity.ca_pem,
            cert_pem=identity.cert_pem,
            key_pem=identity.key_pem,
            **common,
        )

    enroller = Enroller(
        IdentityStore(state_dir / "identity"),
        agent_info(options),
        options["collector.token"],
        lambda: pinned_ca(options),
        enroll_channel,
    )
    return CollectorLink(enroller, mtls_channel)
