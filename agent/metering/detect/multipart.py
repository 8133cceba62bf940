"""A streaming ``multipart/form-data`` splitter: body bytes in, part events out.

Events are `PartStart` (what the part headers say, minus the file name), ``bytes`` (part data, in
order) and `PART_END`; bytes outside any part that should not be there (a missing boundary,
headers that never end) come as `Unparsed` so the caller can still scan them. Memory is bounded:
part data is handed on as it arrives, keeping only a delimiter's length back, and a part's
header block may be at most 16 KiB. Line breaks must be CRLF, as RFC 7578 requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from agent.metering.detect.files import ext_class
from agent.metering.detect.records import ExtClass

MAX_HEADERS = 16 * 1024


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins. ``ext_class`` is ``None`` for a plain form field (no ``filename``)."""

    ext_class: ExtClass | None
    media_type: str  # lower-case type/subtype of the part, "" when it has none


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete (or the body ended inside it)."""


@dataclass(frozen=True, slots=True)
class Unparsed:
    """Body bytes outside the multipart structure."""

    data: bytes


PART_END = PartEnd()
Event = PartStart | bytes | PartEnd | Unparsed

_BOUNDARY = re.compile(r"""(?i)(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))""")
_FILENAME = re.compile(r"""(?i)(?:^|;)\s*filename(\*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))""")


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a ``multipart/*`` content type, or ``None``."""
    m = _BOUNDARY.search(content_type)
    return None if m is None else (m[1] or m[2])


def _part_start(block: bytes) -> PartStart:
    filename: str | None = None
    media_type = ""
    for line in block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-disposition":
            for m in _FILENAME.finditer(value):
                raw = m[2] if m[2] is not None else m[3].strip()
                if m[1]:  # RFC 5987 filename*=charset'lang'percent-encoded
                    raw = unquote(raw.rpartition("'")[2])
                filename = raw
        elif name == "content-type":
            media_type = value.partition(";")[0].strip().lower()
    return PartStart(None if filename is None else ext_class(filename), media_type)


class MultipartSplitter:
    """Splits one multipart body; `feed` as bytes arrive, then `finish`."""

    __slots__ = ("_body_delim", "_buf", "_delim", "_state", "malformed")

    def __init__(self, boundary: str) -> None:
        self._delim = b"--" + boundary.encode("latin-1")
        self._body_delim = b"\r\n" + self._delim
        self._buf = b""
        self._state = "preamble"
        self.malformed = False

    def feed(self, data: bytes) -> list[Event]:
        if self._state == "broken":
            return [Unparsed(data)]
        self._buf += data
        out: list[Event] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Event]:
        """Close what is open; a body that did not reach its closing delimiter is malformed."""
        out: list[Event] = []
        buf, self._buf = self._buf, b""
        if self._state == "body":
            if buf:
                out.append(buf)
            out.append(PART_END)
        elif buf and self._state != "end":
            out.append(Unparsed(buf))
        if self._state != "end":
            self.malformed = True
        self._state = "end"
        return out

    def _step(self, out: list[Event]) -> bool:
        buf, state = self._buf, self._state
        if state == "body":
            i = buf.find(self._body_delim)
            if i < 0:
                keep = len(self._body_delim) - 1
                if len(buf) > keep:
                    out.append(buf[:-keep])
                    self._buf = buf[-keep:]
                return False
            if i:
                out.append(buf[:i])
            out.append(PART_END)
            self._buf = buf[i + len(self._body_delim) :]
            self._state = "delimiter"
            return True
        if state == "preamble":
            i = buf.find(self._delim)
            if i < 0:
                keep = len(self._delim) - 1
                if len(buf) > keep:
                    # Normally empty; scanned rather than dropped when the boundary is wrong.
                    out.append(Unparsed(buf[:-keep]))
                    self._buf = buf[-keep:]
                return False
            if i:
                out.append(Unparsed(buf[:i]))
            self._buf = buf[i + len(self._delim) :]
            self._state = "delimiter"
            return True
        if state == "delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._buf, self._state = b"", "end"
                return False
            j = buf.find(b"\r\n")
            if j < 0 or buf[:j].strip(b" \t"):
                return self._break(out) if j >= 0 or len(buf) > 1024 else False
            self._buf = buf[j + 2 :]
            self._state = "headers"
            return True
        if state == "headers":
            if buf.startswith(b"\r\n"):
                block, rest = b"", buf[2:]
            else:
                j = buf.find(b"\r\n\r\n")
                if j < 0:
                    return self._break(out) if len(buf) > MAX_HEADERS else False
                block, rest = buf[:j], buf[j + 4 :]
            out.append(_part_start(block))
            self._buf = rest
            self._state = "body"
            return True
        self._buf = b""  # "end": the epilogue is ignored
        return False

    def _break(self, out: list[Event]) -> bool:
        self.malformed = True
        self._state = "broken"
        out.append(Unparsed(self._buf))
        self._buf = b""
        return False
