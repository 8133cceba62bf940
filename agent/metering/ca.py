"""The per-device metering CA: made on the device; its key never leaves it, only the cert does.

Files are written in mitmproxy's confdir layout so ``mitmdump --set confdir=DIR`` uses this CA
instead of making its own:

* ``mitmproxy-ca.pem``       private key + certificate (mode 0600; the proxy signs leaf certs)
* ``mitmproxy-ca-cert.pem``  the certificate alone

`export_certificate` writes the certificate (PEM and DER) elsewhere for MDM to install as trusted.
mitmproxy adds ``mitmproxy-dhparam.pem`` (public, fixed parameters) on first start; nothing else
belongs in the confdir, and the canary test checks that.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.metering.exceptions import MeteringError

KEY_FILE = "mitmproxy-ca.pem"
CERT_FILE = "mitmproxy-ca-cert.pem"
EXPORT_PEM = "lantern-metering-ca.pem"
EXPORT_DER = "lantern-metering-ca.cer"
VALIDITY_DAYS = 3650
# mitmproxy signs every leaf with the CA's key and reuses that key as the leaf key, so the CA key
# type must be one its certificate code handles everywhere: RSA, as mitmproxy makes its own.
KEY_BITS = 2048


class CaError(MeteringError):
    """The CA files cannot be read, written or parsed."""


@dataclass(frozen=True, slots=True)
class CaFiles:
    confdir: Path
    key_and_cert: Path  # 0600
    cert: Path
    fingerprint_sha256: str  # hex, of the DER certificate: what an admin compares in MDM


def _cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _make(common_name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lantern"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
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
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_ca(
    confdir: Path,
    *,
    owner: tuple[int, int] | None = None,
    common_name: str | None = None,
) -> CaFiles:
    """Create the CA in ``confdir`` unless it is there; return its files.

    ``owner`` (uid, gid) hands the directory and files to the unprivileged metering user, which
    must read the key. Raises `CaError`.
    """
    key_path, cert_path = confdir / KEY_FILE, confdir / CERT_FILE
    try:
        if not confdir.exists():
            confdir.mkdir(mode=0o700, parents=True)
        confdir.chmod(0o700)
        if owner is not None:
            os.chown(confdir, *owner)
        if not key_path.exists():
            cn = common_name or f"Lantern metering CA ({socket.gethostname()})"
            key_pem, cert_pem = _make(cn)
            _write(key_path, key_pem + cert_pem, 0o600, owner)
            _write(cert_path, cert_pem, 0o644, owner)
        else:
            key_path.chmod(0o600)
            if owner is not None:
                os.chown(key_path, *owner)
            if not cert_path.exists():
                _write(cert_path, _cert_pem_of(key_path.read_bytes()), 0o644, owner)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaError(f"metering CA in {confdir}: {exc}") from exc
    return CaFiles(confdir, key_path, cert_path, _cert_fingerprint(cert))


def _cert_pem_of(key_and_cert: bytes) -> bytes:
    start = key_and_cert.find(b"-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise ValueError(f"{KEY_FILE} holds no certificate")
    return key_and_cert[start:]


def export_certificate(ca: CaFiles, dest: Path) -> tuple[Path, Path]:
    """Write the CA certificate as PEM and DER into ``dest`` (for MDM); returns both paths."""
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        dest.mkdir(parents=True, exist_ok=True)
        pem, der = dest / EXPORT_PEM, dest / EXPORT_DER
        _write(pem, cert.public_bytes(serialization.Encoding.PEM), 0o644, None)
        _write(der, cert.public_bytes(serialization.Encoding.DER), 0o644, None)
    except (OSError, ValueError) as exc:
        raise CaError(f"exporting the metering CA to {dest}: {exc}") from exc
    return pem, der
