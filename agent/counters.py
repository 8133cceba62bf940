"""Named event counters: malformed input, drops and sheds are counted, never silent."""

from __future__ import annotations

from collections import Counter


class Counters:
    """A bag of monotonically increasing named counters.

    Names are dotted, component first (``tls.malformed``, ``ip.frag.dropped``), so a status view
    can group them. Counters never hold content, only counts.
    """

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self._c[name] += n

    def get(self, name: str) -> int:
        return self._c.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        # dict() copies in one C call, under the GIL: safe while the capture thread adds keys
        # (iterating the live Counter from another thread could fail mid-way).
        return dict(sorted(dict(self._c).items()))

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"
