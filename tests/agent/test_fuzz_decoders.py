"""Property tests: every decoder survives random and mutated input, and reassembly is exact."""

from __future__ import annotations

import ipaddress
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import pairwise
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet import TCP as SCAPY_TCP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    fragment6,
)
from scapy.packet import Packet, Raw

from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.decode.packet import TCP, PacketDecoder
from agent.decode.packet import UDP as UDP_PROTO
from agent.decode.tcp import StreamBuffer
from agent.exceptions import CaptureError, DecodeError
from agent.extract.http import request_host
from agent.extract.tls import parse_client_hello, records_to_handshake
from agent.pipeline import NameExtractor
from agent.records import Observation, Proto
from tests.factories import (
    CLIENT4,
    CLIENT6,
    LINKS,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    RESOLVER4,
    RESOLVER6,
    SERVER4,
    SERVER6,
    client_hello_message,
    dns_exchange,
    make_client_hello,
    make_dns_query,
    make_dns_response,
    make_packet,
    make_quic_initials,
    pcap_bytes,
    pcapng_bytes,
    tcp_flow_packets,
    tls_records,
    udp_packets,
)

T0 = 1_700_000_000.0
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROTOS = frozenset(get_args(Proto))

# --------------------------------------------------------------------------- corpora


def _ip_packets() -> list[Packet]:
    """One of each kind of packet the pipeline reads, IPv4 and IPv6."""
    hello = make_client_hello("api.openai.com")
    pkts: list[Packet] = [
        *tcp_flow_packets(payload=hello),
        *tcp_flow_packets((CLIENT6, 50001), (SERVER6, 443), hello[:300]),
        *dns_exchange("claude.ai", a=[SERVER4], cname=["claude.example.net"]),
        *dns_exchange("claude.ai", "AAAA", client=(CLIENT6, 53001), resolver=RESOLVER6),
        *dns_exchange("chatgpt.com", "HTTPS", https_hints=[SERVER4], ech=True),
        *udp_packets(make_quic_initials("gemini.google.com", split_at=[100], packets=[[1], [0]])),
        make_packet(payload=b"GET / HTTP/1.1\r\nHost: api.mistral.ai\r\n\r\n", dport=80),
        IPv6(src=CLIENT6, dst=RESOLVER6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=5353, dport=53)
        / Raw(make_dns_query("claude.ai")),
    ]
    big = make_dns_response("claude.ai", a=[f"198.51.100.{i}" for i in range(1, 120)])
    pkts += fragment(IP(src=RESOLVER4, dst=CLIENT4, id=9) / UDP(sport=53, dport=53000) / big, 400)
    v6 = IPv6(src=RESOLVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=5) / UDP(sport=53, dport=5) / big
    pkts += fragment6(v6, 600)
    return pkts


IP_PACKETS = _ip_packets()


def raw_linktype(pkt: Packet) -> int:
    return LINKTYPE_IPV4 if isinstance(pkt, IP) else LINKTYPE_IPV6


# (link type, frame bytes) for every link framing the decoder knows
FRAMES: list[tuple[int, bytes]] = [
    (linktype, bytes(wrap(p))) for wrap, linktype in LINKS.values() for p in IP_PACKETS
] + [(raw_linktype(p), bytes(p)) for p in IP_PACKETS]
LINKTYPES = sorted({lt for lt, _ in FRAMES} | {12, 14, 50, 51, 0xFFFF})

