"""Consumer web apps (ChatGPT, claude.ai, Gemini, Copilot, Perplexity): estimated token counts.

Web apps report no usage, so tokens are ESTIMATED from how many bytes of text went each way:
``tokens = ceil(text_bytes / 4)``. About four bytes of English text make one token for the
GPT, Claude and Gemini tokenizers (OpenAI's own rule of thumb:
https://help.openai.com/en/articles/4936856-what-are-tokens-and-how-to-count-them). Known bias:
code and non-Latin scripts have fewer bytes per token (undercount); JSON escapes count
their raw bytes (slight overcount). Every such record has ``estimated=True``.

Text bytes are the raw bytes inside JSON strings under each app's text keys, counted while the
scanner skips them (never copied). Output is measured two ways because apps stream either
way: *delta* keys (each event carries new text: summed over events) and *snapshot* keys (each
event repeats the whole answer so far: the largest event counts once).
Bodies that are not JSON (Gemini's batchexecute framing) are measured by their longest line
(Gemini repeats the answer so far in each line) and, for form-encoded requests, by decoded
length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.metering.jsonscan import Path
from agent.metering.providers.base import Parser
from agent.metering.records import Counts

BYTES_PER_TOKEN = 4


def estimate_tokens(text_bytes: int) -> int:
    return -(-text_bytes // BYTES_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class WebText:
    """Where one app's text lives; ``None`` for snapshot keys means every string."""

    delta_keys: frozenset[str] = frozenset()
    snapshot_keys: frozenset[str] | None = frozenset()
    model_paths: tuple[Path, ...] = ()


class WebParser(Parser):
    def __init__(self, text: WebText, path_model: str | None = None) -> None:
        super().__init__(path_model)
        self._text = text
        self.wanted = frozenset(text.model_paths)
        self.string_hook = self._on_string
        self._event_delta = 0
        self._event_snapshot = 0
        self._delta_total = 0
        self._snapshot_max = 0
        self._line = 0  # bytes of the current raw line
        self._raw_seen = False

    def _on_string(self, key: str | None, nbytes: int) -> None:
        if key is not None and key in self._text.delta_keys:
            self._event_delta += nbytes
        snapshot = self._text.snapshot_keys
        if snapshot is None or (key is not None and key in snapshot):
            self._event_snapshot += nbytes

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        self._delta_total += self._event_delta
        self._snapshot_max = max(self._snapshot_max, self._event_snapshot)
        self._event_delta = self._event_snapshot = 0
        for path in self._text.model_paths:
            self.take_model(values.get(path))

    def on_raw(self, chunk: bytes) -> bool:
        self._raw_seen = True
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._line += len(chunk) - start
                break
            self._snapshot_max = max(self._snapshot_max, self._line + nl - start)
            self._line = 0
            start = nl + 1
        return True

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        if self._raw_seen:
            self._snapshot_max = max(self._snapshot_max, self._line)
        # An event cut off by the end of the body still showed its text on the wire.
        self._delta_total += self._event_delta
        self._snapshot_max = max(self._snapshot_max, self._event_snapshot)
        self._event_delta = self._event_snapshot = 0
        return Counts(
            output_tokens=estimate_tokens(self._delta_total + self._snapshot_max),
            model=self.model,
        )


# Per-app text locations. Formats are undocumented and change; these follow the apps'
# traffic as of 2025 (ChatGPT's "v1" delta encoding and its older full-snapshot events).
CHATGPT = WebText(
    delta_keys=frozenset({"v"}),
    snapshot_keys=frozenset({"parts"}),
    model_paths=(
        ("message", "metadata", "model_slug"),
        ("v", "message", "metadata", "model_slug"),
    ),
)
CLAUDE = WebText(
    delta_keys=frozenset({"completion", "text", "thinking"}),
    model_paths=(("model",), ("message", "model")),
)
PERPLEXITY = WebText(snapshot_keys=None, model_paths=(("display_model",),))
COPILOT = WebText(delta_keys=frozenset({"text"}), model_paths=(("model",),))
GEMINI_WEB = WebText()

# Request-side text keys per app (None: every string in the request).
REQUEST_TEXT: dict[str, frozenset[str] | None] = {
    "chatgpt": frozenset({"parts"}),
    "claude.ai": frozenset({"prompt", "text", "extracted_content"}),
    "perplexity.ai": frozenset({"query_str"}),
    "copilot": frozenset({"text"}),
    "gemini.web": None,
}
