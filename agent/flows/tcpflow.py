"""TCP flows to Observations: TLS ClientHello SNI, HTTP/1 Host, DNS over TCP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.counters import Counters
from agent.decode.packet import addr_text
from agent.decode.tcp import StreamBuffer
from agent.exceptions import DecodeError, TruncatedError
from agent.extract.http import METHODS, looks_like_http_request, request_host
from agent.extract.tls import (
    looks_like_client_hello_record,
    parse_client_hello,
    records_to_handshake,
)
from agent.flows.dnsflow import DnsHandler
from agent.records import Observation

if TYPE_CHECKING:
    from agent.pipeline import PipelineLimits

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
# Flow kinds. IGNORE and DONE are stored as bare ints: most flows end up as one of them and
# then cost one dict probe per packet.
UNKNOWN, TLS, HTTP, DNS = 1, 2, 3, 4
IGNORE, DONE = 0, -1
_DNS_PORTS = (53,)
_ORPHAN_SEGMENTS = 4  # segments held for a flow whose start we have not seen yet
_MAX_ORPHAN_FLOWS = 1024

FlowKey = tuple[bytes, int, bytes, int]


def _could_start_a_message(prefix: bytes) -> bool:
    if prefix[:1] == b"\x16":
        return prefix[1:2] in (b"", b"\x03")
    return any(m.startswith(prefix) for m in METHODS)


class _Flow:
    __slots__ = ("kind", "stream")

    def __init__(self, kind: int, stream: StreamBuffer) -> None:
        self.kind = kind
        self.stream = stream


class TcpHandler:
    """Follows the client side of TCP flows just long enough to read the first message.

    A flow whose SYN was seen starts at ISN+1, so segments may arrive in any order. Without a
    SYN (capture started mid-way) a flow starts at a segment that looks like a ClientHello or a
    request; up to a few earlier-arriving segments are held in case that start comes late.
    Memory is bounded per flow (``max_flow_bytes``), in total (``max_buffered_bytes``) and in
    time (``hello_timeout``); what is dropped is counted.
    """

    def __init__(self, counters: Counters, dns: DnsHandler, limits: PipelineLimits) -> None:
        self.counters = counters
        self.dns = dns
        self.max_flows = limits.max_tcp_flows
        self.flow_limit = limits.max_flow_bytes
        self.max_buffered = limits.max_buffered_bytes
        self.timeout = limits.hello_timeout
        self.flows: dict[FlowKey, _Flow | int] = {}
        self.orphans: dict[FlowKey, list[tuple[int, bytes]]] = {}
        # the flows that hold a buffer: a subset of ``flows``, so sweeps skip the finished ones
        self.active: dict[FlowKey, _Flow] = {}

    def on_segment(
        self,
        ts: float,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        flags: int,
        payload: bytes,
    ) -> list[Observation]:
        key = (src, sport, dst, dport)
        flow = self.flows.get(key)
        if flow is not None and flow.__class__ is int:
            if flags & SYN and not flags & ACK:  # port reuse: a new connection
                self._new_flow(key, ts, seq + 1, DNS if dport in _DNS_PORTS else UNKNOWN)
                if payload:  # TCP Fast Open
                    return self.on_segment(ts, src, dst, sport, dport, seq + 1, ACK, payload)
            return []
        if flags & (SYN | RST):
            if flags & RST:
                self.flows.pop(key, None)
                self.active.pop(key, None)
            elif flags & ACK:  # SYN-ACK: the server side matters only for DNS answers
                if sport in _DNS_PORTS:
                    self._new_flow(key, ts, seq + 1, DNS)
                else:
                    self._set(key, IGNORE)
            else:
                self._new_flow(key, ts, seq + 1, DNS if dport in _DNS_PORTS else UNKNOWN)
                if payload:  # TCP Fast Open: the SYN itself carries the first bytes
                    return self.on_segment(ts, src, dst, sport, dport, seq + 1, ACK, payload)
            return []
        if not payload:
            return []
        if flow is None:
            kind = self._classify(payload, sport, dport)
            if kind == IGNORE:
                self._orphan(key, seq, payload)
                return []
            flow = self._new_flow(key, ts, seq, kind)
            for oseq, opayload in self.orphans.pop(key, ()):
                flow.stream.add(oseq, opayload)
        assert isinstance(flow, _Flow)
        stream = flow.stream
        if not stream.add(seq, payload):
            if stream.overflow:
                self._give_up(key, "tcp.flow_overflow")
            return []
        if flow.kind == UNKNOWN:
            flow.kind = self._classify(stream.data, sport, dport)
            if flow.kind == IGNORE:
                self._set(key, IGNORE)
                return []
        return self._on_data(ts, key, flow)

    def _on_data(self, ts: float, key: FlowKey, flow: _Flow) -> list[Observation]:
        src, sport, dst, dport = key
        data = flow.stream.data
        if flow.kind == DNS:
            flow.stream.ts = ts  # DNS flows live while they carry messages
            out, consumed = self.dns.on_tcp_stream(ts, src, dst, sport, dport, data)
            if consumed:
                flow.stream.consume(consumed)
            return out
        try:
            if flow.kind == TLS:
                hello = parse_client_hello(records_to_handshake(data))
                self._set(key, DONE)
                s, d = addr_text(src), addr_text(dst)
                out = []
                if hello.sni:
                    out.append(Observation(ts, s, sport, d, dport, "tls", hello.sni))
                if hello.sni is None or hello.has_ech:
                    # the real destination is hidden; an earlier DNS answer may name it
                    out += self.dns.ip_observations(ts, s, sport, d, dport, hello.sni)
                return out
            host = request_host(data)
            self._set(key, DONE)
            if host is None:
                return []
            return [Observation(ts, addr_text(src), sport, addr_text(dst), dport, "http", host)]
        except TruncatedError:
            if flow.stream.overflow:
                self._give_up(key, "tcp.flow_overflow")
            return []
        except DecodeError:
            self._give_up(key, "tls.malformed" if flow.kind == TLS else "http.malformed")
            return []

    @staticmethod
    def _classify(data: bytes | bytearray, sport: int, dport: int) -> int:
        if dport in _DNS_PORTS or sport in _DNS_PORTS:
            return DNS
        if looks_like_client_hello_record(data):
            return TLS
        if looks_like_http_request(data):
            return HTTP
        if len(data) < 8 and _could_start_a_message(bytes(data)):
            return UNKNOWN  # too short to tell (evasion tools send a 1-byte first segment)
        return IGNORE

    def _new_flow(self, key: FlowKey, ts: float, base: int, kind: int) -> _Flow:
        flow = _Flow(kind, StreamBuffer(base, ts, self.flow_limit))
        self._set(key, flow)
        return flow

    def _set(self, key: FlowKey, value: _Flow | int) -> None:
        flows = self.flows
        if key not in flows and len(flows) >= self.max_flows:
            old = next(iter(flows))
            del flows[old]
            self.active.pop(old, None)
            self.counters.inc("tcp.flows_evicted")
        flows[key] = value
        if isinstance(value, _Flow):
            self.active[key] = value
        else:
            self.active.pop(key, None)

    def _give_up(self, key: FlowKey, counter: str) -> None:
        self.counters.inc(counter)
        self._set(key, IGNORE)

    def _orphan(self, key: FlowKey, seq: int, payload: bytes) -> None:
        held = self.orphans.get(key)
        if held is None:
            if len(self.orphans) >= _MAX_ORPHAN_FLOWS:
                self.orphans.pop(next(iter(self.orphans)))
            self.orphans[key] = [(seq, payload[: self.flow_limit])]
        elif len(held) < _ORPHAN_SEGMENTS:
            held.append((seq, payload[: self.flow_limit]))
        else:
            del self.orphans[key]
            self._set(key, IGNORE)

    def buffered_bytes(self) -> int:
        return sum(len(f.stream) for f in self.active.values()) + sum(
            len(p) for segs in self.orphans.values() for _, p in segs
        )

    def expire(self, now: float) -> None:
        """Drop hellos and requests still incomplete after ``hello_timeout``; shed the oldest
        flows when the buffered total is over budget."""
        limit = now - self.timeout
        stale = [k for k, f in self.active.items() if f.stream.ts < limit]
        for k in stale:
            self._set(k, IGNORE)
        if stale:
            self.counters.inc("tcp.hello_timeout", len(stale))
        if self.buffered_bytes() > self.max_buffered:
            for k in list(self.active):
                self._set(k, IGNORE)
                self.counters.inc("tcp.shed")
                if self.buffered_bytes() <= self.max_buffered // 2:
                    break
