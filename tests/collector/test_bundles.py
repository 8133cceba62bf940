"""Signed bundles: deterministic, verified by the agent, and refused when tampered with."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.api import lantern_pb2 as pb
from collector.bundle_verify import BundleVerifyError, is_unchanged, verify_bundle
from collector.bundles import DEFAULT_DIRS, BundleSource, build_payload, sign_bundle

KEY = ed25519.Ed25519PrivateKey.generate()


def catalog_bundle() -> pb.SignedBundle:
    return sign_bundle("catalog", build_payload(DEFAULT_DIRS["catalog"], "catalog"), KEY)


def test_the_same_files_give_the_same_bytes() -> None:
    a = build_payload(DEFAULT_DIRS["catalog"], "catalog")
    b = build_payload(DEFAULT_DIRS["catalog"], "catalog")
    assert a == b


def test_a_signed_catalog_verifies_and_unpacks_every_file() -> None:
    bundle = catalog_bundle()
    verified = verify_bundle(bundle, KEY.public_key())
    names = sorted(p.name for p in DEFAULT_DIRS["catalog"].glob("*.yaml"))
    assert sorted(verified.files) == [f"catalog/{n}" for n in names]
    first = names[0]
    assert verified.files[f"catalog/{first}"] == (DEFAULT_DIRS["catalog"] / first).read_bytes()


def test_an_empty_policy_directory_still_gives_a_signed_bundle(tmp_path: Path) -> None:
    bundle = sign_bundle("policy", build_payload(tmp_path, "policy"), KEY)
    assert verify_bundle(bundle, KEY.public_key()).files == {}


def test_the_public_key_may_be_pem_or_raw() -> None:
    pub = KEY.public_key()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    bundle = catalog_bundle()
    assert verify_bundle(bundle, pem).version == verify_bundle(bundle, raw).version


def tampered(**change: object) -> pb.SignedBundle:
    bundle = catalog_bundle()
    out = pb.SignedBundle()
    out.CopyFrom(bundle)
    for k, v in change.items():
        setattr(out, k, v)
    return out


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b: {"payload": _flip(b.payload, len(b.payload) // 2)}, "does not verify"),
        (lambda b: {"signature": _flip(b.signature, 3)}, "does not verify"),
        (lambda b: {"version": "0" * 64}, "does not verify"),
        (lambda b: {"kind": "policy"}, "does not verify"),
        (lambda b: {"kind": "other"}, "unknown bundle kind"),
        (lambda b: {"signature": b""}, "not signed"),
        (lambda b: {"payload": b""}, "no payload"),
    ],
    ids=["payload", "signature", "version", "kind", "unknown-kind", "unsigned", "empty"],
)
def test_a_tampered_bundle_is_refused(make: object, message: str) -> None:
    change = make(catalog_bundle())  # type: ignore[operator]
    with pytest.raises(BundleVerifyError, match=message):
        verify_bundle(tampered(**change), KEY.public_key())


def test_another_key_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BundleVerifyError, match="signed by another key"):
        verify_bundle(catalog_bundle(), other)


def test_an_unsafe_path_in_a_validly_signed_tar_is_refused() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.yaml")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    bundle = sign_bundle("catalog", raw.getvalue(), KEY)
    with pytest.raises(BundleVerifyError, match="unsafe path"):
        verify_bundle(bundle, KEY.public_key())


def test_the_source_rebuilds_when_a_file_changes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: 1\n")
    source = BundleSource(KEY, {"policy": tmp_path})
    first = source.get("policy")
    assert source.get("policy") is first
    (tmp_path / "b.yaml").write_text("b: 2\n")
    second = source.get("policy")
    assert second.version != first.version
    assert sorted(verify_bundle(second, KEY.public_key()).files) == [
        "policy/a.yaml",
        "policy/b.yaml",
    ]
    unchanged = pb.SignedBundle(kind="policy", version=second.version)
    assert is_unchanged(unchanged, second.version)
