"""Events between the framers and the provider parsers: the sink protocol and per-event payloads.

A framer (JSON, SSE, AWS event stream) cuts a body into events; the `EventPayload` of each event
finds the values at the sink's wanted paths and hands them over when the event ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from agent.metering.exceptions import MalformedBodyError
from agent.metering.jsonscan import (
    FAST_MAX,
    INVALID,
    JsonScanner,
    OnString,
    Path,
    find_path,
    loads_or_invalid,
)


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


class Collector:
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


class EventPayload:
    """One event's JSON data. Small events are parsed whole by `json.loads` (C speed: a stream
    has thousands of tiny events); an event that grows past `FAST_MAX` switches to the
    streaming scanner, so memory stays bounded. Either way only wanted values reach the sink.
    """

    __slots__ = ("_buf", "_c", "_streaming", "sink")

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self._c = Collector(sink)
        self._buf = bytearray()
        self._streaming = False

    def feed(self, chunk: bytes) -> None:
        if self._streaming or self.sink.string_hook is not None:
            self._streaming = True
            self._c.scanner.feed(chunk)
        elif len(self._buf) + len(chunk) <= FAST_MAX:
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
                find_path(doc, path, 0, values, path)
        self.sink.on_event(name, values)

    def restart(self) -> None:
        self._c.restart()
        self._buf.clear()
        self._streaming = False
