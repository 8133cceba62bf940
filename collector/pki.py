"""The collector's PKI: its CA, server certificate, bundle-signing key, and agent certificates.

Layout under ``<data_dir>/pki`` (private keys are mode 0600, written atomically)::

    ca.key  ca.crt              ECDSA P-256 CA that signs the server and every agent certificate
    server.key  server.crt      SANs: the configured host names, localhost, 127.0.0.1, ::1
    bundle-signing.key  .pub    Ed25519, signs catalog and policy bundles

An agent certificate carries the agent id as subject CN and as URI SAN ``urn:lantern:agent:<id>``;
the server takes the id from the TLS peer certificate, never from a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.exceptions import PkiError

AGENT_URI_PREFIX = "urn:lantern:agent:"
CA_DAYS = 3650
SERVER_DAYS = 825
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between agent and collector

CertificateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_agent_id() -> str:
    return f"agt-{secrets.token_hex(10)}"


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by the owner only (0600 from creation on)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _pem_key(key: CertificateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lantern"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(hostnames: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*hostnames, "localhost", "127.0.0.1", "::1"):
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class Pki:
    """The loaded PKI of one collector."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    server_cert_pem: bytes
    server_key_pem: bytes
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def ca_cert_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_cert_der(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.DER)

    @property
    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.signing_key.public_key()

    def issue_agent_certificate(
        self, csr_der: bytes, agent_id: str, days: float
    ) -> x509.Certificate:
        """Sign a client certificate for ``agent_id`` over the CSR's key (PkiError if bad)."""
        csr = load_csr(csr_der)
        now = _now()
        lifetime = dt.timedelta(days=days)
        # Agents renew when a third of (not_after - not_before) is left: a backdate as long as a
        # short lifetime would make its certificates due for renewal the moment they are issued.
        backdate = min(_BACKDATE, lifetime / 10)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(agent_id))
            .issuer_name(self.ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_key_usage(), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self.ca_key, hashes.SHA256())


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def load_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
    """Parse a DER CSR and check its signature and key (PkiError says what is wrong)."""
    if not csr_der:
        raise PkiError("csr_der is empty")
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise PkiError(f"csr_der is not a DER PKCS#10 request: {exc}") from exc
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"the CSR's public key is not supported: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PkiError(f"the CSR's RSA key has {key.key_size} bits; at least 2048 needed")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise PkiError(f"the CSR's curve {key.curve.name} is not supported (P-256, P-384)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise PkiError(f"the CSR's key type {type(key).__name__} is not supported")
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, UnsupportedAlgorithm) as exc:
        raise PkiError(f"the CSR's signature cannot be checked: {exc}") from exc
    if not valid:
        raise PkiError("the CSR's signature does not match its public key")
    return csr


def pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def is_initialised(data_dir: Path) -> bool:
    return (pki_dir(data_dir) / "ca.crt").is_file()


def init_pki(data_dir: Path, hostnames: tuple[str, ...]) -> Pki:
    """Create the CA, server certificate and signing key (PkiError if one exists already)."""
    d = pki_dir(data_dir)
    if is_initialised(data_dir):
        raise PkiError(f"{d} already holds a CA; refusing to replace it")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name(f"Lantern collector CA {secrets.token_hex(4)}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0] if hostnames else "localhost"))
        .issuer_name(ca_subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hostnames), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_key_usage(), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    signing_key = ed25519.Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    write_private(d / "ca.key", _pem_key(ca_key))
    write_private(d / "server.key", _pem_key(server_key))
    write_private(d / "bundle-signing.key", _pem_key(signing_key))
    write_public(d / "server.crt", server_cert.public_bytes(pem))
    write_public(
        d / "bundle-signing.pub",
        signing_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    write_public(d / "ca.crt", ca_cert.public_bytes(pem))  # last: its presence means "done"
    return load_pki(data_dir)


def load_pki(data_dir: Path) -> Pki:
    d = pki_dir(data_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        signing_key = serialization.load_pem_private_key(
            (d / "bundle-signing.key").read_bytes(), None
        )
        server_cert_pem = (d / "server.crt").read_bytes()
        server_key_pem = (d / "server.key").read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(
            f"{d}: {Path(exc.filename).name} is missing; run `lantern collector init`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise PkiError(f"{d}: cannot load the collector's PKI: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{d / 'ca.key'}: expected an ECDSA key")
    if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"{d / 'bundle-signing.key'}: expected an Ed25519 key")
    return Pki(ca_cert, ca_key, server_cert_pem, server_key_pem, signing_key)


def agent_id_of(cert: x509.Certificate) -> str:
    """The agent id a certificate was issued to (its subject CN)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PkiError("the certificate has no single common name")
    return str(cns[0].value)
