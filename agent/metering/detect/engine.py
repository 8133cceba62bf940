"""The streaming window: runs detectors over text that arrives in pieces, in bounded memory.

Each detector names a *key position* for every candidate (the first character of a regex match,
the ``@`` of an e-mail address, the first digit of a number) and says how much text it needs
around a key to decide it: ``left`` characters before, ``right`` after. The window scans a
detector only up to ``len(buffer) - right``, so every candidate it decides is seen whole, and
keeps ``left`` characters before the next undecided key. Each detector also reports where its
scan resumes (the end of its last candidate), so a candidate straddling a chunk boundary is
counted once, and the counts equal a single pass over the whole text wherever it was split.
Memory is one batch plus the widest ``left + right``, whatever the body size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

# ASCII word characters: a candidate touching one of these on either side is part of a longer
# token (a hex string, an identifier, base64) and is not counted.
WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class Detector(Protocol):
    """Finds one family of labels. Implementations live next to the rules they encode."""

    left: int  # characters of context needed before a key position
    right: int  # characters needed from a key position on to decide its candidate

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        """Count into ``found`` the candidates whose key is in ``[pos, limit)``.

        ``text`` holds at least ``left`` characters before ``pos`` (or starts the stream) and
        ``right`` characters past ``limit`` (or ends it). Candidates are taken leftmost first
        and do not overlap. Returns where the next scan must resume: at least ``limit``, or
        the end of a candidate that started before it.
        """
        ...


class TextWindow:
    """Feeds decoded text to detectors in batches, keeping only the overlap between them."""

    __slots__ = ("_base", "_batch", "_buf", "_detectors", "_found", "_pending", "_resume", "_size")

    def __init__(self, detectors: Sequence[Detector], batch_chars: int = 64 * 1024) -> None:
        self._detectors = tuple(detectors)
        self._batch = max(1, batch_chars)
        self._buf = ""
        self._base = 0  # stream offset of _buf[0]
        self._pending: list[str] = []
        self._size = 0  # characters in _pending
        self._resume = [0] * len(self._detectors)  # stream offsets
        self._found: Counter[str] = Counter()

    def feed(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._size += len(text)
        if self._size >= self._batch:
            self._run(final=False)

    def finish(self) -> Counter[str]:
        """Decide what is left and return the counts; the window holds no text afterwards."""
        self._run(final=True)
        self._buf = ""
        return self._found

    def _run(self, *, final: bool) -> None:
        buf = self._buf + "".join(self._pending)
        self._pending.clear()
        self._size = 0
        n, base = len(buf), self._base
        keep = n
        for i, det in enumerate(self._detectors):
            limit = n if final else n - det.right
            pos = self._resume[i] - base
            if pos < limit:
                pos = max(det.scan(buf, pos, limit, self._found), limit)
                self._resume[i] = base + pos
            keep = min(keep, pos - det.left)
        keep = max(keep, 0)
        self._buf = buf[keep:]
        self._base = base + keep


def left_ok(text: str, start: int) -> bool:
    """No word character right before ``start``."""
    return start == 0 or text[start - 1] not in WORD


def right_ok(text: str, end: int) -> bool:
    """No word character at ``end``."""
    return end >= len(text) or text[end] not in WORD
