"""TCP stream reassembly for the first bytes of a flow: out of order, duplicated, bounded."""

from __future__ import annotations

_HALF = 1 << 31
_MASK = 0xFFFFFFFF


class StreamBuffer:
    """Contiguous bytes of one direction of a TCP flow, starting at a known sequence number.

    Segments may arrive out of order, duplicated or overlapping; ``data`` holds what is
    contiguous from ``base``, ``pending`` what arrived ahead of a hole. Nothing is kept past
    ``limit`` bytes: the caller decides what a message is and how much is worth waiting for.
    """

    __slots__ = ("base", "data", "limit", "overflow", "pending", "pending_bytes", "ts")

    def __init__(self, base: int, ts: float, limit: int) -> None:
        self.base = base & _MASK
        self.ts = ts
        self.limit = limit
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.overflow = False

    def __len__(self) -> int:
        return len(self.data) + self.pending_bytes

    def add(self, seq: int, payload: bytes) -> bool:
        """Add a segment. Returns True when the contiguous data grew."""
        rel = (seq - self.base) & _MASK
        if rel >= _HALF:  # starts before base: keep only the part after it, if any
            skip = (_MASK + 1) - rel
            if skip >= len(payload):
                return False
            payload = payload[skip:]
            rel = 0
        have = len(self.data)
        if rel > have:
            if rel + len(payload) > self.limit:
                self.overflow = True  # bytes past the limit were wanted: never kept
                if rel >= self.limit:
                    return False
                payload = payload[: self.limit - rel]
            self._hold(rel, payload)
            return False
        end = rel + len(payload)
        if end <= have:
            return False  # a duplicate
        self.data += payload[have - rel :]
        if self.pending:
            self._drain()
        if len(self.data) > self.limit:
            del self.data[self.limit :]
            self.overflow = True
        return True

    def _hold(self, rel: int, payload: bytes) -> None:
        """Keep a segment that arrived ahead of a hole, merged with the held segments it
        overlaps or touches, so no byte is held twice and the total stays within ``limit``."""
        start, end, merged = rel, rel + len(payload), payload
        for r in [r for r, seg in self.pending.items() if r <= end and r + len(seg) >= start]:
            seg = self.pending.pop(r)
            self.pending_bytes -= len(seg)
            lo, hi = min(start, r), max(end, r + len(seg))
            joined = bytearray(hi - lo)
            joined[r - lo : r - lo + len(seg)] = seg
            joined[start - lo : end - lo] = merged  # the newer copy wins where they overlap
            start, end, merged = lo, hi, bytes(joined)
        self.pending[start] = merged
        self.pending_bytes += len(merged)

    def _drain(self) -> None:
        progressed = True
        while progressed and self.pending:
            progressed = False
            have = len(self.data)
            for rel in sorted(self.pending):
                if rel > have:
                    break
                seg = self.pending.pop(rel)
                self.pending_bytes -= len(seg)
                if rel + len(seg) > have:
                    self.data += seg[have - rel :]
                    have = len(self.data)
                progressed = True

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front (a framed message was taken) and move ``base``."""
        del self.data[:n]
        self.base = (self.base + n) & _MASK
        if self.pending:
            self.pending = {rel - n: seg for rel, seg in self.pending.items() if rel >= n}
            self.pending_bytes = sum(len(s) for s in self.pending.values())
