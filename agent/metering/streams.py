"""Incremental body framing: SSE, JSON / JSON lines / JSON arrays, AWS event stream; sniffed.

Each framer takes chunks as they arrive and hands an `EventSink` one event at a time: the values
found at the sink's wanted paths, plus the event's name (SSE ``event:`` field or the event-stream
``:event-type`` header). Memory held is bounded: an event's data up to 16 KiB (parsed whole,
which is fast for the thousands of tiny events of a stream), beyond that a `JsonScanner`'s
state; a line's field name, an event name, an event-stream frame's headers. A JSON body is
always scanned, never gathered.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Mapping
from typing import Literal, Protocol

from agent.metering.exceptions import ChecksumError, MalformedBodyError, TruncatedBodyError
from agent.metering.jsonscan import INVALID, JsonScanner, OnString, Path, loads_or_invalid

BodyKind = Literal["empty", "json", "json-array", "sse", "eventstream", "raw"]


class EventSink(Protocol):
    """What a framer feeds: a provider parser."""

    @property
    def wanted(self) -> frozenset[Path]: ...

    @property
    def string_hook(self) -> OnString | None: ...

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None: ...

    def on_raw(self, chunk: bytes) -> bool:
        """Take bytes of a body that is not JSON, SSE or an event stream; False if unusable."""
        ...


class _Collector:
    """Gathers one event's wanted values and hands them to the sink when the event ends."""

    __slots__ = ("scanner", "sink", "values")

    def __init__(
        self, sink: EventSink, *, event_depth: int = 0, multi: bool = False, self_emit: bool = False
    ) -> None:
        self.sink = sink
        self.values: dict[Path, object] = {}
        self.scanner = JsonScanner(
            sink.wanted,
            self._on_value,
            on_event_end=self._on_end if self_emit else None,
            on_string=sink.string_hook,
            event_depth=event_depth,
            multi=multi,
        )

    def _on_value(self, path: Path, value: object) -> None:
        self.values[path] = value

    def _on_end(self) -> None:
        self.emit(None)

    def emit(self, name: str | None) -> None:
        values, self.values = self.values, {}
        self.sink.on_event(name, values)

    def restart(self) -> None:
        self.scanner.reset()
        self.values = {}


class _EventPayload:
    """One event's JSON data. Small events are parsed whole by `json.loads` (C speed: a stream
    has thousands of tiny events); an event that grows past ``FAST_MAX`` switches to the
    streaming scanner, so memory stays bounded. Either way only wanted values reach the sink.
    """

    __slots__ = ("_buf", "_c", "_streaming", "sink")

    FAST_MAX = 16 * 1024

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self._c = _Collector(sink)
        self._buf = bytearray()
        self._streaming = False

    def feed(self, chunk: bytes) -> None:
        if self._streaming or self.sink.string_hook is not None:
            self._streaming = True
            self._c.scanner.feed(chunk)
        elif len(self._buf) + len(chunk) <= self.FAST_MAX:
            self._buf += chunk
        else:
            self._streaming = True
            held = bytes(self._buf)
            self._buf.clear()
            self._c.scanner.feed(held)
            self._c.scanner.feed(chunk)

    def end(self, name: str | None) -> None:
        """The event is complete: hand its values over (raises if its JSON is bad)."""
        if self._streaming:
            self._c.scanner.finish()
            self._c.emit(name)
            return
        doc = loads_or_invalid(self._buf) if self._buf.strip() else None
        if doc is INVALID:
            # Let the scanner say precisely what is wrong (truncated or malformed).
            self._streaming = True
            self._c.scanner.feed(bytes(self._buf))
            self._c.scanner.finish()
            raise MalformedBodyError("JSON: event data is not valid JSON")
        values: dict[Path, object] = {}
        if doc is not None:
            for path in self.sink.wanted:
                _find(doc, path, 0, values, path)
        self.sink.on_event(name, values)

    def restart(self) -> None:
        self._c.restart()
        self._buf.clear()
        self._streaming = False


