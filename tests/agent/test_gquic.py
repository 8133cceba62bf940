"""Tests for Google QUIC CHLO extraction: Q025-Q046 plaintext hellos and Q050's protected ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.decode.packet import UDP, PacketDecoder, addr_text
from agent.exceptions import DecodeError, TruncatedError
from agent.extract.gquic import (
    GquicChlo,
    chlo_length,
    gquic_version_number,
    is_legacy_client_packet,
    parse_chlo,
    parse_legacy_packet,
    parse_long_header_packet,
)
from agent.extract.quic import QuicHello, QuicTracker
from agent.extract.quic_crypto import (
    VERSION_Q050,
    VERSION_T050,
    InitialKeys,
    protect_long_packet,
    version_spec,
)
from tests.conftest import PCAPS

Q025 = 0x51303235
Q043 = 0x51303433
Q046 = 0x51303436
CLIENT = ("2001:db8::10", 45931)
SERVER = ("2001:db8::443", 443)
CID = bytes.fromhex("d6ccedf0d3e2be49")
TAG_SNI = b"SNI\x00"


# ---------------------------------------------------------------- factories


def make_chlo(sni: bytes | None = b"www.google.it", **extra: bytes) -> bytes:
    """A CHLO message; tags are sorted by their little-endian value, as Chromium writes them."""
    tags = {b"PAD\x00": b"-" * 300, b"VER\x00": b"Q046", b"AEAD": b"AESG"}
    if sni is not None:
        tags[TAG_SNI] = sni
    tags.update({k.encode().ljust(4, b"\x00"): v for k, v in extra.items()})
    ordered = sorted(tags.items(), key=lambda kv: int.from_bytes(kv[0], "little"))
    index, values, end = b"", b"", 0
    for tag, value in ordered:
        end += len(value)
        index += tag + end.to_bytes(4, "little")
        values += value
    return b"CHLO" + len(ordered).to_bytes(2, "little") + b"\x00\x00" + index + values


def stream_frame(
    data: bytes, *, big_endian: bool, stream_id: int = 1, offset: int | None = None
) -> bytes:
    order: Literal["big", "little"] = "big" if big_endian else "little"
    ftype = 0xA0 | (0x04 if offset is not None else 0)  # data length present, 1-byte stream id
    head = bytes((ftype, stream_id))
    if offset is not None:
        head += offset.to_bytes(2, order)
    return head + len(data).to_bytes(2, order) + data


def make_legacy(
    version: int, chlo: bytes, *, cid: bytes = CID, flags: int = 0x0D, **kw: int
) -> bytes:
    """A client packet with the gQUIC public header (Q024-Q043)."""
    number = gquic_version_number(version)
    assert number is not None
    header = bytes((flags,)) + cid + version.to_bytes(4, "big") + b"\x01"  # 1-byte packet number
    header += bytes(12)  # message authentication hash
    if number < 34:
        header += b"\x00"  # private flags
    return header + stream_frame(chlo, big_endian=number >= 39, **kw)


def make_q046(chlo: bytes, *, cid: bytes = CID, ptype: int = 0) -> bytes:
    header = bytes((0xC3 | ptype << 4,)) + Q046.to_bytes(4, "big") + b"\x50" + cid
    return header + (1).to_bytes(4, "big") + bytes(12) + stream_frame(chlo, big_endian=True)


def make_protected(version: int, frames: bytes, *, dcid: bytes = CID, pn: int = 0) -> bytes:
    """A Q050/T050 client Initial: IETF long header and protection, gQUIC frames inside."""
    spec = version_spec(version)
    assert spec is not None
    payload = frames + bytes(max(0, 1150 - len(frames)))
    length = 2 + len(payload) + 16
    header = b"\xc1" + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + b"\x00\x00"
    header += (length | 0x4000).to_bytes(2, "big") + pn.to_bytes(2, "big")
    return protect_long_packet(InitialKeys.for_client(spec, dcid), header, pn, payload)


def gquic_crypto(offset: int, data: bytes) -> bytes:
    """gQUIC's CRYPTO frame (type 0x08) with 2-byte varint offset and length."""
    return (
        b"\x08"
        + (offset | 0x4000).to_bytes(2, "big")
        + (len(data) | 0x4000).to_bytes(2, "big")
        + data
    )


def feed(
    tracker: QuicTracker, datagram: bytes, *, src: tuple[str, int] = CLIENT
) -> QuicHello | None:
    dst = SERVER if src == CLIENT else CLIENT
    return tracker.on_datagram(1.0, src[0], src[1], dst[0], dst[1], datagram)


