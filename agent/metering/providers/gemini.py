"""Google Gemini ``generateContent`` / ``streamGenerateContent`` (Gemini API and Vertex AI).

Each response (or each streamed chunk, SSE with ``?alt=sse`` or elements of a JSON array) may
carry ``usageMetadata``; in a stream the last one holds the totals.
https://ai.google.dev/api/generate-content#UsageMetadata

Conversions to the OpenTelemetry conventions:
- ``promptTokenCount`` already includes ``cachedContentTokenCount`` ("When cachedContent is set,
  this is still the total effective prompt size meaning this includes the number of tokens in
  the cached content"), so cache reads need no adding.
- ``thoughtsTokenCount`` is reported beside ``candidatesTokenCount`` and not inside it
  (``totalTokenCount`` = prompt + candidates + tool-use prompt + thoughts), so thoughts are
  added to output, and ``toolUsePromptTokenCount`` (input the model read from tool results)
  is added to input.
- The body is proto3 JSON, which omits fields equal to zero: inside a present
  ``usageMetadata`` an absent count therefore means 0, not "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser, count
from agent.metering.records import Counts

_USAGE: Path = ("usageMetadata",)
_MODEL: Path = ("modelVersion",)


class GeminiParser(Parser):
    wanted = frozenset({_USAGE, _MODEL})

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._usage: Mapping[str, object] | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        usage = values.get(_USAGE)
        if isinstance(usage, Mapping):
            self._usage = usage
        self.take_model(values.get(_MODEL))

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        u = self._usage
        if u is None:
            return Counts(model=self.model)

        def zero(key: str) -> int:
            return count(u, key) or 0

        thoughts = zero("thoughtsTokenCount")
        return Counts(
            input_tokens=zero("promptTokenCount") + zero("toolUsePromptTokenCount"),
            output_tokens=zero("candidatesTokenCount") + thoughts,
            cache_read_tokens=zero("cachedContentTokenCount"),
            reasoning_tokens=thoughts,
            model=self.model,
        )
