"""Streamed bytes to the text the detectors read: UTF-8, JSON string escapes, form encoding.

Each decoder holds back the few bytes or characters of an escape that a chunk boundary cut, so
an address written ``a\\u0040b.com`` in JSON or ``a%40b.com`` in a form is found wherever the body
was split. JSON escapes are undone twice: AI request bodies often carry JSON inside a JSON string
(tool-call arguments, embedded documents), where a newline reads ``\\\\n`` and would otherwise glue
an ``n`` to the number after it. Invalid UTF-8 becomes U+FFFD, which no detector matches.
"""

from __future__ import annotations

import codecs
import re
from typing import Literal
from urllib.parse import unquote_to_bytes

TextMode = Literal["plain", "json", "form"]

_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|(.))", re.DOTALL)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _unescape(m: re.Match[str]) -> str:
    hex4, ch = m.group(1, 2)
    if hex4 is not None:
        return chr(int(hex4, 16))
    return _SIMPLE.get(ch, ch)


class JsonUnescaper:
    """Undoes one level of JSON string escapes in streamed text."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        if self._held:
            text = self._held + text
            self._held = ""
        cut = _incomplete_escape(text)
        if cut < len(text):
            text, self._held = text[:cut], text[cut:]
        return _ESCAPE.sub(_unescape, text) if "\\" in text else text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _incomplete_escape(text: str) -> int:
    """Where an escape that the end of ``text`` cuts short begins (``len(text)`` if none)."""
    n = len(text)
    i = text.rfind("\\", max(0, n - 6))
    if i < 0:
        return n
    j = i
    while j > 0 and text[j - 1] == "\\":
        j -= 1
    if (i - j) % 2:  # the last backslash is itself escaped
        return n
    complete = n - i >= 6 or (n - i >= 2 and text[i + 1] != "u")
    return n if complete else i


class FormDecoder:
    """Undoes ``application/x-www-form-urlencoded`` (``+`` and ``%XX``) on streamed bytes."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
            self._held = b""
        i = data.rfind(b"%", max(0, len(data) - 2))
        if i >= 0:
            data, self._held = data[:i], data[i:]
        return unquote_to_bytes(data.replace(b"+", b" "))

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


class TextDecoder:
    """Bytes of one body or part to text, by mode: plain UTF-8, JSON, or form-encoded."""

    __slots__ = ("_form", "_json", "_utf8")

    def __init__(self, mode: TextMode) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._form = FormDecoder() if mode == "form" else None
        self._json = (JsonUnescaper(), JsonUnescaper()) if mode == "json" else None

    def feed(self, data: bytes) -> str:
        if self._form is not None:
            data = self._form.feed(data)
        return self._unescape(self._utf8.decode(data), final=False)

    def flush(self) -> str:
        tail = self._form.flush() if self._form is not None else b""
        return self._unescape(self._utf8.decode(tail, final=True), final=True)

    def _unescape(self, text: str, *, final: bool) -> str:
        if self._json is None:
            return text
        outer, inner = self._json
        text = outer.feed(text)
        if final:
            text += outer.flush()
        text = inner.feed(text)
        if final:
            text += inner.flush()
        return text
