"""Body framing: SSE line handling, AWS event-stream frames and CRCs, and format sniffing."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterkit import converse_stream_body, event, frame, split

from agent.metering.eventstream import EventStreamDecoder, parse_eventstream_headers
from agent.metering.exceptions import ChecksumError, MalformedBodyError, TruncatedBodyError
from agent.metering.jsonscan import OnString, Path
from agent.metering.sse import SseDecoder
from agent.metering.streams import ResponseBody


class Sink:
    """Records what a framer hands over."""

    def __init__(self, wanted: set[Path] | None = None) -> None:
        self.wanted = frozenset(wanted or {("n",)})
        self.string_hook: OnString | None = None
        self.events: list[tuple[str | None, dict[Path, object]]] = []
        self.raw = b""

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        self.events.append((name, dict(values)))

    def on_raw(self, chunk: bytes) -> bool:
        self.raw += chunk
        return False


def sse(body: bytes, chunks: list[bytes] | None = None) -> tuple[Sink, SseDecoder]:
    sink = Sink()
    decoder = SseDecoder(sink)
    for chunk in chunks if chunks is not None else [body]:
        decoder.feed(chunk)
    decoder.finish()
    return sink, decoder


SSE_BODY = (
    b": keep-alive comment\n"
    b"retry: 3000\n"
    b"id: 7\n"
    b"event: first\n"
    b'data: {"n": 1, "text": "a\\nb"}\n'
    b"\n"
    b'data:{"n": 2}\n'  # no space after the colon
    b"\n"
    b"event: joined\n"
    b'data: {"n":\n'
    b"data:  3}\n"  # two spaces: one is the separator, one belongs to the data
    b"\n"
    b"data: [DONE]\n"
    b"\n"
    b"data: plain text keep-alive\n"
    b"\n"
)
SSE_EVENTS = [("first", {("n",): 1}), (None, {("n",): 2}), ("joined", {("n",): 3})]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_line_endings_and_fields(eol: bytes) -> None:
    sink, decoder = sse(SSE_BODY.replace(b"\n", eol))
    assert sink.events == SSE_EVENTS
    assert (decoder.events, decoder.skipped) == (3, 2)  # [DONE] and the plain text


@settings(max_examples=200, deadline=None)
@given(eol=st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts=st.lists(st.integers(0, 400)))
def test_sse_same_events_at_any_chunking(eol: bytes, cuts: list[int]) -> None:
    body = SSE_BODY.replace(b"\n", eol)
    sink, _ = sse(body, split(body, cuts))
    assert sink.events == SSE_EVENTS


def test_sse_every_single_byte_split_of_crlf() -> None:
    body = SSE_BODY.replace(b"\n", b"\r\n")
    sink, _ = sse(body, [body[i : i + 1] for i in range(len(body))])
    assert sink.events == SSE_EVENTS


def test_sse_last_event_without_blank_line_is_dispatched() -> None:
    sink, _ = sse(b'data: {"n": 1}\n\ndata: {"n": 2}')
    assert sink.events == [(None, {("n",): 1}), (None, {("n",): 2})]


def test_sse_cut_inside_last_event_is_discarded_and_counted() -> None:
    sink, decoder = sse(b'data: {"n": 1}\n\ndata: {"n": 2, "text": "CANARY-cut mid')
    assert sink.events == [(None, {("n",): 1})]
    assert decoder.skipped == 1


def test_sse_malformed_json_in_a_complete_event_raises() -> None:
    with pytest.raises(MalformedBodyError):
        sse(b'data: {"n": 1,, }\n\n')


def test_sse_large_event_streams_through_the_scanner() -> None:
    """An event larger than the fast-path buffer is scanned incrementally, same result."""
    text = "CANARY-" + "x" * 40_000
    body = b"data: " + json.dumps({"text": text, "n": 5}).encode() + b"\n\n"
    sink, _ = sse(body, split(body, range(0, len(body), 1000)))
    assert sink.events == [(None, {("n",): 5})]


def test_sse_data_that_starts_like_done_but_is_json() -> None:
    sink, _ = sse(b'data: [{"n": 1}]\n\n')
    assert sink.events == [(None, {})]  # valid JSON (an array), nothing wanted in it


def test_sse_event_name_is_bounded() -> None:
    sink, _ = sse(b"event: " + b"e" * 5000 + b'\ndata: {"n": 1}\n\n')
    assert sink.events == [(None, {("n",): 1})]


# ------------------------------------------------------------------ AWS event stream


def eventstream(body: bytes, chunks: list[bytes] | None = None) -> Sink:
    sink = Sink({("usage",), ("n",)})
    decoder = EventStreamDecoder(sink)
    for chunk in chunks if chunks is not None else [body]:
        decoder.feed(chunk)
    decoder.finish()
    return sink


CONVERSE_EVENTS = [
    "messageStart",
    "contentBlockDelta",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 1200), max_size=20))
def test_eventstream_frames_at_any_chunking(cuts: list[int]) -> None:
    body = converse_stream_body()
    sink = eventstream(body, split(body, cuts))
    assert [name for name, _ in sink.events] == CONVERSE_EVENTS
    assert sink.events[-1][1][("usage",)] == {
        "inputTokens": 30,
        "outputTokens": 628,
        "totalTokens": 2706,
        "cacheReadInputTokens": 2048,
        "cacheWriteInputTokens": 0,
    }


def test_eventstream_header_types() -> None:
    block = (
        b"\x02:a\x00"  # bool true
        b"\x02:b\x03\x00\x07"  # short
        b"\x02:c\x06\x00\x02ab"  # bytes: skipped
        b"\x02:d\x09"
        + b"u" * 16  # uuid
        + b"\x02:e\x07\x00\x03xyz"
    )
    assert parse_eventstream_headers(block) == {":e": "xyz"}
    with pytest.raises(MalformedBodyError):
        parse_eventstream_headers(b"\x02:a\x0f")  # unknown type
    with pytest.raises(MalformedBodyError):
        parse_eventstream_headers(b"\x02:e\x07\x00\x09xyz")  # value overruns the block


def test_eventstream_corrupted_prelude_crc() -> None:
    good = event("metadata", {"usage": {"inputTokens": 1}})
    bad = good[:8] + struct.pack(">I", struct.unpack(">I", good[8:12])[0] ^ 1) + good[12:]
    with pytest.raises(ChecksumError, match="prelude"):
        eventstream(bad)


def test_eventstream_corrupted_payload_fails_message_crc_and_emits_nothing() -> None:
    good = event("metadata", {"usage": {"inputTokens": 1}})
    at = good.index(b"inputTokens") + len("inputTokens") + 3
    bad = good[:at] + b"7" + good[at + 1 :]  # still valid JSON: only the CRC can tell
    sink = Sink({("usage",)})
    decoder = EventStreamDecoder(sink)
    with pytest.raises(ChecksumError, match="message CRC"):
        decoder.feed(bad)
    assert sink.events == []


def test_eventstream_bad_header_block_with_good_crc_is_malformed() -> None:
    body = frame(b"\x0b:event-type\x07\x00\x40metadata", b'{"n": 1}')  # length overruns
    with pytest.raises(MalformedBodyError, match="header block") as info:
        eventstream(body)
    assert not isinstance(info.value, ChecksumError)


def test_eventstream_corrupted_header_is_a_checksum_error() -> None:
    good = event("metadata", {"n": 1})
    bad = good[:13] + bytes([good[13] ^ 0x40]) + good[14:]  # inside the header block
    with pytest.raises(ChecksumError, match="message CRC"):
        eventstream(bad)


def test_eventstream_truncated_frame() -> None:
    body = converse_stream_body()
    with pytest.raises(TruncatedBodyError):
        eventstream(body[:-3])


def test_eventstream_impossible_lengths() -> None:
    prelude = struct.pack(">II", 8, 0)
    with pytest.raises(MalformedBodyError, match="impossible"):
        eventstream(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_eventstream_exception_frame_names_type_only() -> None:
    body = frame(
        {":message-type": "exception", ":exception-type": "throttlingException"},
        b'{"message": "CANARY-exception-text Too many requests"}',
    )
    sink = eventstream(body)
    assert sink.events == [("exception:throttlingException", {})]


# ------------------------------------------------------------------ sniffing


@pytest.mark.parametrize(
    ("body", "kind", "stream_like"),
    [
        (b'  {"n": 1}', "json", False),
        (b'{"n": 1}\n{"n": 2}\n', "json", True),
        (b'[{"n": 1}]', "json-array", True),
        (b'data: {"n": 1}\n\n', "sse", True),
        (b": ping\n\n", "sse", True),
        (b'event: x\ndata: {"n": 1}\n\n', "sse", True),
        (event("metadata", {"n": 1}), "eventstream", True),
        (b"<html>Bad gateway</html>", "raw", False),
        (b"", "empty", False),
    ],
)
def test_sniffing(body: bytes, kind: str, stream_like: bool) -> None:
    sink = Sink()
    rb = ResponseBody(sink)
    for i in range(len(body)):  # one byte at a time: sniffing must wait for enough bytes
        rb.feed(body[i : i + 1])
    rb.finish()
    assert (rb.kind, rb.stream_like) == (kind, stream_like)
    assert rb.raw_rejected is (kind == "raw")
