"""AWS Bedrock runtime: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

- Converse: JSON ``usage`` {inputTokens, outputTokens, cacheReadInputTokens,
  cacheWriteInputTokens}. https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html
- ConverseStream: AWS event-stream frames; the ``metadata`` event's payload has the same
  ``usage``. https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamMetadataEvent.html
- InvokeModel: the body is the model's own format; usage comes from response headers
  ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` (and the cache read/write
  ones when caching is used). https://docs.aws.amazon.com/bedrock/latest/userguide/monitoring-cw.html
- InvokeModelWithResponseStream: ``chunk`` events whose payload ``bytes`` (base64) is the
  model's own chunk; the last carries ``amazon-bedrock-invocationMetrics``.

Bedrock's ``inputTokens`` leaves out cache reads and writes (they are reported beside it, as
Anthropic does), https://docs.aws.amazon.com/bedrock/latest/userguide/prompt-caching.html ,
so both are added to input to follow the OpenTelemetry conventions. Bedrock reports no
reasoning count.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from agent.metering.exceptions import MalformedBodyError
from agent.metering.jsonscan import JsonScanner, Path
from agent.metering.providers.base import Parser, count, header_count, plus
from agent.metering.records import Counts

_USAGE: Path = ("usage",)
_CHUNK_BYTES: Path = ("bytes",)
_METRICS: Path = ("amazon-bedrock-invocationMetrics",)
_MAX_CHUNK = 256 * 1024  # a chunk larger than this is content, not the closing metrics chunk


def _b64decode(encoded: str) -> bytes | None:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None  # raised by the caller, unchained: the error would hold model output


def _normalised(
    model: str | None,
    inp: int | None,
    out: int | None,
    cache_read: int | None,
    cache_write: int | None,
) -> Counts:
    return Counts(
        input_tokens=plus(inp, cache_read, cache_write),
        output_tokens=out,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        model=model,
    )


class ConverseParser(Parser):
    """Converse (one JSON body) and ConverseStream (the ``metadata`` event)."""

    wanted = frozenset({_USAGE})

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._usage: Mapping[str, object] | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        usage = values.get(_USAGE)
        if isinstance(usage, Mapping):
            self._usage = usage

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        u = self._usage
        if u is None:
            return Counts(model=self.model)
        return _normalised(
            self.model,
            count(u, "inputTokens"),
            count(u, "outputTokens"),
            count(u, "cacheReadInputTokens"),
            count(u, "cacheWriteInputTokens"),
        )


class InvokeParser(Parser):
    """InvokeModel (headers) and InvokeModelWithResponseStream (invocation metrics)."""

    wanted = frozenset({_CHUNK_BYTES})

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._metrics: Mapping[str, object] | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        encoded = values.get(_CHUNK_BYTES)
        if not isinstance(encoded, str) or len(encoded) > _MAX_CHUNK:
            return
        chunk = _b64decode(encoded)
        if chunk is None:
            raise MalformedBodyError("Bedrock stream chunk is not base64")
        found: dict[Path, object] = {}
        # The decoded chunk is the model's own event (text deltas): scan it for the metrics
        # only, then let it go.
        scanner = JsonScanner({_METRICS}, found.__setitem__)
        scanner.feed(chunk)
        scanner.finish()
        metrics = found.get(_METRICS)
        if isinstance(metrics, Mapping):
            self._metrics = metrics

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        m = self._metrics
        if m is not None:
            return _normalised(
                self.model,
                count(m, "inputTokenCount"),
                count(m, "outputTokenCount"),
                count(m, "cacheReadInputTokenCount"),
                count(m, "cacheWriteInputTokenCount"),
            )
        h = response_headers
        return _normalised(
            self.model,
            header_count(h, "x-amzn-bedrock-input-token-count"),
            header_count(h, "x-amzn-bedrock-output-token-count"),
            header_count(h, "x-amzn-bedrock-cache-read-input-token-count"),
            header_count(h, "x-amzn-bedrock-cache-write-input-token-count"),
        )
