"""Verify a signed catalog or policy bundle: the agent's side, importing only ``cryptography``.

A bundle is ``kind``, ``version`` (the SHA-256 hex of the payload), ``payload`` (a tar.gz of
YAML files) and an Ed25519 ``signature`` over ``signed_message(kind, version, payload)``. An empty
payload with the version the agent already has means "unchanged" (see ``is_unchanged``).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

KINDS = ("catalog", "policy")
DOMAIN = b"lantern-bundle-v1\x00"
MAX_FILES = 2000
MAX_UNPACKED_BYTES = 64 * 1024 * 1024


class BundleVerifyError(Exception):
    """A bundle is not what its signer sent: bad signature, wrong hash, unsafe or corrupt tar."""


class BundleLike(Protocol):
    """A ``lantern.v1.SignedBundle`` or anything with the same fields."""

    @property
    def kind(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    kind: str
    version: str
    files: dict[str, bytes]  # path inside the bundle -> content


def signed_message(kind: str, version: str, payload: bytes) -> bytes:
    """What the signature covers: a domain tag, kind, version and the payload's SHA-256."""
    return b"".join(
        (
            DOMAIN,
            kind.encode(),
            b"\x00",
            version.encode(),
            b"\x00",
            hashlib.sha256(payload).digest(),
        )
    )


def payload_version(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(data: bytes) -> ed25519.Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or its 32 raw bytes."""
    try:
        if len(data) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BundleVerifyError(f"not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleVerifyError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def is_unchanged(bundle: BundleLike, have_version: str) -> bool:
    """True when the collector answered "you have the current version" (no payload)."""
    return bool(have_version) and bundle.version == have_version and not bundle.payload


def verify_bundle(
    bundle: BundleLike, public_key: ed25519.Ed25519PublicKey | bytes
) -> VerifiedBundle:
    """Check the signature and hash, then unpack the files (BundleVerifyError says what failed)."""
    key = (
        public_key
        if isinstance(public_key, ed25519.Ed25519PublicKey)
        else load_public_key(public_key)
    )
    if bundle.kind not in KINDS:
        raise BundleVerifyError(f"unknown bundle kind {bundle.kind!r}")
    if not bundle.payload:
        raise BundleVerifyError(f"the {bundle.kind} bundle has no payload")
    if not bundle.signature:
        raise BundleVerifyError(f"the {bundle.kind} bundle is not signed")
    try:
        key.verify(bundle.signature, signed_message(bundle.kind, bundle.version, bundle.payload))
    except InvalidSignature as exc:
        raise BundleVerifyError(
            f"the {bundle.kind} bundle's signature does not verify with key {key_id(key)}: "
            "the payload, version or signature was altered or signed by another key"
        ) from exc
    if payload_version(bundle.payload) != bundle.version:
        raise BundleVerifyError(f"the {bundle.kind} bundle's version is not its payload's hash")
    return VerifiedBundle(bundle.kind, bundle.version, _unpack(bundle.payload))


def _unpack(payload: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    raise BundleVerifyError(f"bundle entry {name!r} is not a regular file")
                if name.startswith("/") or ".." in name.split("/"):
                    raise BundleVerifyError(f"bundle entry {name!r} has an unsafe path")
                total += member.size
                if len(files) >= MAX_FILES or total > MAX_UNPACKED_BYTES:
                    raise BundleVerifyError("the bundle unpacks to too many files or bytes")
                f = tar.extractfile(member)
                if f is None:
                    raise BundleVerifyError(f"bundle entry {name!r} cannot be read")
                files[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleVerifyError(f"the bundle payload is not a valid tar.gz: {exc}") from exc
    return files
