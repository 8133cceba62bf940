"""Anthropic Messages API (also served by Vertex AI ``rawPredict`` and claude.ai's API shape).

Non-streaming: one ``usage`` object. Streaming: ``message_start`` carries ``message.usage``
(input and cache counts, a first output count), then each ``message_delta`` carries a
*cumulative* ``usage``; a key present in a later event replaces the earlier value.
https://docs.anthropic.com/en/docs/build-with-claude/streaming

Anthropic's ``input_tokens`` leaves out the cache: "total input tokens = cache_read_input_tokens
+ cache_creation_input_tokens + input_tokens".
https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#tracking-cache-performance
OpenTelemetry counts every input token (cache reads and writes included) in input_tokens:
https://opentelemetry.io/docs/specs/semconv/registry/attributes/gen-ai/#gen-ai-usage-cache-read-input-tokens
so both are added here. Thinking tokens are billed and counted as output tokens already;
Anthropic reports no separate reasoning count, so ``reasoning_tokens`` stays None.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser, count, plus
from agent.metering.records import Counts

_USAGE_PATHS: tuple[Path, ...] = (("usage",), ("message", "usage"))
_MODEL_PATHS: tuple[Path, ...] = (("model",), ("message", "model"))
_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class AnthropicParser(Parser):
    wanted = frozenset(_USAGE_PATHS + _MODEL_PATHS)

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._usage: dict[str, int] = {}

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        for path in _USAGE_PATHS:
            usage = values.get(path)
            if isinstance(usage, Mapping):
                for field in _FIELDS:
                    value = count(usage, field)
                    if value is not None:
                        self._usage[field] = value
        for path in _MODEL_PATHS:
            self.take_model(values.get(path))

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        u = self._usage
        cache_read = u.get("cache_read_input_tokens")
        cache_write = u.get("cache_creation_input_tokens")
        return Counts(
            input_tokens=plus(u.get("input_tokens"), cache_read, cache_write),
            output_tokens=u.get("output_tokens"),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            model=self.model,
        )
