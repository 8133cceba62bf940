"""Server-sent events framing (WHATWG HTML spec), streamed one event at a time."""

from __future__ import annotations

import re

from agent.metering.events import EventPayload, EventSink
from agent.metering.exceptions import TruncatedBodyError

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
        self._json = EventPayload(sink)
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
