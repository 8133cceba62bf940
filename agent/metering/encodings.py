"""Streaming ``Content-Encoding`` removal, so bodies reach the extractor decoded, chunk by chunk.

gzip and deflate use zlib; br and zstd use the ``brotli`` and ``zstandard`` modules that
mitmproxy itself depends on (so they exist in the metering environment). What one chunk
decodes to is passed on only up to `MAX_EXPANSION` times its size plus 1 MiB; the rest is
dropped and ``overflowed`` set, which the caller records as an error. (The decompressor still
produces that chunk's output once: a bomb costs one chunk's expansion, not the whole body's.)
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any, Protocol

from agent.metering.exceptions import MalformedBodyError

MAX_EXPANSION = 64
_SLACK = 1 << 20


class UnsupportedEncodingError(MalformedBodyError):
    """A Content-Encoding this decoder does not know."""


class _Step(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d: Any = zlib.decompressobj(wbits)
        self._raw_fallback = wbits == zlib.MAX_WBITS  # "deflate" is sometimes sent raw
        self._started = False

    def feed(self, data: bytes) -> bytes:
        try:
            out: bytes = self._d.decompress(data)
        except zlib.error as exc:
            if self._raw_fallback and not self._started:
                self._raw_fallback = False
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.feed(data)
            raise MalformedBodyError(f"bad compressed body: {type(exc).__name__}") from None
        self._started = True
        return out

    def flush(self) -> bytes:
        out: bytes = self._d.flush()
        return out


class _Brotli:
    def __init__(self) -> None:
        self._d: Any = importlib.import_module("brotli").Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            out: bytes = self._d.process(data)
        except Exception as exc:  # brotli.error is not a stable name across versions
            raise MalformedBodyError(f"bad br body: {type(exc).__name__}") from None
        return out

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self) -> None:
        self._d: Any = importlib.import_module("zstandard").ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        try:
            out: bytes = self._d.decompress(data)
        except Exception as exc:  # zstandard.ZstdError
            raise MalformedBodyError(f"bad zstd body: {type(exc).__name__}") from None
        return out

    def flush(self) -> bytes:
        return b""


def _step(name: str) -> _Step | None:
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16)
    if name == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    try:
        if name == "br":
            return _Brotli()
        if name == "zstd":
            return _Zstd()
    except ImportError:
        pass
    raise UnsupportedEncodingError(f"content-encoding {name[:20]!r} is not supported")


class BodyDecoder:
    """Undoes a ``Content-Encoding`` list (applied in order, so removed in reverse)."""

    __slots__ = ("_steps", "overflowed")

    def __init__(self, content_encoding: str | None) -> None:
        names = [n.strip().lower() for n in (content_encoding or "").split(",")]
        steps = [_step(n) for n in reversed(names)]
        self._steps = [s for s in steps if s is not None]
        self.overflowed = False

    @property
    def identity(self) -> bool:
        return not self._steps

    def feed(self, data: bytes) -> bytes:
        limit = len(data) * MAX_EXPANSION + _SLACK
        for step in self._steps:
            data = step.feed(data)
        if len(data) > limit:
            self.overflowed = True
            return data[:limit]
        return data

    def flush(self) -> bytes:
        out = b""
        for step in self._steps:
            out = step.feed(out) + step.flush() if out else step.flush()
        return out
