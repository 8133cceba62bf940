"""Factories for the metering tests: run recorded bodies through an extractor; encode AWS
event-stream frames (with correct CRCs) the way Bedrock sends them."""

from __future__ import annotations

import base64
import itertools
import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.metering import Usage, extractor_for
from agent.metering.extract import Extractor, PriceFn

DATA = Path(__file__).parent / "data"


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def split(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``body`` cut at the given offsets (duplicates and out-of-range offsets are fine)."""
    points = sorted({c for c in cuts if 0 < c < len(body)})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def make_extractor(
    url: str,
    *,
    request_headers: Sequence[tuple[str, str]] = (),
    key_secret: bytes | None = None,
    price: PriceFn | None = None,
) -> Extractor:
    ex = extractor_for(url, request_headers, key_secret=key_secret, price=price)
    assert ex is not None, f"no route for {url}"
    return ex


def run(
    url: str,
    response: bytes,
    *,
    request: bytes | None = None,
    response_headers: Sequence[tuple[str, str]] = (),
    status: int | None = 200,
    request_chunks: Iterable[bytes] | None = None,
    response_chunks: Iterable[bytes] | None = None,
    request_headers: Sequence[tuple[str, str]] = (),
    key_secret: bytes | None = None,
    price: PriceFn | None = None,
) -> Usage:
    ex = make_extractor(url, request_headers=request_headers, key_secret=key_secret, price=price)
    if request is not None:
        for chunk in request_chunks if request_chunks is not None else [request]:
            ex.feed_request(chunk)
    for chunk in response_chunks if response_chunks is not None else [response]:
        ex.feed_response(chunk)
    return ex.finish(response_headers, status)


# ------------------------------------------------------------------ AWS event stream encoder

_TIMESTAMP = 8


def frame(headers: dict[str, str | int] | bytes, payload: bytes) -> bytes:
    """One event-stream message; str headers are type 7 (string), int ones type 8 (timestamp).

    ``headers`` may also be a raw header block, to build malformed ones.
    """
    block = bytearray(headers if isinstance(headers, bytes) else b"")
    for name, value in headers.items() if isinstance(headers, dict) else ():
        raw = name.encode()
        block += bytes([len(raw)]) + raw
        if isinstance(value, int):
            block += bytes([_TIMESTAMP]) + struct.pack(">q", value)
        else:
            encoded = value.encode()
            block += b"\x07" + struct.pack(">H", len(encoded)) + encoded
    total = 16 + len(block) + len(payload)
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + bytes(block) + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, payload: object, **extra: str | int) -> bytes:
    return frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
            **extra,
        },
        json.dumps(payload).encode(),
    )


def converse_stream_body() -> bytes:
    """A ConverseStream response as documented: message start, text deltas, stop, metadata."""
    return b"".join(
        [
            event("messageStart", {"p": "abcdefghijkl", "role": "assistant"}),
            event(
                "contentBlockDelta",
                {
                    "contentBlockIndex": 0,
                    "delta": {"text": "CANARY-converse-stream-out Hi"},
                    "p": "ab",
                },
            ),
            event(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}, "p": "a"}
            ),
            event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
            event("messageStop", {"p": "abcdef", "stopReason": "end_turn"}),
            event(
                "metadata",
                {
                    "metrics": {"latencyMs": 1203},
                    "p": "abcdefghijklmnopqrs",
                    "usage": {
                        "inputTokens": 30,
                        "outputTokens": 628,
                        "totalTokens": 2706,
                        "cacheReadInputTokens": 2048,
                        "cacheWriteInputTokens": 0,
                    },
                },
                **{":date": 1_700_000_000_000},
            ),
        ]
    )


def _chunk(model_event: object) -> bytes:
    encoded = base64.b64encode(json.dumps(model_event).encode()).decode()
    return event("chunk", {"bytes": encoded, "p": "abcdefgh"})


def invoke_stream_body() -> bytes:
    """InvokeModelWithResponseStream for an Anthropic model: chunks of base64 model events."""
    return b"".join(
        [
            _chunk(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_bdrk_1",
                        "model": "claude-3-5-haiku-20241022",
                        "usage": {"input_tokens": 20, "output_tokens": 1},
                    },
                }
            ),
            _chunk(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "CANARY-invoke-stream-out Hello"},
                }
            ),
            _chunk(
                {
                    "type": "message_stop",
                    "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": 20,
                        "outputTokenCount": 45,
                        "invocationLatency": 1200,
                        "firstByteLatency": 300,
                        "cacheReadInputTokenCount": 100,
                        "cacheWriteInputTokenCount": 50,
                    },
                }
            ),
        ]
    )
