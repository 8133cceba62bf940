"""Cohere Chat v2: ``usage.billed_units`` and ``usage.tokens``; streams end with ``message-end``.

Non-streaming: top-level ``usage``. Streaming (SSE): the ``message-end`` event carries it under
``delta.usage``. https://docs.cohere.com/reference/chat and
https://docs.cohere.com/reference/chat-stream

``billed_units`` is what Cohere charges for; ``tokens`` also counts the prompt template Cohere
adds around the caller's messages. Lantern meters spend, so billed units are used when present
and ``tokens`` only as a fallback. Cohere reports no cache or reasoning counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser, count
from agent.metering.records import Counts

_USAGE_PATHS: tuple[Path, ...] = (("usage",), ("delta", "usage"))


class CohereParser(Parser):
    wanted = frozenset(_USAGE_PATHS)

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._usage: Mapping[str, object] | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        for path in _USAGE_PATHS:
            usage = values.get(path)
            if isinstance(usage, Mapping):
                self._usage = usage

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        u = self._usage
        if u is None:
            return Counts(model=self.model)
        billed_in = count(u, "billed_units", "input_tokens")
        billed_out = count(u, "billed_units", "output_tokens")
        return Counts(
            input_tokens=billed_in if billed_in is not None else count(u, "tokens", "input_tokens"),
            output_tokens=(
                billed_out if billed_out is not None else count(u, "tokens", "output_tokens")
            ),
            model=self.model,
        )
