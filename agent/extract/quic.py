"""QUIC and gQUIC client hellos from UDP datagrams: one ``QuicHello`` per ClientHello seen.

The tracker follows each flow (canonical 4-tuple) from the client's first Initial packet:

* Keys come from that Initial's Destination Connection ID and stay for the whole flow, even when
  the client later switches DCID to the server's chosen ID (RFC 9001 section 5.2); a server Retry
  is the only thing that changes them, to keys from the Retry's Source Connection ID.
* CRYPTO frames of all the client's Initials are reassembled in any order until the ClientHello
  is whole; it is parsed once, reported once, and the flow remembers that it is done.
* A client Initial in another version that keys from the original DCID open is the same
  connection after compatible version negotiation (RFC 9368, e.g. v1 to v2).
* A client Initial that the flow's keys cannot open but its own DCID's keys can is a new
  connection on the same 4-tuple (port reuse, or a retry after version negotiation).

Memory is bounded: at most ``max_flows`` flows (oldest evicted) of at most
``max_bytes_per_flow`` buffered hello bytes each; unfinished hellos are dropped after
``timeout`` seconds. Datagrams that are not long-header packets of a known version cost one or
two byte comparisons. Nothing here raises: malformed input is counted and skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.counters import Counters
from agent.exceptions import DecodeError, TruncatedError
from agent.extract.gquic import (
    LONG_HEADER_VERSIONS,
    GquicChlo,
    chlo_length,
    is_legacy_client_packet,
    parse_chlo,
    parse_legacy_packet,
    parse_long_header_packet,
)
from agent.extract.quic_crypto import (
    VERSIONS,
    InitialKeys,
    VersionSpec,
    open_long_packet,
    retry_is_authentic,
    version_spec,
)
from agent.extract.quic_frames import (
    CryptoStream,
    gquic_crypto_chunks,
    initial_crypto_chunks,
    long_header_cids,
    long_packets,
)
from agent.extract.tls import handshake_length, parse_client_hello

FlowKey = tuple[str, int, str, int]
Endpoint = tuple[str, int]

_LONG_HEADER = 0x80
_GQUIC_VERSION_PREFIX = 0x51  # 'Q'
_MIN_LONG_HEADER = 7  # first byte, version, DCID length, SCID length
# A connection rarely uses more than two client DCIDs during the handshake (its own, then the
# server's); a few more cover Retry and migration without letting a flow grow.
_MAX_KNOWN_DCIDS = 8


@dataclass(frozen=True, slots=True)
class QuicHello:
    """The destination a QUIC client named in its hello."""

    sni: str | None  # lower-case; None when the ClientHello has no server_name
    version: int  # QUIC version number (for gQUIC: e.g. 0x51303436 'Q046')
    gquic: bool  # True when it came from a Google QUIC CHLO
    has_ech: bool


class _Flow:
    """Handshake state of one QUIC connection, from the client's side only."""

    __slots__ = (
        "client",
        "crypto",
        "dcids",
        "keys",
        "largest_pn",
        "odcid",
        "retried",
        "spec",
        "started",
        "version",
    )

    def __init__(
        self,
        client: Endpoint,
        version: int,
        spec: VersionSpec,
        keys: InitialKeys,
        odcid: bytes,
        started: float,
        limit: int,
    ) -> None:
        self.client = client
        self.version = version
        self.spec = spec
        self.keys = keys
        self.odcid = odcid  # the DCID of the client's first Initial, which the keys came from
        self.started = started
        self.retried = False
        self.largest_pn = -1
        self.dcids: list[bytes] = [odcid]
        self.crypto: CryptoStream | None = CryptoStream(limit)  # None once the hello is done

    def remember(self, dcid: bytes) -> None:
        if dcid not in self.dcids and len(self.dcids) < _MAX_KNOWN_DCIDS:
            self.dcids.append(dcid)


def _chunk_offset(chunk: tuple[int, bytes]) -> int:
    return chunk[0]


def _flow_key(a: Endpoint, b: Endpoint) -> FlowKey:
    return (a[0], a[1], b[0], b[1]) if a <= b else (b[0], b[1], a[0], a[1])