def _find(node: object, path: Path, i: int, out: dict[Path, object], full: Path) -> None:
    """Store the value at ``path`` (None steps into every array element; the last one wins)."""
    if i == len(path):
        out[full] = node
        return
    step = path[i]
    if step is None:
        if isinstance(node, list):
            for item in node:
                _find(item, path, i + 1, out, full)
    elif isinstance(node, dict) and step in node:
        _find(node[step], path, i + 1, out, full)


# ---------------------------------------------------------------------------------- JSON


class JsonEvents:
    """A JSON body: one document or JSON lines (``event_depth=0``), or an array of events (1)."""

    __slots__ = ("_c",)

    def __init__(self, sink: EventSink, *, event_depth: int) -> None:
        self._c = _Collector(sink, event_depth=event_depth, multi=event_depth == 0, self_emit=True)

    @property
    def documents(self) -> int:
        return self._c.scanner.documents

    def feed(self, chunk: bytes) -> None:
        self._c.scanner.feed(chunk)

    def finish(self) -> None:
        self._c.scanner.finish()


# ---------------------------------------------------------------------------------- SSE

_FIELD_MAX = 16  # "data", "event", "id", "retry": longer names are unknown fields anyway
_EVENT_NAME_MAX = 128
_DONE_MARK = b"[DONE]"
_FIELD_END = re.compile(rb"[:\r\n]")
_EOL = re.compile(rb"[\r\n]")

# What an event's data turned out to be.
_UNDECIDED, _JSON_DATA, _DONE_DATA, _OTHER_DATA = range(4)
# Which field the current line carries.
_IGNORED_FIELD, _DATA_FIELD, _EVENT_FIELD = range(3)


