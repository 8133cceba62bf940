"""OpenAI wire formats: Chat Completions, Responses, Embeddings; Azure and compatible servers.

Chat Completions usage: ``prompt_tokens`` (cached ones included, detail in
``prompt_tokens_details.cached_tokens``), ``completion_tokens`` (reasoning included, detail in
``completion_tokens_details.reasoning_tokens``). Streams carry it in the last chunk when the
request set ``stream_options.include_usage``. Responses API: ``input_tokens`` /
``output_tokens`` with ``*_details``, streamed in the ``response.completed`` event (also
``response.incomplete`` / ``response.failed``). Both already follow the OpenTelemetry GenAI
conventions, so OpenAI needs no conversion.
https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage
https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser, count, plus
from agent.metering.records import Counts

_USAGE_PATHS: tuple[Path, ...] = (
    ("usage",),  # Chat Completions, Responses (non-streaming), Embeddings, compatible servers
    ("response", "usage"),  # Responses API stream events
    ("x_groq", "usage"),  # Groq puts a stream's usage under x_groq in the last chunk
)
_MODEL_PATHS: tuple[Path, ...] = (("model",), ("response", "model"))


class OpenAIParser(Parser):
    """OpenAI and every server that speaks its formats without changing the usage semantics."""

    wanted = frozenset(_USAGE_PATHS + _MODEL_PATHS)

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._usage: Mapping[str, object] | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        for path in _USAGE_PATHS:
            usage = values.get(path)
            if isinstance(usage, Mapping):
                self._usage = usage  # streams repeat or accumulate: the last one is complete
        for path in _MODEL_PATHS:
            self.take_model(values.get(path))

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        if self._usage is None:
            return Counts(model=self.model)
        return self.normalise(self._usage)

    def normalise(self, u: Mapping[str, object]) -> Counts:
        if "input_tokens" in u or "output_tokens" in u:  # Responses API shape
            return Counts(
                input_tokens=count(u, "input_tokens"),
                output_tokens=count(u, "output_tokens"),
                cache_read_tokens=count(u, "input_tokens_details", "cached_tokens"),
                reasoning_tokens=count(u, "output_tokens_details", "reasoning_tokens"),
                model=self.model,
            )
        return Counts(
            input_tokens=count(u, "prompt_tokens"),
            output_tokens=count(u, "completion_tokens"),
            cache_read_tokens=count(u, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=count(u, "completion_tokens_details", "reasoning_tokens"),
            model=self.model,
        )


def _reasoning_left_out(u: Mapping[str, object], *, default: bool) -> bool:
    """Whether ``completion_tokens`` leaves out ``reasoning_tokens``, judged by the total.

    ``total_tokens`` settles it when present: equal to prompt + completion means reasoning is
    inside completion; equal to prompt + completion + reasoning means it is not.
    """
    prompt = count(u, "prompt_tokens")
    completion = count(u, "completion_tokens")
    reasoning = count(u, "completion_tokens_details", "reasoning_tokens")
    total = count(u, "total_tokens")
    if not reasoning or prompt is None or completion is None or total is None:
        return default and bool(reasoning)
    return total == prompt + completion + reasoning


class XaiParser(OpenAIParser):
    """xAI (Grok): ``completion_tokens`` does not include ``reasoning_tokens``; add them.

    "The reasoning token count is outputted in the reasoning_tokens field, separated from the
    completion_tokens." https://docs.x.ai/docs/guides/reasoning and
    https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/grok/capabilities/reasoning
    When ``total_tokens`` shows the reasoning already inside (as some gateways report), nothing
    is added, so a later change on xAI's side cannot double-count.
    """

    def normalise(self, u: Mapping[str, object]) -> Counts:
        base = super().normalise(u)
        if "input_tokens" in u or not _reasoning_left_out(u, default=True):
            return base
        return Counts(
            input_tokens=base.input_tokens,
            output_tokens=plus(base.output_tokens, base.reasoning_tokens),
            cache_read_tokens=base.cache_read_tokens,
            reasoning_tokens=base.reasoning_tokens,
            model=base.model,
        )


class DeepSeekParser(OpenAIParser):
    """DeepSeek: cache hits are ``prompt_cache_hit_tokens``, already inside ``prompt_tokens``.

    "prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens"
    https://api-docs.deepseek.com/api/create-chat-completion (usage object) and
    https://api-docs.deepseek.com/guides/kv_cache
    """

    def normalise(self, u: Mapping[str, object]) -> Counts:
        base = super().normalise(u)
        hit = count(u, "prompt_cache_hit_tokens")
        if hit is None:
            return base
        return Counts(
            input_tokens=base.input_tokens,
            output_tokens=base.output_tokens,
            cache_read_tokens=hit,
            reasoning_tokens=base.reasoning_tokens,
            model=base.model,
        )
