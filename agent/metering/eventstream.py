"""AWS event-stream framing (vnd.amazon.eventstream): CRC32-checked frames, streamed payloads."""

from __future__ import annotations

import struct
import zlib

from agent.metering.events import EventPayload, EventSink
from agent.metering.exceptions import ChecksumError, MalformedBodyError, TruncatedBodyError

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


# Where in a frame the decoder is.
_PRELUDE_PHASE, _HEADERS_PHASE, _PAYLOAD_PHASE, _CRC_PHASE = range(4)


class EventStreamDecoder:
    """AWS ``application/vnd.amazon.eventstream`` frames, CRC-checked, payload streamed.

    Frame: total length, headers length, prelude CRC32 (all big-endian u32), headers, payload,
    message CRC32 over everything before it. A frame's payload reaches the sink's scanner as it
    arrives; the frame's event is emitted only once its message CRC has been verified.
    """

    __slots__ = ("_buf", "_crc", "_headers", "_json", "_need", "_payload_left", "_phase", "events")

    def __init__(self, sink: EventSink) -> None:
        self._json = EventPayload(sink)
        self._buf = bytearray()
        self._phase = _PRELUDE_PHASE
        self._need = _PRELUDE.size
        self._crc = 0
        self._payload_left = 0
        self._headers: dict[str, str] = {}
        self.events = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._phase == _PAYLOAD_PHASE:
                take = min(self._payload_left, len(view))
                part = bytes(view[:take])
                view = view[take:]
                self._crc = zlib.crc32(part, self._crc)
                self._payload_left -= take
                if self._is_json_event():
                    self._json.feed(part)
                if not self._payload_left:
                    self._phase, self._need = _CRC_PHASE, 4
                continue
            take = min(self._need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                self._complete_part()

    def finish(self) -> None:
        if self._buf or self._phase != _PRELUDE_PHASE:
            raise TruncatedBodyError("event stream ends inside a frame")

    def _is_json_event(self) -> bool:
        return self._headers.get(":message-type", "event") == "event"

    def _complete_part(self) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        if self._phase == _PRELUDE_PHASE:
            total, headers_len, prelude_crc = _PRELUDE.unpack(raw)
            if zlib.crc32(raw[:8]) != prelude_crc:
                raise ChecksumError("event stream: prelude CRC mismatch")
            if not _MIN_FRAME <= total <= _MAX_FRAME or headers_len > min(
                _MAX_HEADERS, total - _MIN_FRAME
            ):
                raise MalformedBodyError("event stream: impossible frame lengths")
            self._crc = zlib.crc32(raw)
            self._payload_left = total - _MIN_FRAME - headers_len
            self._phase, self._need = _HEADERS_PHASE, headers_len
            if headers_len == 0:
                self._headers = {}
                self._start_payload()
        elif self._phase == _HEADERS_PHASE:
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
            self._phase = _PAYLOAD_PHASE
        else:
            self._phase, self._need = _CRC_PHASE, 4

    def _end_frame(self) -> None:
        headers = self._headers
        self._phase, self._need = _PRELUDE_PHASE, _PRELUDE.size
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
