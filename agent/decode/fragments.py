"""IPv4 and IPv6 fragment reassembly, bounded in datagrams, bytes and time."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.counters import Counters

FragKey = tuple[bytes, bytes, int, int]  # src, dst, identification, protocol (0 for IPv6)


@dataclass
class _Pending:
    first_ts: float
    proto: int = -1  # upper-layer protocol, known once the first fragment arrived
    total: int = -1  # payload length, known once the last fragment arrived
    size: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)


class FragmentReassembler:
    """Collects fragments until a datagram's payload is whole.

    Bounds: ``max_pending`` datagrams in flight (oldest evicted), ``max_datagram`` bytes each,
    ``timeout`` seconds of capture time. Everything dropped is counted.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        max_pending: int = 256,
        max_datagram: int = 65535,
        timeout: float = 30.0,
    ) -> None:
        self.counters = counters
        self.max_pending = max_pending
        self.max_datagram = max_datagram
        self.timeout = timeout
        self._pending: dict[FragKey, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self, ts: float, key: FragKey, offset: int, more: bool, proto: int, data: bytes
    ) -> tuple[int, bytes] | None:
        """Add one fragment; return (protocol, whole payload) when the datagram completes.

        ``proto`` is the upper-layer protocol carried by this fragment's header; for IPv6 it is
        only meaningful on the fragment at offset 0.
        """
        pend = self._pending.get(key)
        if pend is None:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(next(iter(self._pending)))
                self.counters.inc("ip.frag.evicted")
            pend = self._pending[key] = _Pending(ts)
        end = offset + len(data)
        if end > self.max_datagram or pend.size + len(data) > self.max_datagram * 2:
            del self._pending[key]
            self.counters.inc("ip.frag.too_big")
            return None
        if offset == 0:
            pend.proto = proto
        if not more:
            if pend.total not in (-1, end):
                del self._pending[key]
                self.counters.inc("ip.frag.inconsistent")
                return None
            pend.total = end
        if offset not in pend.parts:
            pend.parts[offset] = data
            pend.size += len(data)
        if pend.total < 0 or pend.proto < 0:
            return None
        buf = bytearray(pend.total)
        covered = 0
        for off in sorted(pend.parts):
            part = pend.parts[off]
            if off > covered:
                return None  # a hole remains
            buf[off : off + len(part)] = part
            covered = max(covered, off + len(part))
        if covered < pend.total:
            return None
        del self._pending[key]
        self.counters.inc("ip.frag.reassembled")
        return pend.proto, bytes(buf[: pend.total])

    def expire(self, now: float) -> None:
        limit = now - self.timeout
        stale = [k for k, p in self._pending.items() if p.first_ts < limit]
        for k in stale:
            del self._pending[k]
        if stale:
            self.counters.inc("ip.frag.timeout", len(stale))
