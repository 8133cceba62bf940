"""Incremental JSON scanner: walks a body chunk by chunk and keeps only values at wanted paths.

Bodies of AI calls are mostly prompt and completion text. The scanner never builds them: it tracks
nesting and string boundaries, skips string contents and unwanted subtrees with C-speed regex
searches, and copies out only the raw bytes of values whose path is wanted (a usage object, a
model name). Memory held is the nesting stack plus at most ``max_capture`` bytes.

A path is a tuple of object keys; ``None`` stands for "an element of an array". Paths are
relative to an *event root*: the top-level value (``event_depth=0``; with ``multi=True`` several
may follow one another, as in JSON lines) or each element of a top-level array
(``event_depth=1``, Gemini's JSON-array streaming).

Structure is checked (brackets, commas, colons, strings); the spelling of numbers and literals is
checked only where a value is captured, because only there does it matter.

A whole object or array that arrives in one chunk of at most `FAST_MAX` bytes (most API
requests and non-streamed answers) is parsed by `json.loads` instead, which is C and an order
of magnitude faster; the wanted values are picked out of it the same way and the rest is
dropped at once. A chunk that does not parse (the first part of a larger body) goes to the
scanner, so memory stays bounded either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from agent.metering.exceptions import MalformedBodyError, TruncatedBodyError

Path = tuple[str | None, ...]
OnValue = Callable[[Path, object], None]
OnString = Callable[[str | None, int], None]

DEFAULT_MAX_CAPTURE = 64 * 1024
FAST_MAX = 16 * 1024  # a chunk up to this size holding one whole document is parsed whole
MAX_KEY = 256  # longer keys are never wanted; their bytes are not kept

_NON_WS = re.compile(rb"[^ \t\r\n]")
_STR_SPECIAL = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb'[ \t\r\n,\]}:\[{"]')
_SKIP_NEXT = re.compile(rb'[\[\]{}"]')
_SCALAR_START = frozenset(b"-0123456789tfn")
_UNMATCHABLE_KEY = "\x00"

_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 0x7B, 0x7D, 0x5B, 0x5D
_QUOTE, _BACKSLASH, _COMMA, _COLON = 0x22, 0x5C, 0x2C, 0x3A

# What the scanner expects next outside strings and scalars.
_TOP, _VALUE, _ARR_FIRST, _OBJ_FIRST, _OBJ_KEY, _AFTER_KEY, _AFTER_VALUE, _DONE = range(8)
# Which kind of string the scanner is inside.
_NO_STR, _VALUE_STR, _KEY_STR, _SKIPPED_STR = range(4)


INVALID = object()  # what `loads_or_invalid` returns for bad JSON


def loads_or_invalid(raw: bytes | bytearray) -> object:
    """`json.loads`, or `INVALID`. Callers raise outside any ``except`` block: a chained
    JSONDecodeError would carry the document, which may be someone's prompt."""
    try:
        return json.loads(raw)
    except ValueError:
        return INVALID


def find_path(node: object, path: Path, i: int, out: dict[Path, object], full: Path) -> None:
    """Store the value at ``path`` (None steps into every array element; the last one wins)."""
    if i == len(path):
        out[full] = node
        return
    step = path[i]
    if step is None:
        if isinstance(node, list):
            for item in node:
                find_path(item, path, i + 1, out, full)
    elif isinstance(node, dict) and step in node:
        find_path(node[step], path, i + 1, out, full)


