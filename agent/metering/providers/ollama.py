"""Ollama's native API: ``/api/chat`` and ``/api/generate`` (JSON, or JSON lines when streaming).

The last object (``"done": true``) carries ``prompt_eval_count`` (input tokens) and
``eval_count`` (output tokens). https://github.com/ollama/ollama/blob/main/docs/api.md
Ollama leaves ``prompt_eval_count`` out when the whole prompt came from its cache, so input is
None then. Ollama's OpenAI-compatible ``/v1`` endpoints use `OpenAIParser`.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser, count
from agent.metering.records import Counts

_IN: Path = ("prompt_eval_count",)
_OUT: Path = ("eval_count",)
_MODEL: Path = ("model",)


class OllamaParser(Parser):
    wanted = frozenset({_IN, _OUT, _MODEL})

    def __init__(self, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._in: int | None = None
        self._out: int | None = None

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        counted = {path[0]: value for path, value in values.items() if path in (_IN, _OUT)}
        if counted:
            self._in = count(counted, "prompt_eval_count")
            self._out = count(counted, "eval_count")
        self.take_model(values.get(_MODEL))

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        return Counts(input_tokens=self._in, output_tokens=self._out, model=self.model)