class SseDecoder:
    """Server-sent events per the WHATWG HTML spec, streamed: data is never held whole.

    Lines end in CR, LF or CRLF (a CR ending one chunk and an LF starting the next are one line
    end). ``data:`` lines of one event are joined with LF; a blank line dispatches the event.
    Data that is not JSON (OpenAI's ``[DONE]``, keep-alive text) is skipped and counted.
    """

    __slots__ = (
        "_after_cr",
        "_data_lines",
        "_event",
        "_field",
        "_field_kind",
        "_head",
        "_in_value",
        "_json",
        "_payload",
        "_skip_space",
        "events",
        "skipped",
    )

    def __init__(self, sink: EventSink) -> None:
        self._json = _EventPayload(sink)
        self._field = bytearray()
        self._event = bytearray()
        self._head = bytearray()  # leading data bytes, held only until the payload kind is known
        self._in_value = False
        self._skip_space = False  # a ':' ended the last chunk: one leading space may follow
        self._field_kind = _IGNORED_FIELD
        self._data_lines = 0
        self._payload = _UNDECIDED
        self._after_cr = False
        self.events = 0  # events handed to the sink
        self.skipped = 0  # events without JSON data, or cut off by the end of the body

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        if self._after_cr:
            self._after_cr = False
            if n and data[0] == 0x0A:
                pos = 1
        while pos < n:
            pos = self._read_value(data, pos) if self._in_value else self._read_field(data, pos)

    def finish(self) -> None:
        """End of body: a last event that lacks its blank line is dispatched if complete."""
        if self._in_value or self._field:
            self._end_line()
        if self._data_lines:
            try:
                self._dispatch()
            except TruncatedBodyError:
                # Cut inside its last event (client gone, timeout): the SSE spec discards an
                # unterminated event. Counted here; the Usage simply lacks what it would carry.
                self.skipped += 1
                self._reset_event()

    def _read_field(self, data: bytes, pos: int) -> int:
        m = _FIELD_END.search(data, pos)
        end = len(data) if m is None else m.start()
        if len(self._field) + (end - pos) <= _FIELD_MAX:
            self._field += data[pos:end]
        else:
            self._field[_FIELD_MAX:] = b"?"  # too long for a known name; keep it bounded
        if m is None:
            return end
        if data[end] == 0x3A:  # ':'
            self._start_value()
            if end + 1 < len(data) and data[end + 1] == 0x20:
                return end + 2
            self._skip_space = end + 1 == len(data)
            return end + 1
        if self._field:  # a field name alone on its line: the value is empty
            self._start_value()
            self._end_line()
        elif self._data_lines:
            self._dispatch()
        else:
            self._reset_event()
        return self._line_end(data, end)

    def _read_value(self, data: bytes, pos: int) -> int:
        if self._skip_space:
            self._skip_space = False
            if data[pos] == 0x20:
                pos += 1
                if pos == len(data):
                    return pos
        m = _EOL.search(data, pos)
        end = len(data) if m is None else m.start()
        if end > pos:
            self._value_bytes(data[pos:end])
        if m is None:
            return end
        self._end_line()
        return self._line_end(data, end)

    def _line_end(self, data: bytes, i: int) -> int:
        if data[i] == 0x0D:
            if i + 1 < len(data):
                return i + 2 if data[i + 1] == 0x0A else i + 1
            self._after_cr = True
        return i + 1

    def _start_value(self) -> None:
        name = bytes(self._field)
        self._field.clear()
        self._in_value = True
        self._skip_space = False
        if name == b"data":
            self._field_kind = _DATA_FIELD
            if self._data_lines:
                self._value_bytes(b"\n")
            self._data_lines += 1
        elif name == b"event":
            self._field_kind = _EVENT_FIELD
            self._event.clear()
        else:
            self._field_kind = _IGNORED_FIELD  # comment (empty name), id, retry, unknown

    def _end_line(self) -> None:
        self._field.clear()
        self._in_value = False
        self._skip_space = False
        self._field_kind = _IGNORED_FIELD

    def _value_bytes(self, chunk: bytes) -> None:
        if self._field_kind == _EVENT_FIELD:
            if len(self._event) + len(chunk) <= _EVENT_NAME_MAX:
                self._event += chunk
        elif self._field_kind == _DATA_FIELD:
            self._payload_bytes(chunk)

    def _payload_bytes(self, chunk: bytes) -> None:
        if self._payload == _JSON_DATA:
            self._json.feed(chunk)
            return
        if self._payload != _UNDECIDED:
            return
        self._head += chunk
        head = bytes(self._head).lstrip()
        if not head:
            return
        if head[:1] == b"[":
            if len(head) < len(_DONE_MARK) and _DONE_MARK.startswith(head):
                return  # "[DO" so far: could still be [DONE]
            if head.startswith(_DONE_MARK):
                self._payload = _DONE_DATA
                self._head.clear()
                return
        elif head[:1] not in (b"{", b'"'):
            self._payload = _OTHER_DATA
            self._head.clear()
            return
        self._payload = _JSON_DATA
        self._head.clear()
        self._json.feed(head)

    def _dispatch(self) -> None:
        if self._payload == _UNDECIDED and self._head.strip():
            # Ended while it still looked like "[DONE]" might follow: let the scanner judge it.
            self._payload = _JSON_DATA
            self._json.feed(bytes(self._head))
        if self._payload == _JSON_DATA:
            self._json.end(self._event.decode("utf-8", "replace") or None)
            self.events += 1
        else:
            self.skipped += 1
        self._reset_event()

    def _reset_event(self) -> None:
        self._json.restart()
        self._head.clear()
        self._event.clear()
        self._data_lines = 0
        self._payload = _UNDECIDED


# ------------------------------------------------------------------------------ AWS event stream

_PRELUDE = struct.Struct(">III")
_MAX_FRAME = 16 * 1024 * 1024  # the event-stream format caps a message at 16 MiB
_MAX_HEADERS = 128 * 1024
_MIN_FRAME = 16  # prelude (12) + message CRC (4)