Mutation = tuple[int, int, int]
mutations = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8
)


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Apply byte-level mutations: set, flip a bit, truncate, insert, delete a run."""
    buf = bytearray(data)
    for op, where, value in ops:
        if not buf:
            buf.append(value)
            continue
        i = where % len(buf)
        if op == 0:
            buf[i] = value
        elif op == 1:
            buf[i] ^= 1 << (value & 7)
        elif op == 2:
            del buf[i:]
        elif op == 3:
            buf[i:i] = bytes([value]) * (1 + value % 7)
        else:
            del buf[i : i + 1 + value % 64]
    return bytes(buf)


# --------------------------------------------------------------------------- PacketDecoder


def check_segment(seg: object) -> None:
    if seg is None:
        return
    assert isinstance(seg, tuple)
    assert len(seg) == 8
    proto, src, dst, sport, dport, seq, flags, payload = seg
    assert proto in (TCP, UDP_PROTO)
    assert isinstance(src, bytes)
    assert isinstance(dst, bytes)
    assert len(src) == len(dst)
    assert len(src) in (4, 16)
    assert 0 <= sport <= 0xFFFF
    assert 0 <= dport <= 0xFFFF
    assert 0 <= seq <= 0xFFFFFFFF
    assert 0 <= flags <= 0xFF
    assert isinstance(payload, bytes)
    if proto == UDP_PROTO:
        assert (seq, flags) == (0, 0)


def test_decoder_reads_every_corpus_frame() -> None:
    # the corpus is worth mutating only if its frames decode in the first place: every frame
    # gives a segment except the fragments before the last of each of the two datagrams, and
    # bare ACK/FIN segments, which the decoder drops because no extractor reads them
    fragments = sum(
        1
        for p in IP_PACKETS
        if IPv6ExtHdrFragment in p or (IP in p and (p[IP].flags.MF or p[IP].frag))
    )
    bare = sum(
        1
        for p in IP_PACKETS
        if SCAPY_TCP in p and not bytes(p[SCAPY_TCP].payload) and not int(p[SCAPY_TCP].flags) & 0x06
    )
    framings = [(name, wrap, lambda _, lt=lt: lt) for name, (wrap, lt) in LINKS.items()]
    for name, wrap, linktype in [*framings, ("ipv4/ipv6", lambda p: p, raw_linktype)]:
        decoder = PacketDecoder(Counters())
        segments = [decoder.decode(T0, linktype(p), bytes(wrap(p))) for p in IP_PACKETS]
        assert segments.count(None) == fragments - 2 + bare, name
        assert decoder.counters.snapshot() == {"ip.frag.reassembled": 2}, name


@FAST
@given(linktype=st.sampled_from(LINKTYPES), frame=st.binary(max_size=200))
def test_decoder_on_random_frames(linktype: int, frame: bytes) -> None:
    check_segment(PacketDecoder(Counters()).decode(T0, linktype, frame))


@settings(max_examples=400, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, len(FRAMES) - 1), mutations), min_size=1, max_size=6)
)
def test_decoder_on_mutated_frames(picks: list[tuple[int, list[Mutation]]]) -> None:
    decoder = PacketDecoder(Counters())  # shared across the sequence: fragments accumulate
    for i, ops in picks:
        linktype, frame = FRAMES[i]
        check_segment(decoder.decode(T0, linktype, mutate(frame, ops)))


@FAST
@given(
    payload=st.binary(min_size=1, max_size=3000),
    frag_size=st.integers(8, 600).map(lambda n: n // 8 * 8),
    order=st.randoms(use_true_random=False),
    v6=st.booleans(),
)
def test_fragments_reassemble_in_any_order(
    payload: bytes, frag_size: int, order: object, v6: bool
) -> None:
    if v6:
        whole: Packet = (
            IPv6(src=RESOLVER6, dst=CLIENT6)
            / IPv6ExtHdrFragment(id=77)
            / UDP(sport=53, dport=5000)
            / Raw(payload)
        )
        frags = fragment6(whole, max(frag_size + 48, 1280 // 2))
    else:
        whole = IP(src=RESOLVER4, dst=CLIENT4, id=77) / UDP(sport=53, dport=5000) / Raw(payload)
        frags = fragment(whole, frag_size)
    order.shuffle(frags)  # type: ignore[attr-defined]
    decoder = PacketDecoder(Counters())
    out = [decoder.decode(T0, LINKTYPE_IPV6 if v6 else LINKTYPE_IPV4, bytes(f)) for f in frags]
    segs = [s for s in out if s is not None]
    assert len(segs) == 1
    assert segs[0][7] == payload
    assert len(decoder.fragments) == 0


# --------------------------------------------------------------------------- StreamBuffer


@st.composite
def segmented(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """A payload and the (start, end) ranges sent for it: every byte at least once, in any
    order, with duplicates and overlapping retransmissions."""
    payload = draw(st.binary(min_size=1, max_size=2000))
    cuts = draw(st.lists(st.integers(1, len(payload)), max_size=8))
    ranges = list(pairwise(sorted({0, len(payload), *cuts})))
    extra = draw(
        st.lists(
            st.tuples(st.integers(0, len(payload) - 1), st.integers(1, 1500)).map(
                lambda t: (t[0], min(len(payload), t[0] + t[1]))
            ),
            max_size=4,
        )
    )
    ranges += extra + draw(st.lists(st.sampled_from(ranges), max_size=4))
    return payload, draw(st.permutations(ranges))


@settings(max_examples=300, deadline=None)
@given(case=segmented(), isn=st.integers(0, 0xFFFFFFFF))
def test_stream_reassembles_any_order(case: tuple[bytes, list[tuple[int, int]]], isn: int) -> None:
    payload, ranges = case
    buf = StreamBuffer(isn, T0, limit=4096)
    for lo, hi in ranges:
        buf.add((isn + lo) & 0xFFFFFFFF, payload[lo:hi])
    assert bytes(buf.data) == payload
    assert (buf.pending, buf.pending_bytes, buf.overflow) == ({}, 0, False)


def feed(
    case: tuple[bytes, list[tuple[int, int]]], isn: int, limit: int, take: int, when: int
) -> tuple[StreamBuffer, int]:
    """Send the ranges of ``case`` to a fresh buffer, consuming ``take`` bytes (as far as they
    are contiguous) before range number ``when``; check the bounds after every segment."""
    payload, ranges = case
    buf = StreamBuffer(isn, T0, limit=limit)
    consumed = 0
    for step, (lo, hi) in enumerate(ranges):
        if step == when and not consumed:
            consumed = min(take, len(buf.data))
            buf.consume(consumed)
        buf.add((isn + lo) & 0xFFFFFFFF, payload[lo:hi])
        assert len(buf.data) <= limit
        assert all(rel + len(seg) <= limit for rel, seg in buf.pending.items())
        assert buf.overflow or buf.pending_bytes <= limit
        assert payload[consumed:].startswith(bytes(buf.data))
    return buf, consumed


limited = {
    "case": segmented(),
    "isn": st.integers(0, 0xFFFFFFFF),
    "limit": st.integers(1, 2500),
    "take": st.integers(0, 2000),
    "when": st.integers(0, 20),
}


@settings(max_examples=300, deadline=None)
@given(**limited)
def test_stream_stays_within_its_limit(
    case: tuple[bytes, list[tuple[int, int]]], isn: int, limit: int, take: int, when: int
) -> None:
    feed(case, isn, limit, take, when)


@settings(max_examples=300, deadline=None)
@given(**limited)
@example(case=(bytes(9), [(1, 2), (2, 9), (3, 5), (0, 1)]), isn=0, limit=9, take=0, when=0)
def test_stream_that_fits_reassembles_exactly(
    case: tuple[bytes, list[tuple[int, int]]], isn: int, limit: int, take: int, when: int
) -> None:
    buf, consumed = feed(case, isn, limit, take, when)
    if len(case[0]) <= limit:
        assert not buf.overflow
        assert bytes(buf.data) == case[0][consumed:]


@settings(max_examples=300, deadline=None)
@given(**limited)
@example(case=(bytes(4), [(0, 1), (2, 4), (1, 2)]), isn=0, limit=3, take=0, when=0)
def test_stream_never_truncates_silently(
    case: tuple[bytes, list[tuple[int, int]]], isn: int, limit: int, take: int, when: int
) -> None:
    buf, consumed = feed(case, isn, limit, take, when)
    if not buf.overflow:
        assert bytes(buf.data) == case[0][consumed:]


def test_stream_keeps_nothing_past_its_limit() -> None:
    buf = StreamBuffer(0, T0, limit=100)
    buf.add(0, bytes(60))
    buf.add(70, bytes(60))  # ahead of a hole, reaching 30 bytes past the limit
    assert all(rel + len(s) <= 100 for rel, s in buf.pending.items())
    buf.add(60, bytes(10))
    assert len(buf.data) == 100


# --------------------------------------------------------------------------- TLS


hostname_label = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=63
)
hostnames = (
    st.lists(hostname_label, min_size=1, max_size=6).map(".".join).filter(lambda h: len(h) <= 253)
)
HELLOS = [
    make_client_hello("chatgpt.com"),
    make_client_hello("cloudflare-ech.com", ech=True, pq_key_share=False),
    make_client_hello(None, record_size=300),
    make_client_hello("claude.ai", padding=600, record_size=512),
]


def decode_tls(data: bytes) -> None:
    try:
        hello = parse_client_hello(records_to_handshake(data))
    except DecodeError:
        return
    assert hello.sni is None or (hello.sni == hello.sni.lower() and not hello.sni.endswith("."))
    assert all(isinstance(p, str) for p in hello.alpn)


@FAST
@given(data=st.binary(max_size=600))
def test_tls_on_random_bytes(data: bytes) -> None:
    decode_tls(data)
    decode_tls(b"\x16\x03\x01" + data)
    with suppress(DecodeError):
        parse_client_hello(b"\x01" + data)


@settings(max_examples=400, deadline=None)
@given(hello=st.sampled_from(HELLOS), ops=mutations)
def test_tls_on_mutated_hellos(hello: bytes, ops: list[Mutation]) -> None:
    decode_tls(mutate(hello, ops))


@FAST
@given(
    sni=st.none() | hostnames,
    alpn=st.lists(st.text("abcdefgh0123456789/.-", min_size=1, max_size=20), max_size=5),
    ech=st.booleans(),
    pq=st.booleans(),
    padding=st.integers(0, 3000),
    record_size=st.integers(1, 16384),
    seed=st.integers(0, 1 << 30),
)
def test_tls_generated_hello_round_trips(
    sni: str | None,
    alpn: list[str],
    ech: bool,
    pq: bool,
    padding: int,
    record_size: int,
    seed: int,
) -> None:
    message = client_hello_message(
        sni, ech=ech, alpn=alpn, pq_key_share=pq, padding=padding, seed=seed
    )
    stream = tls_records(message, record_size)
    assert records_to_handshake(stream) == message
    hello = parse_client_hello(records_to_handshake(stream + b"\x17\x03\x03\x00\x05hello"))
    assert hello.sni == (sni.lower() if sni else None)
    assert hello.has_ech is ech
    assert hello.alpn == tuple(alpn)


# --------------------------------------------------------------------------- HTTP


def decode_http(data: bytes) -> None:
    try:
        host = request_host(data)
    except DecodeError:
        return
    assert host is None or (host and host == host.lower() and " " not in host)


@FAST
@given(data=st.binary(max_size=400))
def test_http_on_random_bytes(data: bytes) -> None:
    decode_http(data)
    decode_http(b"GET / HTTP/1.1\r\n" + data)
    decode_http(b"CONNECT " + data)


@FAST
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"]),
    host=hostnames,
    port=st.none() | st.integers(1, 65535),
    header_case=st.sampled_from(["Host", "host", "HOST", "hOsT"]),
    before=st.lists(st.sampled_from(["Accept: */*", "User-Agent: x/1", "X-A: b"]), max_size=3),
    ops=mutations,
)
def test_http_generated_requests(
    method: str,
    host: str,
    port: int | None,
    header_case: str,
    before: list[str],
    ops: list[Mutation],
) -> None:
    authority = host if port is None else f"{host}:{port}"
    head = "\r\n".join([f"{method} /p HTTP/1.1", *before, f"{header_case}: {authority}"])
    request = (head + "\r\n\r\n").encode()
    expected = None if host.replace(".", "").isdigit() else host.lower()
    assert request_host(request) == expected
    connect = f"CONNECT {host}:{port or 443} HTTP/1.1\r\n\r\n".encode()
    assert request_host(connect) == expected
    decode_http(mutate(request, ops))


# --------------------------------------------------------------------------- PcapFileSource


@contextmanager
def capture_file(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        path.write_bytes(data)
        yield path


def read_all(data: bytes) -> None:
    """Read a file to its end: frames are well-formed, and the only error is CaptureError."""
    with capture_file(data) as path:
        try:
            source = PcapFileSource(path)
        except CaptureError:
            return
        try:
            for ts, linktype, frame in source.frames():
                assert isinstance(ts, float)
                assert isinstance(linktype, int)
                assert isinstance(frame, bytes)
        except CaptureError:
            pass
        finally:
            source.close()


SAMPLE_FRAMES = [(T0 + i / 10, f) for i, (lt, f) in enumerate(FRAMES) if lt == LINKTYPE_ETHERNET][
    :8
]
CAPTURES = [
    pcap_bytes(SAMPLE_FRAMES),
    pcap_bytes(SAMPLE_FRAMES, nanosecond=True),
    pcapng_bytes(SAMPLE_FRAMES),
    pcapng_bytes(SAMPLE_FRAMES, tsresol=9),
]
MAGICS = [
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",
]


def test_capture_corpus_reads_back() -> None:
    for data in CAPTURES:
        with capture_file(data) as path:
            source = PcapFileSource(path)
            frames = list(source.frames())
            source.close()
        assert [f for _, _, f in frames] == [f for _, f in SAMPLE_FRAMES]
        assert [t for t, _, _ in frames] == pytest.approx([t for t, _ in SAMPLE_FRAMES], abs=1e-6)


@FAST
@given(magic=st.sampled_from(MAGICS), rest=st.binary(max_size=400))
def test_capture_on_random_files(magic: bytes, rest: bytes) -> None:
    read_all(magic + rest)
    read_all(rest)


@settings(max_examples=300, deadline=None)
@given(data=st.sampled_from(CAPTURES), ops=mutations)
def test_capture_on_mutated_files(data: bytes, ops: list[Mutation]) -> None:
    read_all(mutate(data, ops))


block_types = st.sampled_from([1, 2, 3, 5, 6, 0x0A0D0D0A, 0x0BAD])


@st.composite
def pcapng_blocks(draw: st.DrawFn) -> bytes:
    """pcapng files block by block, with lengths that are sometimes wrong."""
    out = bytearray(pcapng_bytes([]))
    for _ in range(draw(st.integers(0, 6))):
        btype = draw(block_types)
        body = draw(st.binary(max_size=64))
        if btype == 0x0A0D0D0A:
            body = struct.pack(
                "<IHHq", draw(st.sampled_from([0x1A2B3C4D, 0x4D3C2B1A, 7])), 1, 0, -1
            )
        body += bytes(-len(body) % 4)
        length = draw(st.sampled_from([len(body) + 12, 12, 16, 24, 28, 32, 0, 13, 1 << 20]))
        out += struct.pack("<II", btype, length) + body + struct.pack("<I", length)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(data=pcapng_blocks())
def test_capture_on_structured_pcapng(data: bytes) -> None:
    read_all(data)


@pytest.mark.parametrize("btype", [1, 2, 3, 6])
def test_short_blocks_are_counted(btype: int) -> None:
    # a block shorter than its fixed fields, last in the file: counted, never a struct.error
    with capture_file(pcapng_bytes([]) + struct.pack("<III", btype, 12, 12)) as path:
        source = PcapFileSource(path)
        assert list(source.frames()) == []
        source.close()
    assert source.counters.get("pcap.bad_block") == 1


# --------------------------------------------------------------------------- NameExtractor


def check_observation(o: Observation) -> None:
    assert o.proto in PROTOS
    assert o.name
    assert o.name == o.name.lower()
    assert not o.name.endswith(".")
    ipaddress.ip_address(o.src)
    ipaddress.ip_address(o.dst)
    assert 0 <= o.sport <= 0xFFFF
    assert 0 <= o.dport <= 0xFFFF


def test_extractor_corpus_names() -> None:
    extractor = NameExtractor()
    names = {
        (o.proto, o.name)
        for i, p in enumerate(IP_PACKETS)
        for o in extractor.on_frame(T0 + i / 1000, 101, bytes(p))
    }
    assert {
        ("tls", "api.openai.com"),
        ("dns", "claude.ai"),
        ("quic", "gemini.google.com"),
        ("http", "api.mistral.ai"),
    } <= names


@FAST
@given(frames=st.lists(st.tuples(st.sampled_from(LINKTYPES), st.binary(max_size=300)), max_size=10))
def test_extractor_on_random_frames(frames: list[tuple[int, bytes]]) -> None:
    extractor = NameExtractor()
    for i, (linktype, frame) in enumerate(frames):
        for o in extractor.on_frame(T0 + i, linktype, frame):
            check_observation(o)


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.integers(0, len(IP_PACKETS) - 1), mutations, st.floats(0, 30)),
        min_size=1,
        max_size=25,
    )
)
def test_extractor_on_mutated_traffic(picks: list[tuple[int, list[Mutation], float]]) -> None:
    extractor = NameExtractor()
    for i, ops, dt in sorted(picks, key=lambda p: p[2]):
        frame = mutate(bytes(IP_PACKETS[i]), ops)
        for o in extractor.on_frame(T0 + dt, 101, frame):
            check_observation(o)


def test_no_empty_name_from_a_root_answer() -> None:
    import dns.message
    import dns.rrset

    query = dns.message.make_query(".", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(".", 300, "IN", "A", SERVER4))
    pkts = [make_packet(RESOLVER4, CLIENT4, 53, 5000, response.to_wire(), proto="udp", ts=T0)]
    pkts += tcp_flow_packets(payload=make_client_hello(None), start=T0 + 1)
    extractor = NameExtractor()
    for p in pkts:
        for o in extractor.on_frame(float(p.time), 101, bytes(p)):
            check_observation(o)
