"""Body framing: sniffs a response body's format and streams it to the right framer.

Formats: one JSON document, JSON lines, a JSON array of events (Gemini), server-sent events
(`sse`), AWS event stream (`eventstream`). Memory held is bounded: an event's data up to 16 KiB
(parsed whole, which is fast for the thousands of tiny events of a stream), beyond that a
`JsonScanner`'s state; a JSON body is never gathered (a chunk that happens to hold all of a
small one is parsed whole, see `jsonscan`).
"""

from __future__ import annotations

from typing import Literal

from agent.metering.events import Collector, EventSink
from agent.metering.eventstream import EventStreamDecoder
from agent.metering.sse import SseDecoder

BodyKind = Literal["empty", "json", "json-array", "sse", "eventstream", "raw"]


# ---------------------------------------------------------------------------------- JSON


class JsonEvents:
    """A JSON body: one document or JSON lines (``event_depth=0``), or an array of events (1)."""

    __slots__ = ("_c",)

    def __init__(self, sink: EventSink, *, event_depth: int) -> None:
        self._c = Collector(sink, event_depth=event_depth, multi=event_depth == 0, self_emit=True)

    @property
    def documents(self) -> int:
        return self._c.scanner.documents

    def feed(self, chunk: bytes) -> None:
        self._c.scanner.feed(chunk)

    def finish(self) -> None:
        self._c.scanner.finish()


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
