"""Shared base of the provider parsers and the helpers that read usage numbers safely."""

from __future__ import annotations

from collections.abc import Mapping

from agent.metering.jsonscan import OnString, Path
from agent.metering.records import Counts


class Parser:
    """Reads one call's response events and returns normalised `Counts`.

    Subclasses name the paths they want (relative to each event's JSON root), keep only the
    last usage-bearing values from `on_event`, and convert to OpenTelemetry semantics in `counts`.
    """

    wanted: frozenset[Path] = frozenset()
    string_hook: OnString | None = None

    def __init__(self, path_model: str | None = None) -> None:
        self.model: str | None = path_model  # from the URL, until the body names one

    def on_event(self, name: str | None, values: Mapping[Path, object]) -> None:
        """One event's wanted values (a whole JSON body is one event)."""

    def on_raw(self, chunk: bytes) -> bool:
        """Bytes of a body that is neither JSON, SSE nor an event stream; False: not usable."""
        return False

    def counts(self, response_headers: Mapping[str, str]) -> Counts:
        """The normalised counts, once the body has ended."""
        return Counts(model=self.model)

    def take_model(self, value: object) -> None:
        if isinstance(value, str) and value:
            self.model = value[:200]


def count(obj: object, *keys: str) -> int | None:
    """The non-negative integer at ``obj[k1][k2]...``, or None if absent or not a count."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    if isinstance(obj, bool) or not isinstance(obj, int) or obj < 0:
        return None
    return obj


def plus(total: int | None, *parts: int | None) -> int | None:
    """``total`` plus every known part; None stays None (an unknown total is not guessed)."""
    if total is None:
        return None
    return total + sum(p for p in parts if p is not None)


def header_count(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
