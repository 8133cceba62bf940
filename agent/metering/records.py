"""Typed records of metering: the `Usage` it hands on and the `Counts` providers fill."""

from __future__ import annotations

from dataclasses import dataclass

# (key, value) pairs; a tuple keeps the record hashable and frozen, and its order is fixed:
# request headers first, then the provider's own user/metadata fields.
Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Counts:
    """Token counts of one call, already normalised to the OpenTelemetry GenAI conventions.

    ``input_tokens`` counts every input token, cached ones included (reads and writes);
    ``output_tokens`` counts every output token, reasoning included. The three detail fields are
    parts of those totals. ``None`` means the provider's message did not carry that number.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage metadata of one AI call: who served it, which model, how many tokens, what it cost.

    Holds no content: no prompt, no completion, no header value other than the attribution tags
    and a keyed hash plus short hint of the API key.
    """

    provider: (
        str  # OpenTelemetry gen_ai.provider.name where one is defined ("openai", "aws.bedrock")
    )
    model: str | None
    operation: str  # OpenTelemetry gen_ai.operation.name: chat, text_completion, embeddings, ...
    endpoint: str  # finer kind: "chat_completions", "responses", "messages", "converse", ...
    streaming: bool
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    estimated: bool = (
        False  # counts derived from byte sizes (web apps), not reported by the provider
    )
    cost_usd: float | None = None
    status_code: int | None = None
    deployment: str | None = None  # Azure OpenAI deployment name from the URL path
    tags: Tags = ()
    key_fingerprint: str | None = None  # HMAC-SHA256 of the API key under a device-local secret
    key_hint: str | None = None  # provider-style hint such as "sk-proj-...abcd"
