"""The name-extraction pipeline: raw frames in, hostname Observations out, built in one place."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.capture.source import PacketSource
from agent.counters import Counters
from agent.decode.packet import TCP, UDP, PacketDecoder, addr_text, shard_of
from agent.extract.dnscache import IpNameCache
from agent.extract.quic import QuicTracker
from agent.flows.dnsflow import DnsHandler
from agent.flows.tcpflow import TcpHandler
from agent.records import Observation

_DNS_PORTS = frozenset({53, 5353, 5355})


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    """Bounds on what the pipeline holds in memory; every drop past them is counted."""

    max_tcp_flows: int = 65536
    max_flow_bytes: int = 16384
    max_buffered_bytes: int = 16 << 20
    hello_timeout: float = 10.0
    max_quic_flows: int = 4096
    dns_cache_entries: int = 65536


class NameExtractor:
    """Turns raw frames into Observations: DNS, TLS SNI, QUIC SNI, gQUIC SNI, HTTP Host, and
    ``ip`` for connections without a readable name whose address a DNS answer named earlier.
    """

    def __init__(
        self,
        counters: Counters | None = None,
        limits: PipelineLimits | None = None,
        shard: tuple[int, int] | None = None,
    ):
        """``shard=(i, n)``: handle only the address pairs that hash to ``i`` of ``n``, so that
        ``n`` extractors can share one capture between processes. Every shard still reads all
        DNS (the IP→name cache must be whole) but reports only its own.
        """
        self.counters = counters or Counters()
        self.shard = shard
        limits = limits or PipelineLimits()
        self.decoder = PacketDecoder(self.counters, shard=shard, shared_ports=_DNS_PORTS)
        self.dns_cache = IpNameCache(max_entries=limits.dns_cache_entries, counters=self.counters)
        self.dns = DnsHandler(self.counters, self.dns_cache)
        self.tcp = TcpHandler(self.counters, self.dns, limits)
        self.quic = QuicTracker(
            self.counters, max_flows=limits.max_quic_flows, timeout=limits.hello_timeout
        )
        self._next_expiry = 0.0
        self.packets = 0

    def on_frame(self, ts: float, linktype: int, frame: bytes) -> list[Observation]:
        self.packets += 1
        if ts >= self._next_expiry:
            self.expire(ts)
        seg = self.decoder.decode(ts, linktype, frame)
        if seg is None:
            return []
        proto, src, dst, sport, dport, seq, flags, payload = seg
        if self.shard is not None:
            index, count = self.shard
            if shard_of(src, dst, count) != index:
                if sport in _DNS_PORTS or dport in _DNS_PORTS:
                    self._learn_dns(ts, proto, src, dst, sport, dport, seq, flags, payload)
                return []
        if proto == UDP:
            if sport in _DNS_PORTS or dport in _DNS_PORTS:
                return self.dns.on_udp(ts, src, dst, sport, dport, payload)
            # QUIC long headers (Initial, Retry) set 0x80; legacy gQUIC public headers carry
            # the version flag (0x01) with reserved bits clear instead.
            if payload and (payload[0] & 0x80 or payload[0] & 0xC9 == 0x09):
                return self._on_quic(ts, src, dst, sport, dport, payload)
            return []
        if proto == TCP:
            return self.tcp.on_segment(ts, src, dst, sport, dport, seq, flags, payload)
        return []

    def _learn_dns(
        self,
        ts: float,
        proto: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        flags: int,
        payload: bytes,
    ) -> None:
        """DNS of another shard: feed the cache, report nothing (that shard reports it)."""
        if proto == UDP:
            if len(payload) > 2 and payload[2] & 0x80:  # only responses carry addresses
                self.dns.learn(ts, payload)
        elif proto == TCP:
            self.tcp.on_segment(ts, src, dst, sport, dport, seq, flags, payload)

    def _on_quic(
        self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes
    ) -> list[Observation]:
        s, d = addr_text(src), addr_text(dst)
        hello = self.quic.on_datagram(ts, s, sport, d, dport, payload)
        if hello is None:
            return []
        out: list[Observation] = []
        if hello.sni:
            if hello.gquic:
                out.append(Observation(ts, s, sport, d, dport, "gquic", hello.sni))
            else:
                out.append(Observation(ts, s, sport, d, dport, "quic", hello.sni))
        if hello.sni is None or hello.has_ech:
            out.extend(self.dns.ip_observations(ts, s, sport, d, dport, hello.sni))
        return out

    def expire(self, now: float) -> None:
        self._next_expiry = now + 1.0
        self.decoder.fragments.expire(now)
        self.tcp.expire(now)
        self.quic.expire(now)

    def run(self, source: PacketSource) -> Iterator[Observation]:
        on_frame = self.on_frame
        for ts, linktype, frame in source.frames():
            obs = on_frame(ts, linktype, frame)
            if obs:
                yield from obs
