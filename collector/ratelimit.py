"""Token buckets: per agent on the ingest port, per client address on the enrolment port."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Token bucket per key. ``take`` returns 0 when allowed, else seconds until a token is due.

    ``max_keys`` bounds the table: past it the least recently seen key is forgotten. Keys come
    from unauthenticated peers on the enrolment port, so without a bound a caller cycling through
    addresses could grow it without end. A forgotten key starts again with a full bucket, which
    is what it would have after being idle, and the least recently seen key is the likeliest to be
    idle (full) already.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if max_keys is not None and max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (tokens, at)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            self._buckets.move_to_end(key)
            if self.max_keys is not None and len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0 if allowed else (1.0 - tokens) / self.rate


def peer_address(peer: str) -> str:
    """The rate-limit key of a gRPC peer (``ipv4:10.0.0.7:51234``, ``ipv6:[2001:db8::1]:443``).

    An IPv4 address is its own key; an IPv6 address counts as its /64, because one host
    usually holds a whole /64 and could otherwise take a fresh bucket for every address in it.
    IPv4-mapped IPv6 peers (a dual-stack listener) count as their IPv4 address. Any other peer
    (a Unix socket) is keyed by the whole string.
    """
    family, sep, rest = peer.partition(":")
    if not sep or family not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