class JsonScanner:
    """Feed bytes with `feed`, end with `finish`; wanted values arrive through ``on_value``."""

    __slots__ = (
        "_cap",
        "_cap_over",
        "_cap_path",
        "_cap_start",
        "_docs",
        "_esc",
        "_event_depth",
        "_fast_limit",
        "_keybuf",
        "_keys",
        "_kinds",
        "_max_capture",
        "_multi",
        "_on_event_end",
        "_on_string",
        "_on_value",
        "_prefixes",
        "_scalar",
        "_skip",
        "_state",
        "_str",
        "_str_key",
        "_wanted",
        "oversize",
    )

    def __init__(
        self,
        wanted: Iterable[Path],
        on_value: OnValue,
        *,
        on_event_end: Callable[[], None] | None = None,
        on_string: OnString | None = None,
        event_depth: int = 0,
        multi: bool = False,
        max_capture: int = DEFAULT_MAX_CAPTURE,
    ) -> None:
        self._wanted = frozenset(wanted)
        self._prefixes = frozenset(p[:i] for p in self._wanted for i in range(len(p)))
        self._on_value = on_value
        self._on_event_end = on_event_end
        self._on_string = on_string
        self._event_depth = event_depth
        self._multi = multi
        self._max_capture = max_capture
        # Whole-chunk parsing: not for string counting (it needs every string's key and
        # size) nor arrays of events; never for a document larger than a capture may be.
        fast = on_string is None and event_depth == 0
        self._fast_limit = min(FAST_MAX, max_capture) if fast else -1
        self.oversize = 0  # wanted values dropped because they were larger than max_capture
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far; the next byte starts a new document."""
        self._kinds = bytearray()  # one opening bracket per open container
        self._keys: list[str | None] = []  # current key per open container (None for arrays)
        self._state = _TOP
        self._str = _NO_STR
        self._str_key: str | None = None
        self._esc = False
        self._scalar = False
        self._keybuf = bytearray()
        self._skip = bytearray()  # open brackets inside a skipped or captured container
        self._cap: bytearray | None = None
        self._cap_path: Path = ()
        self._cap_start = 0
        self._cap_over = False
        self._docs = 0

    @property
    def documents(self) -> int:
        """How many top-level values have been completed."""
        return self._docs

    @property
    def idle(self) -> bool:
        """True when no value has started since the last complete one (or since reset)."""
        return (
            self._state in (_TOP, _DONE)
            and not self._kinds
            and not self._skip
            and self._str == _NO_STR
            and not self._scalar
        )

    def feed(self, data: bytes) -> None:
        """Scan the next chunk of the body."""
        if self._fast_limit >= len(data) and self._state == _TOP and self._whole(data):
            return
        self._cap_start = 0
        pos, n = 0, len(data)
        while pos < n:
            if self._str:
                pos = self._in_string(data, pos)
            elif self._scalar:
                m = _SCALAR_END.search(data, pos)
                if m is None:
                    pos = n
                else:
                    pos = m.start()
                    self._scalar = False
                    self._value_done(data, pos)
            elif self._skip:
                pos = self._skipping(data, pos)
            else:
                m = _NON_WS.search(data, pos)
                if m is None:
                    break
                pos = self._token(data, m.start())
        if self._cap is not None:
            self._cap_append(data, self._cap_start, n)
            self._cap_start = 0

    def _whole(self, data: bytes) -> bool:
        """Take ``data`` as one complete document if it is one; False leaves it to the scanner.

        Only between documents (nothing open), and only for an object or an array: a number
        could go on in the next chunk. The values are the ones the scanner would find (the
        last of repeated keys wins, as in `json.loads`); callers keep them by path.
        """
        if self._kinds or self._skip or self._str or self._scalar:
            return False
        if data.lstrip()[:1] not in (b"{", b"["):
            return False
        doc = loads_or_invalid(data)
        if doc is INVALID:
            return False  # a part of a larger document, or bad JSON: the scanner says which
        found: dict[Path, object] = {}
        for path in self._wanted:
            find_path(doc, path, 0, found, path)
        del doc
        for path, value in found.items():
            self._on_value(path, value)
        self._docs += 1
        self._state = _TOP if self._multi else _DONE
        if self._on_event_end is not None:
            self._on_event_end()
        return True

    def finish(self) -> None:
        """Declare the end of the body; raises `TruncatedBodyError` if a value is still open."""
        if self._scalar and not self._kinds:
            # A top-level number or literal ends with the body.
            self._scalar = False
            self._value_done(b"", 0)
        if not self.idle:
            raise TruncatedBodyError("JSON body ends inside a value")

    # ------------------------------------------------------------------ outside strings

    def _token(self, data: bytes, i: int) -> int:
        c = data[i]
        st = self._state
        if st == _AFTER_KEY:
            if c != _COLON:
                raise MalformedBodyError("JSON: expected ':' after an object key")
            self._state = _VALUE
            return i + 1
        if st == _AFTER_VALUE:
            if c == _COMMA:
                self._state = _OBJ_KEY if self._kinds[-1] == _LBRACE else _VALUE
                return i + 1
            if c in (_RBRACE, _RBRACKET):
                return self._close(data, i, c)
            raise MalformedBodyError("JSON: expected ',' or a closing bracket")
        if st in (_OBJ_FIRST, _OBJ_KEY):
            if c == _QUOTE:
                self._str = _KEY_STR
                self._keybuf.clear()
                return i + 1
            if c == _RBRACE and st == _OBJ_FIRST:
                return self._close(data, i, c)
            raise MalformedBodyError("JSON: expected an object key")
        if st == _ARR_FIRST and c == _RBRACKET:
            return self._close(data, i, c)
        if st == _DONE:
            raise MalformedBodyError("JSON: data after the end of the value")
        return self._value_start(data, i, c)

    def _value_start(self, data: bytes, i: int, c: int) -> int:
        depth = len(self._kinds)
        if depth < self._event_depth:
            if c != _LBRACKET:
                raise MalformedBodyError("JSON: expected an array of events")
            self._push(c)
            return i + 1
        path = tuple(self._keys[self._event_depth :])
        wanted = path in self._wanted
        if c in (_LBRACE, _LBRACKET):
            if wanted:
                self._begin_capture(path, i)
                self._skip.append(c)
            elif self._on_string is None and path not in self._prefixes:
                self._skip.append(c)
            else:
                self._push(c)
            return i + 1
        if c == _QUOTE:
            if wanted:
                self._begin_capture(path, i)
            elif self._on_string is not None:
                self._str_key = self._nearest_key()
            self._str = _VALUE_STR
            return i + 1
        if c in _SCALAR_START:
            if wanted:
                self._begin_capture(path, i)
            self._scalar = True
            return i + 1
        raise MalformedBodyError("JSON: unexpected byte where a value should start")

    def _push(self, c: int) -> None:
        self._kinds.append(c)
        self._keys.append(None)
        self._state = _OBJ_FIRST if c == _LBRACE else _ARR_FIRST

    def _close(self, data: bytes, i: int, c: int) -> int:
        opener = self._kinds.pop()
        self._keys.pop()
        if (c == _RBRACE) != (opener == _LBRACE):
            raise MalformedBodyError("JSON: mismatched closing bracket")
        self._value_done(data, i + 1)
        return i + 1

    def _value_done(self, data: bytes, end: int) -> None:
        depth = len(self._kinds)
        if self._cap is not None:
            self._finish_capture(data, end)
        if depth:
            self._state = _AFTER_VALUE
        else:
            self._docs += 1
            self._state = _TOP if self._multi else _DONE
        if depth == self._event_depth and self._on_event_end is not None:
            self._on_event_end()

    def _nearest_key(self) -> str | None:
        for key in reversed(self._keys):
            if key is not None:
                return key
        return None

    # ------------------------------------------------------------------ strings and skipping

    def _in_string(self, data: bytes, pos: int) -> int:
        n = len(data)
        start = pos
        while True:
            if self._esc:
                if pos >= n:
                    break
                pos += 1
                self._esc = False
            m = _STR_SPECIAL.search(data, pos)
            if m is None:
                pos = n
                break
            i = m.start()
            if data[i] == _BACKSLASH:
                if i + 1 < n:
                    pos = i + 2
                    continue
                self._esc = True
                pos = n
                break
            self._string_bytes(data, start, i)
            self._string_end(data, i + 1)
            return i + 1
        self._string_bytes(data, start, pos)
        return pos

    def _string_bytes(self, data: bytes, a: int, b: int) -> None:
        kind = self._str
        if kind == _KEY_STR:
            if len(self._keybuf) <= MAX_KEY:
                self._keybuf += data[a:b]
        elif kind == _VALUE_STR and self._on_string is not None and self._cap is None and b > a:
            self._on_string(self._str_key, b - a)

    def _string_end(self, data: bytes, end: int) -> None:
        kind = self._str
        self._str = _NO_STR
        if kind == _KEY_STR:
            self._keys[-1] = self._decode_key()
            self._state = _AFTER_KEY
        elif kind == _VALUE_STR:
            self._value_done(data, end)

    def _decode_key(self) -> str:
        raw = bytes(self._keybuf)
        self._keybuf.clear()
        if len(raw) > MAX_KEY:
            return _UNMATCHABLE_KEY
        if b"\\" not in raw:
            return raw.decode("utf-8", "replace")
        key = loads_or_invalid(b'"' + raw + b'"')
        if key is INVALID:
            raise MalformedBodyError("JSON: bad escape in an object key")
        return key if isinstance(key, str) else _UNMATCHABLE_KEY

    def _skipping(self, data: bytes, pos: int) -> int:
        m = _SKIP_NEXT.search(data, pos)
        if m is None:
            return len(data)
        i = m.start()
        c = data[i]
        if c == _QUOTE:
            self._str = _SKIPPED_STR
        elif c in (_LBRACE, _LBRACKET):
            self._skip.append(c)
        else:
            opener = self._skip.pop()
            if (c == _RBRACE) != (opener == _LBRACE):
                raise MalformedBodyError("JSON: mismatched closing bracket")
            if not self._skip:
                self._value_done(data, i + 1)
        return i + 1

    # ------------------------------------------------------------------ captures

    def _begin_capture(self, path: Path, i: int) -> None:
        self._cap = bytearray()
        self._cap_path = path
        self._cap_start = i
        self._cap_over = False

    def _cap_append(self, data: bytes, a: int, b: int) -> None:
        cap = self._cap
        if cap is None or self._cap_over:
            return
        if len(cap) + (b - a) > self._max_capture:
            # Bounded memory beats completeness: a "usage" this large is not a usage object.
            self._cap_over = True
            cap.clear()
            return
        cap += data[a:b]

    def _finish_capture(self, data: bytes, end: int) -> None:
        self._cap_append(data, self._cap_start, end)
        cap, self._cap = self._cap, None
        if self._cap_over or cap is None:
            self.oversize += 1
            return
        value = loads_or_invalid(bytes(cap))
        if value is INVALID:
            raise MalformedBodyError("JSON: a usage field is not valid JSON")
        self._on_value(self._cap_path, value)
