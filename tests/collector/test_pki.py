"""The collector's CA, server certificate, signing key and agent certificates."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.exceptions import PkiError
from collector.pki import AGENT_URI_PREFIX, agent_id_of, init_pki, load_pki, pki_dir
from collector.testing import new_key_and_csr


@pytest.fixture
def data(tmp_path: Path) -> Path:
    init_pki(tmp_path, ("collector.example.com", "10.0.0.5"))
    return tmp_path


def test_private_keys_are_owner_only(data: Path) -> None:
    d = pki_dir(data)
    for name in ("ca.key", "server.key", "bundle-signing.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "ca.crt").stat().st_mode) == 0o644


def test_server_certificate_chains_to_the_ca_with_the_configured_names(data: Path) -> None:
    pki = load_pki(data)
    server = x509.load_pem_x509_certificate(pki.server_cert_pem)
    server.verify_directly_issued_by(pki.ca_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"collector.example.com", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(pki.signing_key, ed25519.Ed25519PrivateKey)


def test_init_refuses_to_replace_an_existing_ca(data: Path) -> None:
    before = (pki_dir(data) / "ca.crt").read_bytes()
    with pytest.raises(PkiError, match="already holds a CA"):
        init_pki(data, ("localhost",))
    assert (pki_dir(data) / "ca.crt").read_bytes() == before


def test_agent_certificate_names_the_agent_and_is_short_lived(data: Path) -> None:
    pki = load_pki(data)
    key, csr = new_key_and_csr("whatever-the-agent-claims")
    cert = pki.issue_agent_certificate(csr, "agt-123", days=30)
    cert.verify_directly_issued_by(pki.ca_cert)
    assert agent_id_of(cert) == "agt-123"  # the CSR's own CN is ignored
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [AGENT_URI_PREFIX + "agt-123"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert cert.public_key() == key.public_key()


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )


def test_a_csr_with_a_broken_signature_is_refused(data: Path) -> None:
    pki = load_pki(data)
    der = bytearray(_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(
        serialization.Encoding.DER
    ))  # fmt: skip
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises(PkiError, match="signature"):
        pki.issue_agent_certificate(bytes(der), "agt-1", 30)


@pytest.mark.parametrize(
    ("csr_der", "message"),
    [
        (b"", "csr_der is empty"),
        (b"not a csr", "not a DER PKCS#10"),
    ],
)
def test_malformed_csrs_are_refused_with_the_reason(
    data: Path, csr_der: bytes, message: str
) -> None:
    with pytest.raises(PkiError, match=message):
        load_pki(data).issue_agent_certificate(csr_der, "agt-1", 30)


def test_weak_rsa_keys_are_refused(data: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = _csr(weak).public_bytes(serialization.Encoding.DER)
    with pytest.raises(PkiError, match="1024 bits"):
        load_pki(data).issue_agent_certificate(der, "agt-1", 30)


def test_missing_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.crt is missing"):
        load_pki(tmp_path)