def gquic_hello(name: str | None, version: int) -> QuicHello:
    return QuicHello(sni=name, version=version, gquic=True, has_ech=False)


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def tracker(counters: Counters) -> QuicTracker:
    return QuicTracker(counters)


# ---------------------------------------------------------------- CHLO messages


def test_parse_chlo_sni() -> None:
    assert parse_chlo(make_chlo(b"WWW.Google.IT.")) == "www.google.it"
    assert parse_chlo(make_chlo(None)) is None
    assert parse_chlo(make_chlo(b"")) is None


def test_chlo_length() -> None:
    chlo = make_chlo(UAID=b"Chrome/1.0")
    assert chlo_length(chlo[:7]) is None
    assert chlo_length(chlo[:20]) is None  # index still incomplete
    assert chlo_length(chlo[: 8 + 8 * 5]) == len(chlo)
    assert chlo_length(b"CHLO\x00\x00\x00\x00") == 8
    with pytest.raises(DecodeError):
        chlo_length(b"SHLO\x00\x00\x00\x00")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"REJ\x00\x00\x00\x00\x00", DecodeError),
        (b"CHLO\x05\x00\x00\x00" + bytes(16), TruncatedError),  # index cut short
        (b"CHLO\xff\x00\x00\x00" + bytes(8 * 255), DecodeError),  # too many tags
        (make_chlo()[:-320], TruncatedError),  # the SNI value is not there
        (make_chlo(b"caf\xc3\xa9.example"), DecodeError),
    ],
)
def test_bad_chlo(message: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_chlo(message)


def test_chlo_offsets_going_backwards() -> None:
    message = b"CHLO\x02\x00\x00\x00" + b"PAD\x00" + (9).to_bytes(4, "little")
    message += TAG_SNI + (3).to_bytes(4, "little") + bytes(9)
    with pytest.raises(DecodeError):
        parse_chlo(message)


def test_version_numbers() -> None:
    assert gquic_version_number(Q046) == 46
    assert gquic_version_number(Q025) == 25
    assert gquic_version_number(0x00000001) is None
    assert gquic_version_number(0x5130344A) is None  # 'Q04J'


# ---------------------------------------------------------------- packets


@pytest.mark.parametrize(("version", "flags"), [(Q025, 0x0D), (0x51303335, 0x09), (Q043, 0x09)])
def test_legacy_packet(version: int, flags: int) -> None:
    packet = make_legacy(version, make_chlo(), flags=flags)
    assert is_legacy_client_packet(packet)
    assert parse_legacy_packet(packet) == GquicChlo(version, CID, "www.google.it")


def test_legacy_packet_with_offset_field() -> None:
    assert parse_legacy_packet(make_legacy(Q043, make_chlo(), offset=0)) is not None
    assert parse_legacy_packet(make_legacy(Q043, make_chlo(), offset=512)) is None


def test_legacy_packets_without_a_chlo() -> None:
    assert parse_legacy_packet(make_legacy(Q043, make_chlo(), stream_id=3)) is None
    assert parse_legacy_packet(make_legacy(Q043, b"SHLO" + bytes(20))) is None
    encrypted = make_legacy(Q043, b"")[:26] + bytes.fromhex("17e3a9") + bytes(100)
    assert parse_legacy_packet(encrypted) is None
    assert parse_legacy_packet(make_legacy(Q043, make_chlo(), flags=0x0B)) is None  # reset flag


def test_ietf_short_header_is_not_legacy_gquic() -> None:
    assert not is_legacy_client_packet(b"\x49" + CID + b"Q043" + bytes(40))  # fixed bit set
    assert not is_legacy_client_packet(b"\x09" + CID + b"X043" + bytes(40))


def test_q046_packet() -> None:
    assert parse_long_header_packet(make_q046(make_chlo()), Q046) == GquicChlo(
        Q046, CID, "www.google.it"
    )
    assert parse_long_header_packet(make_q046(make_chlo(), ptype=1), Q046) is None  # 0-RTT
    assert parse_long_header_packet(make_q046(make_chlo()), 0x51303438) is None  # Q048


# ---------------------------------------------------------------- the tracker


def test_tracker_reports_each_connection_once(tracker: QuicTracker, counters: Counters) -> None:
    inchoate = make_q046(make_chlo())
    full = make_q046(make_chlo(STK=b"token" * 10))
    assert feed(tracker, inchoate) == gquic_hello("www.google.it", Q046)
    assert feed(tracker, full) is None  # the full CHLO after REJ: same connection ID
    other = make_q046(make_chlo(b"maps.google.it"), cid=b"\x01" * 8)
    assert feed(tracker, other) == gquic_hello("maps.google.it", Q046)
    assert counters.snapshot() == {"gquic.hello": 2}


def test_tracker_legacy(tracker: QuicTracker) -> None:
    assert feed(tracker, make_legacy(Q025, make_chlo())) == gquic_hello("www.google.it", Q025)


def test_tracker_counts_truncated_and_unsupported(tracker: QuicTracker, counters: Counters) -> None:
    packet = make_legacy(Q043, make_chlo())
    assert feed(tracker, packet[:-320]) is None  # a CHLO longer than its packet, SNI beyond
    assert counters.get("gquic.truncated") == 1
    bad = make_legacy(Q043, make_chlo(b"\xff\xfe"))
    assert feed(tracker, bad) is None
    assert counters.get("gquic.malformed") == 1
    assert feed(tracker, make_q046(make_chlo()).replace(b"Q046", b"Q048", 1)) is None
    assert counters.get("gquic.unsupported_version") == 1
    assert counters.get("gquic.hello") == 0


def test_tracker_ignores_encrypted_q046(tracker: QuicTracker, counters: Counters) -> None:
    assert feed(tracker, make_q046(b"\x9a" * 300, ptype=1)) is None
    assert counters.snapshot() == {}


def test_q050_protected_chlo(tracker: QuicTracker, counters: Counters) -> None:
    chlo = make_chlo(b"Photos.Google.COM")
    first, second = gquic_crypto(0, chlo[:200]), gquic_crypto(200, chlo[200:])
    assert feed(tracker, make_protected(VERSION_Q050, b"\x07" + second, pn=1)) is None
    assert feed(tracker, make_protected(VERSION_Q050, first)) == gquic_hello(
        "photos.google.com", VERSION_Q050
    )
    assert counters.get("quic.decrypt_failed") == 0


def test_t050_carries_tls(tracker: QuicTracker) -> None:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    hello = b"\x01" + len(body).to_bytes(3, "big") + body  # no extensions, so no SNI
    assert feed(tracker, make_protected(VERSION_T050, gquic_crypto(0, hello))) == QuicHello(
        sni=None, version=VERSION_T050, gquic=False, has_ech=False
    )


# ---------------------------------------------------------------- never raises


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\x09", b"\x0d", b"\x19", b"\x39"]), st.binary(max_size=1400))
def test_random_legacy_packets_never_raise(flags: bytes, rest: bytes) -> None:
    packet = flags + CID + b"Q043" + rest
    result = QuicTracker(Counters()).on_datagram(0.0, "a", 1, "b", 443, packet)
    assert result is None or isinstance(result, QuicHello)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.integers(0, 255))