class QuicTracker:
    """Turns QUIC/gQUIC datagrams of both directions into ``QuicHello`` records."""

    def __init__(
        self,
        counters: Counters,
        *,
        max_flows: int = 4096,
        max_bytes_per_flow: int = 8192,
        timeout: float = 10.0,
    ) -> None:
        self.counters = counters
        self._max_flows = max_flows
        self._max_bytes = max_bytes_per_flow
        self._timeout = timeout
        # Insertion order is start order, so the oldest flow is always first.
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._gquic_seen: OrderedDict[tuple[FlowKey, bytes], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows) + len(self._gquic_seen)

    def on_datagram(
        self, ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes
    ) -> QuicHello | None:
        """Feed every UDP payload that might be QUIC (either direction). Returns a QuicHello once
        per ClientHello when it completes; None otherwise."""
        if not payload:
            return None
        if not payload[0] & _LONG_HEADER:
            if is_legacy_client_packet(payload):
                return self._on_gquic(ts, (src, sport), (dst, dport), payload, parse_legacy_packet)
            return None  # short header: never parsed
        if len(payload) < _MIN_LONG_HEADER:
            self.counters.inc("quic.malformed")
            return None
        version = int.from_bytes(payload[1:5], "big")
        spec = VERSIONS.get(version)
        if spec is None:
            if version == 0:
                return None  # Version Negotiation: nothing about the client's hello
            if version >> 24 == _GQUIC_VERSION_PREFIX:
                if version not in LONG_HEADER_VERSIONS:
                    self.counters.inc("gquic.unsupported_version")  # Q048/Q049, never deployed
                    return None
                return self._on_gquic(
                    ts,
                    (src, sport),
                    (dst, dport),
                    payload,
                    lambda data: parse_long_header_packet(data, version),
                )
            spec = version_spec(version)
            if spec is None:
                self.counters.inc("quic.unknown_version")
                return None
        try:
            return self._on_long(ts, (src, sport), (dst, dport), payload, version, spec)
        except DecodeError:
            self.counters.inc("quic.malformed")
            return None

    def expire(self, now: float) -> None:
        """Forget flows started more than ``timeout`` seconds before ``now``."""
        cutoff = now - self._timeout
        flows = self._flows
        while flows:
            key, flow = next(iter(flows.items()))
            if flow.started > cutoff:
                break
            del flows[key]
            if flow.crypto is not None:
                self.counters.inc("quic.hello_timeout")
        seen = self._gquic_seen
        while seen:
            seen_key, started = next(iter(seen.items()))
            if started > cutoff:
                break
            del seen[seen_key]

    # -- IETF QUIC (and Google Q050/T05x, which borrowed its Initial protection) --

    def _on_long(
        self,
        ts: float,
        sender: Endpoint,
        receiver: Endpoint,
        data: bytes,
        version: int,
        spec: VersionSpec,
    ) -> QuicHello | None:
        key = _flow_key(sender, receiver)
        flow = self._flows.get(key)
        if flow is not None and sender != flow.client:
            if (data[0] >> 4) & 0x03 == spec.retry_type:
                self._on_retry(flow, data, version)
            return None  # the server's Initials and Handshakes hold nothing we need
        result: QuicHello | None = None
        for ptype, dcid, start, pn_offset, end in long_packets(
            data, spec.initial_type, spec.retry_type
        ):
            if ptype == spec.initial_type:  # 0-RTT and Handshake packets are skipped unread
                hello = self._on_client_initial(
                    ts, key, sender, data, start, pn_offset, end, dcid, version, spec
                )
                if hello is not None:
                    result = hello
        return result

    def _on_client_initial(
        self,
        ts: float,
        key: FlowKey,
        sender: Endpoint,
        data: bytes,
        start: int,
        pn_offset: int,
        end: int,
        dcid: bytes,
        version: int,
        spec: VersionSpec,
    ) -> QuicHello | None:
        flow = self._flows.get(key)
        opened: tuple[int, bytes] | None = None
        if flow is not None and flow.version == version:
            if flow.crypto is None and dcid in flow.dcids:
                return None  # a retransmission or ACK of a connection already reported
            opened = open_long_packet(flow.keys, data, start, pn_offset, end, flow.largest_pn)
        elif flow is not None and flow.crypto is None:
            # A server can only pick a compatible version once it has the whole hello, so a
            # version change before that is a new attempt after Version Negotiation instead.
            opened = self._upgrade(flow, data, start, pn_offset, end, version, spec)
        if flow is None or opened is None:
            keys = InitialKeys.for_client(spec, dcid)
            opened = open_long_packet(keys, data, start, pn_offset, end, -1)
            if opened is None:
                self.counters.inc("quic.decrypt_failed")
                return None
            if flow is not None:
                self.counters.inc("quic.flow_restarted")
                del self._flows[key]
            flow = self._new_flow(key, ts, sender, version, spec, keys, dcid)
        pn, plain = opened
        flow.remember(dcid)
        flow.largest_pn = max(flow.largest_pn, pn)
        crypto = flow.crypto
        if crypto is None:
            return None
        walk = gquic_crypto_chunks if flow.spec.gquic_frames else initial_crypto_chunks
        chunks, unknown = walk(plain)
        if unknown is not None:
            self.counters.inc("quic.unknown_frame")
        chunks.sort(key=_chunk_offset)  # senders shuffle them; in order, adding is cheapest
        for offset, chunk in chunks:
            crypto.add(offset, chunk)
        return self._hello_if_complete(flow, crypto)

    def _upgrade(
        self,
        flow: _Flow,
        data: bytes,
        start: int,
        pn_offset: int,
        end: int,
        version: int,
        spec: VersionSpec,
    ) -> tuple[int, bytes] | None:
        """Follow compatible version negotiation (RFC 9368): the connection goes on in the
        server's chosen version, with that version's Initial keys from the original DCID."""
        keys = InitialKeys.for_client(spec, flow.odcid)
        opened = open_long_packet(keys, data, start, pn_offset, end, flow.largest_pn)
        if opened is not None:
            flow.version, flow.spec, flow.keys = version, spec, keys
            self.counters.inc("quic.version_upgrade")
        return opened

    def _hello_if_complete(self, flow: _Flow, crypto: CryptoStream) -> QuicHello | None:
        have = crypto.contiguous()
        chlo = flow.spec.chlo
        try:
            if chlo:
                need = chlo_length(crypto.prefix(have))
            else:  # the prefix past ``have`` is zero fill, not data
                need = handshake_length(crypto.prefix(4)) if have >= 4 else None
            if need is None:
                return None
            if need > crypto.limit:
                self.counters.inc("quic.hello_too_large")
                flow.crypto = None
                return None
            if have < need:
                return None
            message = crypto.prefix(need)
            if chlo:
                sni, has_ech = parse_chlo(message), False
            else:
                hello = parse_client_hello(message)
                sni, has_ech = hello.sni, hello.has_ech
        except DecodeError:
            self.counters.inc("quic.hello_malformed")
            flow.crypto = None
            return None
        flow.crypto = None
        self.counters.inc("quic.hello")
        return QuicHello(sni, flow.version, chlo, has_ech)

    def _on_retry(self, flow: _Flow, data: bytes, version: int) -> None:
        if version != flow.version or flow.retried:
            return  # a client acts on one Retry only (RFC 9000 section 17.2.5.2)
        try:
            _, scid, _ = long_header_cids(data, 0)
        except DecodeError:
            self.counters.inc("quic.malformed")
            return
        if not scid or not retry_is_authentic(flow.spec, flow.odcid, data):
            self.counters.inc("quic.retry_rejected")
            return
        # The client's next Initials go to this SCID and are protected with keys derived from
        # it (RFC 9001 section 5.2); its CRYPTO stream restarts with the same hello, so what is
        # already reassembled stays valid.
        flow.keys = InitialKeys.for_client(flow.spec, scid)
        flow.retried = True
        flow.remember(scid)
        self.counters.inc("quic.retry")

    def _new_flow(
        self,
        key: FlowKey,
        ts: float,
        client: Endpoint,
        version: int,
        spec: VersionSpec,
        keys: InitialKeys,
        odcid: bytes,
    ) -> _Flow:
        if len(self._flows) >= self._max_flows:
            self._flows.popitem(last=False)
            self.counters.inc("quic.flows_evicted")
        flow = _Flow(client, version, spec, keys, odcid, ts, self._max_bytes)
        self._flows[key] = flow
        return flow

    # -- Google QUIC with a plaintext CHLO --

    def _on_gquic(
        self,
        ts: float,
        sender: Endpoint,
        receiver: Endpoint,
        payload: bytes,
        parse: Callable[[bytes], GquicChlo | None],
    ) -> QuicHello | None:
        try:
            chlo = parse(payload)
        except TruncatedError:
            self.counters.inc("gquic.truncated")
            return None
        except DecodeError:
            self.counters.inc("gquic.malformed")
            return None
        if chlo is None:
            return None
        # The client repeats its CHLO (inchoate, then full after the server's REJ) on the same
        # connection; one report per connection ID is enough.
        seen_key = (_flow_key(sender, receiver), chlo.cid)
        if seen_key in self._gquic_seen:
            return None
        if len(self._gquic_seen) >= self._max_flows:
            self._gquic_seen.popitem(last=False)
            self.counters.inc("gquic.flows_evicted")
        self._gquic_seen[seen_key] = ts
        self.counters.inc("gquic.hello")
        return QuicHello(chlo.sni, chlo.version, True, False)
