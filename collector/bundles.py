"""Build and sign catalog and policy bundles (deterministic tar.gz of YAML files, Ed25519).

The same files always give the same bytes (sorted names, zeroed times and owners, gzip without a
timestamp), so the version, the SHA-256 of the payload, changes only when content does.
Agents check bundles with ``collector.bundle_verify.verify_bundle``.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.api import lantern_pb2 as pb
from collector.bundle_verify import KINDS, key_id, payload_version, signed_message
from collector.exceptions import BundleError

_REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = {"catalog": _REPO / "signatures" / "catalog", "policy": _REPO / "policies"}


def build_payload(directory: Path, prefix: str) -> bytes:
    """A deterministic tar.gz of ``directory/*.yaml`` under ``prefix/`` (may hold no file)."""
    paths = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
            info = tarfile.TarInfo(f"{prefix}/{path.name}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def sign_bundle(kind: str, payload: bytes, key: ed25519.Ed25519PrivateKey) -> pb.SignedBundle:
    if kind not in KINDS:
        raise BundleError(f"unknown bundle kind {kind!r}")
    version = payload_version(payload)
    return pb.SignedBundle(
        kind=kind,
        version=version,
        payload=payload,
        signature=key.sign(signed_message(kind, version, payload)),
        key_id=key_id(key.public_key()),
    )


class BundleSource:
    """Signed bundles of the configured directories, rebuilt when their files change."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, dirs: dict[str, Path] | None = None) -> None:
        self._key = key
        self._dirs = dict(DEFAULT_DIRS if dirs is None else dirs)
        self._cache: dict[str, tuple[object, pb.SignedBundle]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> pb.SignedBundle:
        if kind not in self._dirs:
            raise BundleError(f"unknown bundle kind {kind!r}; known: {', '.join(self._dirs)}")
        directory = self._dirs[kind]
        stamp = _stamp(directory)
        with self._lock:
            cached = self._cache.get(kind)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            bundle = sign_bundle(kind, build_payload(directory, kind), self._key)
            self._cache[kind] = (stamp, bundle)
            return bundle


def _stamp(directory: Path) -> object:
    if not directory.is_dir():
        return ()
    return tuple(
        (p.name, st.st_mtime_ns, st.st_size)
        for p in sorted(directory.glob("*.yaml"))
        for st in (p.stat(),)
    )
