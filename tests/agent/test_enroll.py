"""Enrolment: own key (0600) once, token refusals shown, CA pinned, renewal at a third left."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.enroll import (
    CollectorLink,
    Enroller,
    EnrollmentError,
    Identity,
    IdentityStore,
    fetch_ca_by_fingerprint,
    pinned_ca,
)
from agent.exceptions import CollectorError, ConfigError
from agent.options import Options
from agent.transport import AgentInfo, InProcessTransport, Issued

INFO = AgentInfo("laptop-1", "linux", "6.1", "0.1.0", "endpoint")
DAY = 86400.0


class FakeCA:
    """Signs CSRs like the collector: the agent id in the CN, a chosen lifetime."""

    def __init__(self, name: str = "Test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.days = 30.0
        self.issued = 0

    def sign(self, public_key: ec.EllipticCurvePublicKey, cn: str, days: float) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def __call__(self, csr_der: bytes) -> Issued:
        csr = x509.load_der_x509_csr(csr_der)
        assert csr.is_signature_valid
        self.issued += 1
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        cert = self.sign(key, "agent-1", self.days)
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM),
            cert.not_valid_after_utc.timestamp(),
            "agent-1",
            self.pem,
        )


@pytest.fixture
def ca() -> FakeCA:
    return FakeCA()


def make_enroller(
    tmp_path: Path, fake: InProcessTransport, ca: FakeCA, token: str | None = "t1"
) -> Enroller:
    return Enroller(
        IdentityStore(tmp_path / "identity"), INFO, token, lambda: ca.pem, lambda _: fake
    )


def collector(ca: FakeCA, **tokens: str) -> InProcessTransport:
    return InProcessTransport(issuer=ca, tokens=dict(tokens) or {"t1": "ok"})


def test_first_start_enrols_with_an_own_private_key(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    identity = make_enroller(tmp_path, fake, ca).identity()
    store = IdentityStore(tmp_path / "identity")
    assert stat.S_IMODE(store.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert identity.agent_id == "agent-1"
    assert identity.ca_pem == ca.pem
    key = serialization.load_pem_private_key(store.key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(store.cert.read_bytes())
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert identity.not_after - identity.not_before == pytest.approx(30 * DAY, abs=5)


def test_later_starts_reuse_the_identity_without_the_token(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    first = make_enroller(tmp_path, fake, ca).identity()
    again = make_enroller(tmp_path, fake, ca, token=None).identity()
    assert again == first
    assert fake.calls == {"enroll": 1}


@pytest.mark.parametrize(
    "verdict",
    [
        "token expired at 2026-01-01 00:00:00Z",
        "token revoked by an operator",
        "token has no uses left",
    ],
)
def test_a_refused_token_gives_the_collectors_reason(
    tmp_path: Path, ca: FakeCA, verdict: str
) -> None:
    fake = collector(ca, t1=verdict)
    with pytest.raises(EnrollmentError, match="refused the enrolment token") as err:
        make_enroller(tmp_path, fake, ca).identity()
    assert verdict in str(err.value) and "UNAUTHENTICATED" in str(err.value)
    assert not IdentityStore(tmp_path / "identity").cert.exists()


def test_a_reused_token_is_refused_for_the_second_agent(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    make_enroller(tmp_path / "a", fake, ca).identity()
    with pytest.raises(EnrollmentError, match="already used"):
        make_enroller(tmp_path / "b", fake, ca).identity()


def test_a_transient_failure_is_left_to_the_retry_loop(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    fake.fail("UNAVAILABLE", method="enroll")
    enroller = make_enroller(tmp_path, fake, ca)
    with pytest.raises(CollectorError) as err:
        enroller.identity()
    assert err.value.transient
    assert enroller.identity().agent_id == "agent-1"  # the token was not spent


def test_no_token_and_no_identity_says_so(tmp_path: Path, ca: FakeCA) -> None:
    with pytest.raises(EnrollmentError, match=r"collector\.token is not set"):
        make_enroller(tmp_path, collector(ca), ca, token=None).identity()


def test_an_answer_naming_another_ca_is_refused(tmp_path: Path, ca: FakeCA) -> None:
    other = FakeCA("Evil CA")
    fake = collector(other)
    with pytest.raises(EnrollmentError, match="CA other than the pinned one"):
        make_enroller(tmp_path, fake, ca).identity()


def test_renewal_is_due_when_a_third_of_the_lifetime_is_left() -> None:
    ident = Identity("a", b"", b"", b"", not_before=0.0, not_after=30 * DAY)
    assert not ident.renewal_due(19.9 * DAY)
    assert ident.renewal_due(20.1 * DAY)


def test_the_link_renews_over_mtls_and_reconnects(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    enroller = make_enroller(tmp_path, fake, ca)
    first = enroller.identity()
    connected: list[Identity] = []

    def connect(identity: Identity) -> InProcessTransport:
        connected.append(identity)
        return fake

    now = [first.not_before + 10 * DAY]
    link = CollectorLink(enroller, connect, clock=lambda: now[0])
    link.transport()
    assert fake.calls.get("renew") is None and len(connected) == 1
    now[0] = first.not_before + 21 * DAY  # 9 of 30 days left
    link.transport()
    assert fake.calls["renew"] == 1
    renewed = IdentityStore(tmp_path / "identity").load()
    assert renewed is not None and renewed.cert_pem != first.cert_pem
    assert renewed.key_pem != first.key_pem  # a new key pair with every renewal
    assert connected[-1].cert_pem == renewed.cert_pem


def test_a_failed_renewal_is_shown_and_retried_later(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    enroller = make_enroller(tmp_path, fake, ca)
    first = enroller.identity()
    fake.fail("UNAVAILABLE", method="renew")
    now = [first.not_before + 25 * DAY]
    link = CollectorLink(enroller, lambda _: fake, clock=lambda: now[0])
    assert link.transport() is fake  # still valid: keep uploading
    assert "renewal failed" in link.problems()[0]
    link.transport()
    assert fake.calls["renew"] == 1  # not hammered
    now[0] += CollectorLink.RENEW_RETRY_SECONDS
    link.transport()
    assert fake.calls["renew"] == 2 and link.problems() == []


def test_an_expired_certificate_stops_with_a_clear_error(tmp_path: Path, ca: FakeCA) -> None:
    fake = collector(ca)
    enroller = make_enroller(tmp_path, fake, ca)
    first = enroller.identity()
    fake.revoke("agent agent-1 is revoked")
    link = CollectorLink(enroller, lambda _: fake, clock=lambda: first.not_after + 1)
    with pytest.raises(EnrollmentError, match="expired"):
        link.transport()


# ---------------------------------------------------------------------------- CA pinning


def _options(**values: object) -> Options:
    from agent.cli_agent import all_options

    options = all_options()
    for key, value in values.items():
        options.set(key.replace("__", "."), value, "test")
    return options


def test_ca_file_and_fingerprint_must_agree(tmp_path: Path, ca: FakeCA) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.pem)
    good = hashlib.sha256(ca.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    opts = _options(collector__address="127.0.0.1:1", collector__ca_file=str(path))
    assert pinned_ca(opts) == ca.pem
    opts.set("collector.ca_sha256", good.upper(), "test")
    assert pinned_ca(opts) == ca.pem
    opts.set("collector.ca_sha256", "00" * 32, "test")
    with pytest.raises(ConfigError, match="fingerprint"):
        pinned_ca(opts)


def test_no_pinned_ca_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not pinned"):
        pinned_ca(_options(collector__address="127.0.0.1:1"))


def test_a_bad_fingerprint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="64 hex digits"):
        _options(collector__ca_sha256="abc")


@pytest.fixture
def tls_server(tmp_path: Path, ca: FakeCA) -> Iterator[str]:
    """A loopback TLS server presenting leaf + CA, like a collector serving its chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.sign(key.public_key(), "localhost", 30)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.pem)
    keyfile = tmp_path / "server.key"
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, keyfile)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{port}"
    done.set()
    t.join(5)
    listener.close()


def test_the_ca_is_found_by_its_fingerprint_in_the_presented_chain(
    tls_server: str, ca: FakeCA
) -> None:
    fp = hashlib.sha256(ca.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    colons = ":".join(fp[i : i + 2] for i in range(0, 64, 2))
    assert fetch_ca_by_fingerprint(tls_server, colons, timeout=5) == ca.pem


def test_a_chain_without_the_pinned_ca_is_refused(tls_server: str) -> None:
    with pytest.raises(EnrollmentError, match="no CA certificate with fingerprint"):
        fetch_ca_by_fingerprint(tls_server, "ab" * 32, timeout=5)
