"""DNS traffic to Observations and to the IP→name cache (UDP and TCP)."""

from __future__ import annotations

import contextlib

from agent.counters import Counters
from agent.decode.packet import addr_text
from agent.exceptions import DecodeError
from agent.extract.dns import DnsMessage, parse_dns, split_tcp_dns
from agent.extract.dnscache import IpNameCache
from agent.records import Observation

_CNAME = 5
_SVCB = 64
_HTTPS = 65
_MAX_QUERIES = 4096
_ABSENT = object()


class DnsHandler:
    """Queries become ``dns`` Observations of the question names; responses feed the
    IP→name cache and add the names on CNAME chains (and HTTPS/SVCB targets). A response whose
    query was not seen (asymmetric capture) also reports its question names.
    """

    def __init__(self, counters: Counters, cache: IpNameCache) -> None:
        self.counters = counters
        self.cache = cache
        # (client addr, client port, DNS id) of recent queries; insertion-ordered, bounded
        self._queries: dict[tuple[bytes, int, int], None] = {}

    def on_udp(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes
    ) -> list[Observation]:
        return self.on_message(ts, src, dst, sport, dport, payload)

    def on_tcp_stream(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, data: bytearray
    ) -> tuple[list[Observation], int]:
        """Parse the complete length-prefixed messages at the start of ``data``."""
        try:
            messages, consumed = split_tcp_dns(bytes(data))
        except DecodeError:
            self.counters.inc("dns.malformed")
            return [], len(data)
        out: list[Observation] = []
        for msg in messages:
            out += self.on_message(ts, src, dst, sport, dport, msg)
        return out, consumed

    def learn(self, ts: float, payload: bytes) -> None:
        """Feed a response to the cache only: another shard reports its names."""
        with contextlib.suppress(DecodeError):  # the shard that owns the packet counts it
            self.cache.on_response(ts, parse_dns(payload))

    def on_message(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes
    ) -> list[Observation]:
        try:
            msg = parse_dns(payload)
        except DecodeError:
            self.counters.inc("dns.malformed")
            return []
        if not msg.is_response:
            self._remember(src, sport, msg.id)
            s, d = addr_text(src), addr_text(dst)
            return [
                Observation(ts, s, sport, d, dport, "dns", q.name) for q in msg.questions if q.name
            ]
        self.cache.on_response(ts, msg)
        return self._response_names(ts, src, dst, sport, dport, msg)

    def _response_names(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, msg: DnsMessage
    ) -> list[Observation]:
        asked = {q.name for q in msg.questions}
        names: list[str] = []
        if self._queries.pop((dst, dport, msg.id), _ABSENT) is _ABSENT:  # query not seen
            names += [q.name for q in msg.questions if q.name]
        for rr in msg.answers:
            if rr.rtype in (_CNAME, _SVCB, _HTTPS) and rr.value and rr.value not in asked:
                asked.add(rr.value)
                names.append(rr.value)
        if not names:
            return []
        # report from the asker's side: the response goes resolver -> client
        c, r = addr_text(dst), addr_text(src)
        return [Observation(ts, c, dport, r, sport, "dns", n) for n in names]

    def _remember(self, client: bytes, port: int, ident: int) -> None:
        if len(self._queries) >= _MAX_QUERIES:
            self._queries.pop(next(iter(self._queries)))
        self._queries[(client, port, ident)] = None

    def ip_observations(
        self, ts: float, src: str, sport: int, dst: str, dport: int, sni: str | None = None
    ) -> list[Observation]:
        """``ip`` Observations for a connection with no readable name, from earlier answers.

        With ECH the SNI is either the outer public name (real ECH) or the true name (browsers
        send GREASE ECH in every hello, and the two look alike on the wire). If the SNI is a
        name this address was resolved for, it is the true destination and nothing is added:
        otherwise every GREASE hello to a shared CDN address would name all its neighbours.
        """
        names = self.cache.lookup(dst, ts)
        if sni is not None and sni in names:
            return []
        return [Observation(ts, src, sport, dst, dport, "ip", n) for n in names]
