"""The hot-path shortcuts agree with the general code they bypass."""

from __future__ import annotations

import hashlib
import hmac
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.counters import Counters
from agent.decode.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    TCP,
    UDP,
    PacketDecoder,
    shard_of,
)
from agent.extract.quic_crypto import _Hmac
from agent.extract.quic_frames import CryptoStream

DNS_PORTS = frozenset({53, 5353, 5355})
ports = st.sampled_from([53, 443, 5353, 40000, 65535]) | st.integers(0, 65535)


def make_ip(
    v6: bool, proto: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, flags: int
) -> bytes:
    if proto == UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 1024, 0, 0) + payload
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst + l4
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0)
    return head + src + dst + l4


def make_ether(ip: bytes, v6: bool) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + (b"\x86\xdd" if v6 else b"\x08\x00") + ip


frames = st.builds(
    lambda v6, proto, a, b, sport, dport, payload, flags, trailer: (
        v6,
        make_ip(
            v6, proto, a[: 16 if v6 else 4], b[: 16 if v6 else 4], sport, dport, payload, flags
        ),
        trailer,
    ),
    st.booleans(),
    st.sampled_from([TCP, UDP]),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    ports,
    ports,
    st.binary(max_size=40),
    st.sampled_from([0x10, 0x18, 0x02, 0x12, 0x04, 0x11]),
    st.binary(max_size=6),  # Ethernet padding after the IP packet
)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_ethernet_fast_paths_decode_like_the_general_path(frame: tuple[bool, bytes, bytes]) -> None:
    v6, ip, trailer = frame
    fast = PacketDecoder(Counters()).decode(0.0, LINKTYPE_ETHERNET, make_ether(ip, v6) + trailer)
    general = PacketDecoder(Counters()).decode(0.0, LINKTYPE_RAW, ip + trailer)
    assert fast == general


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(2, 4))
def test_a_sharded_decoder_drops_only_other_shards_non_dns_segments(
    frame: tuple[bool, bytes, bytes], count: int
) -> None:
    v6, ip, trailer = frame
    data = make_ether(ip, v6) + trailer
    whole = PacketDecoder(Counters()).decode(0.0, LINKTYPE_ETHERNET, data)
    for index in range(count):
        decoder = PacketDecoder(Counters(), shard=(index, count), shared_ports=DNS_PORTS)
        seg = decoder.decode(0.0, LINKTYPE_ETHERNET, data)
        if whole is None:
            assert seg is None
            continue
        _, src, dst, sport, dport, *_ = whole
        if shard_of(src, dst, count) == index or {sport, dport} & DNS_PORTS:
            assert seg == whole
        else:  # dropped on the fast paths; short or unusual frames are left to the caller
            assert seg is None or (seg == whole and len(data) < 54 + 8)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 80), st.binary(max_size=24)), max_size=12),
    st.integers(1, 64),
)
def test_crypto_stream_matches_a_byte_map(chunks: list[tuple[int, bytes]], limit: int) -> None:
    stream = CryptoStream(limit)
    have: dict[int, int] = {}
    for offset, data in chunks:
        stream.add(offset, data)
        for i, byte in enumerate(data):
            if offset + i < limit:
                have[offset + i] = byte  # later data wins, as in the stream
    contiguous = 0
    while contiguous in have:
        contiguous += 1
    assert stream.contiguous() == contiguous
    assert stream.prefix(contiguous) == bytes(have[i] for i in range(contiguous))


@given(st.binary(max_size=100), st.binary(max_size=80))
def test_hmac_with_hashed_key_blocks_is_hmac_sha256(key: bytes, msg: bytes) -> None:
    assert _Hmac(key).digest(msg) == hmac.digest(key, msg, hashlib.sha256)