def test_random_q046_packets_never_raise(rest: bytes, lengths: int) -> None:
    packet = b"\xc3Q046" + bytes((lengths,)) + rest
    result = QuicTracker(Counters()).on_datagram(0.0, "a", 1, "b", 443, packet)
    assert result is None or isinstance(result, QuicHello)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_chlo_packets_never_raise(data: st.DataObject) -> None:
    packet = bytearray(make_legacy(Q043, make_chlo()))
    for _ in range(data.draw(st.integers(1, 6))):
        packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    result = QuicTracker(Counters()).on_datagram(0.0, "a", 1, "b", 443, bytes(packet))
    assert result is None or isinstance(result, QuicHello)


# ---------------------------------------------------------------- real captures


def udp_datagrams(path: Path) -> Iterator[tuple[float, str, int, str, int, bytes]]:
    counters = Counters()
    decoder = PacketDecoder(counters)
    source = PcapFileSource(path, counters)
    try:
        for ts, linktype, frame in source.frames():
            segment = decoder.decode(ts, linktype, bytes(frame))
            if segment is not None and segment[0] == UDP:
                _, src, dst, sport, dport, _, _, payload = segment
                yield ts, addr_text(src), sport, addr_text(dst), dport, payload
    finally:
        source.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # tshark finds the SNI in 2 packets: the inchoate and the full CHLO of one connection.
        ("ndpi__quic046.pcap", [gquic_hello("i.ytimg.com", Q046)]),
        ("ndpi__http_ipv6.pcap", [gquic_hello("www.google.it", Q025)]),
    ],
)
def test_captures(name: str, expected: list[QuicHello]) -> None:
    counters = Counters()
    tracker = QuicTracker(counters)
    found = [
        hello
        for ts, src, sport, dst, dport, payload in udp_datagrams(PCAPS / name)
        if (hello := tracker.on_datagram(ts, src, sport, dst, dport, payload)) is not None
    ]
    assert found == expected
    assert counters.get("gquic.malformed") == counters.get("gquic.truncated") == 0