# Header value types of the event-stream encoding, with fixed sizes where they have one.
_FIXED_SIZE = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_TYPE_BYTES, _TYPE_STRING = 6, 7
_BAD_HEADERS = "\x00bad"  # placeholder message type while a frame's CRC is still unchecked


def parse_eventstream_headers(raw: bytes) -> dict[str, str]:
    """Decode an event-stream header block; only string-valued headers are returned."""
    headers: dict[str, str] = {}
    pos, n = 0, len(raw)
    try:
        while pos < n:
            name_len = raw[pos]
            name = raw[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            vtype = raw[pos]
            pos += 1
            if vtype in (_TYPE_BYTES, _TYPE_STRING):
                (vlen,) = struct.unpack_from(">H", raw, pos)
                value = raw[pos + 2 : pos + 2 + vlen]
                pos += 2 + vlen
                if vtype == _TYPE_STRING:
                    headers[name] = value.decode("utf-8")
            elif vtype in _FIXED_SIZE:
                pos += _FIXED_SIZE[vtype]
            else:
                raise MalformedBodyError("event stream: unknown header value type")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise MalformedBodyError("event stream: malformed header block") from None
    if pos != n:
        raise MalformedBodyError("event stream: header block overruns its length")
    return headers


class EventStreamDecoder:
    """AWS ``application/vnd.amazon.eventstream`` frames, CRC-checked, payload streamed.

    Frame: total length, headers length, prelude CRC32 (all big-endian u32), headers, payload,
    message CRC32 over everything before it. A frame's payload reaches the sink's scanner as it
    arrives; the frame's event is emitted only once its message CRC has been verified.
    """

    __slots__ = ("_buf", "_crc", "_headers", "_json", "_need", "_payload_left", "_phase", "events")

    _PRELUDE_PHASE, _HEADERS_PHASE, _PAYLOAD_PHASE, _CRC_PHASE = range(4)

    def __init__(self, sink: EventSink) -> None:
        self._json = _EventPayload(sink)
        self._buf = bytearray()
        self._phase = self._PRELUDE_PHASE
        self._need = _PRELUDE.size
        self._crc = 0
        self._payload_left = 0
        self._headers: dict[str, str] = {}
        self.events = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._phase == self._PAYLOAD_PHASE:
                take = min(self._payload_left, len(view))
                part = bytes(view[:take])
                view = view[take:]
                self._crc = zlib.crc32(part, self._crc)
                self._payload_left -= take
                if self._is_json_event():
                    self._json.feed(part)
                if not self._payload_left:
                    self._phase, self._need = self._CRC_PHASE, 4
                continue
            take = min(self._need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                self._complete_part()

    def finish(self) -> None:
        if self._buf or self._phase != self._PRELUDE_PHASE:
            raise TruncatedBodyError("event stream ends inside a frame")

    def _is_json_event(self) -> bool:
        return self._headers.get(":message-type", "event") == "event"

    def _complete_part(self) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        if self._phase == self._PRELUDE_PHASE:
            total, headers_len, prelude_crc = _PRELUDE.unpack(raw)
            if zlib.crc32(raw[:8]) != prelude_crc:
                raise ChecksumError("event stream: prelude CRC mismatch")
            if not _MIN_FRAME <= total <= _MAX_FRAME or headers_len > min(
                _MAX_HEADERS, total - _MIN_FRAME
            ):
                raise MalformedBodyError("event stream: impossible frame lengths")
            self._crc = zlib.crc32(raw)
            self._payload_left = total - _MIN_FRAME - headers_len
            self._phase, self._need = self._HEADERS_PHASE, headers_len
            if headers_len == 0:
                self._headers = {}
                self._start_payload()
        elif self._phase == self._HEADERS_PHASE:
            self._crc = zlib.crc32(raw, self._crc)
            try:
                self._headers = parse_eventstream_headers(raw)
            except MalformedBodyError:
                # Judge after the message CRC: a corrupted frame is a checksum error first.
                self._headers = {":message-type": _BAD_HEADERS}
            self._start_payload()
        else:
            (message_crc,) = struct.unpack(">I", raw)
            if message_crc != self._crc:
                raise ChecksumError("event stream: message CRC mismatch")
            self._end_frame()

    def _start_payload(self) -> None:
        self._json.restart()
        if self._payload_left:
            self._phase = self._PAYLOAD_PHASE
        else:
            self._phase, self._need = self._CRC_PHASE, 4

    def _end_frame(self) -> None:
        headers = self._headers
        self._phase, self._need = self._PRELUDE_PHASE, _PRELUDE.size
        if headers.get(":message-type") == _BAD_HEADERS:
            raise MalformedBodyError("event stream: malformed header block")
        if self._is_json_event():
            self._json.end(headers.get(":event-type"))
            self.events += 1
        else:
            # Exceptions and errors name only their type; their message text is not kept.
            kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
            self._json.sink.on_event(f"exception:{kind}", {})
        self._headers = {}


# ---------------------------------------------------------------------------------- sniffing

_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
_SNIFF_MAX = 8


class ResponseBody:
    """Decides a body's framing from its first bytes, then streams it to the right framer.

    Sniffing, not Content-Type: the addon hands us bytes before we see headers, and servers
    label streams loosely (Gemini sends JSON arrays as application/json, some proxies strip
    text/event-stream). An event stream starts with a zero byte (frames are < 16 MiB).
    """

    __slots__ = ("_framer", "_head", "_sink", "kind", "raw_rejected")

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._head = bytearray()
        self._framer: JsonEvents | SseDecoder | EventStreamDecoder | None = None
        self.kind: BodyKind = "empty"
        self.raw_rejected = False  # a raw body the sink could not use

    @property
    def stream_like(self) -> bool:
        """True when the body arrived as several events (SSE, frames, JSON lines, array)."""
        framer = self._framer
        if isinstance(framer, SseDecoder | EventStreamDecoder):
            return True
        return isinstance(framer, JsonEvents) and (
            self.kind == "json-array" or framer.documents > 1
        )

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.kind == "raw":
            self._raw(chunk)
            return
        if self._framer is None:
            self._head += chunk
            if not self._sniff(final=False):
                return
            chunk = bytes(self._head)
            self._head.clear()
        if self._framer is not None:
            self._framer.feed(chunk)
        else:
            self._raw(chunk)

    def _raw(self, chunk: bytes) -> None:
        if not self._sink.on_raw(chunk):
            self.raw_rejected = True

    def finish(self) -> None:
        if self._framer is None and self._head:
            self._sniff(final=True)
            chunk = bytes(self._head)
            self._head.clear()
            if self._framer is not None:
                self._framer.feed(chunk)
            elif self.kind == "raw":
                self._raw(chunk)
        if self._framer is not None:
            self._framer.finish()

    def _sniff(self, *, final: bool) -> bool:
        head = bytes(self._head)
        if head[:1] in (b"\x00", b"\x01"):
            self.kind, self._framer = "eventstream", EventStreamDecoder(self._sink)
            return True
        text = head.lstrip()
        if not text:
            return final
        first = text[:1]
        if first == b"{":
            self.kind, self._framer = "json", JsonEvents(self._sink, event_depth=0)
            return True
        if first == b"[":
            self.kind, self._framer = "json-array", JsonEvents(self._sink, event_depth=1)
            return True
        if any(text.startswith(s) for s in _SSE_STARTS):
            self.kind, self._framer = "sse", SseDecoder(self._sink)
            return True
        if not final and len(text) < _SNIFF_MAX and any(s.startswith(text) for s in _SSE_STARTS):
            return False  # "dat" so far: wait for more bytes
        self.kind = "raw"
        return True
