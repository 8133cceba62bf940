"""The regex-driven detector: one pattern, a boundary rule before it, and a deciding function."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from agent.metering.detect.engine import WORD

Decide = Callable[[str], "str | None"]


class TokenDetector:
    """Counts matches of ``pattern`` that no character of ``before`` precedes.

    ``decide`` gets the matched text and names the label, or ``None`` to drop it (a checksum or
    shape test that a regex cannot express). ``right`` must cover the longest match plus any
    look-ahead the pattern does; a test checks every built-in pattern against it.
    """

    __slots__ = ("_before", "_decide", "_search", "left", "pattern", "right")

    def __init__(
        self,
        pattern: str,
        right: int,
        decide: Decide,
        *,
        before: frozenset[str] = WORD,
        flags: int = 0,
        left: int = 1,
    ) -> None:
        self.pattern = re.compile(pattern, flags)
        self._search = self.pattern.search
        self._decide = decide
        self._before = before
        self.left = left  # 1 for ``before``; more for a pattern that looks further back
        self.right = right

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        search, before, decide = self._search, self._before, self._decide
        while (m := search(text, pos)) is not None and (s := m.start()) < limit:
            # A rejected match is skipped whole, like an accepted one: rescanning inside it
            # would cost time and find only starts glued to the match's own characters.
            pos = max(m.end(), s + 1)
            if s and text[s - 1] in before:
                continue
            label = decide(m.group())
            if label is not None:
                found[label] += 1
        return max(pos, limit)


def always(label: str) -> Decide:
    """A ``decide`` that accepts every match."""

    def decide(_: str) -> str | None:
        return label

    return decide
