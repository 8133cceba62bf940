"""Tests for QUIC Initial SNI extraction: keys, protection, frames, reassembly and the tracker."""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.decode.packet import UDP, PacketDecoder, addr_text
from agent.exceptions import DecodeError, TruncatedError
from agent.extract.quic import QuicHello, QuicTracker
from agent.extract.quic_crypto import (
    VERSION_V1,
    VERSION_V2,
    InitialKeys,
    client_initial_secret,
    decode_packet_number,
    derive_key_iv_hp,
    open_long_packet,
    protect_long_packet,
    version_spec,
)
from agent.extract.quic_frames import (
    CryptoStream,
    gquic_crypto_chunks,
    initial_crypto_chunks,
    read_varint,
)
from tests.conftest import PCAPS

CLIENT = ("192.0.2.10", 50000)
SERVER = ("198.51.100.7", 443)
DRAFT_29 = 0xFF00001D
DRAFT_27 = 0xFF00001B
DRAFT_22 = 0xFF000016
MVFST_27 = 0xFACEB002

# ---------------------------------------------------------------- RFC 9001 / RFC 9369 vectors
RFC_DCID = bytes.fromhex("8394c8f03e515708")
# The client Initial's plaintext (RFC 9001 A.2, identical in RFC 9369 A.2): a CRYPTO frame with a
# ClientHello for example.com, then PADDING.
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)
RFC9001_CLIENT_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
RFC9001_CLIENT_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC9369_CLIENT_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
RFC9369_CLIENT_PACKET = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)


# ---------------------------------------------------------------- factories


def varint(value: int) -> bytes:
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def _ext(etype: int, body: bytes) -> bytes:
    return etype.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def make_client_hello(
    sni: str | None = "chat.example.ai", *, pad: int = 0, ech: bool = False
) -> bytes:
    """A TLS 1.3 ClientHello handshake message (header included)."""
    exts = b""
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + len(name).to_bytes(2, "big") + name
        exts += _ext(0x0000, len(entry).to_bytes(2, "big") + entry)
    exts += _ext(0x002B, b"\x02\x03\x04")
    if ech:
        exts += _ext(0xFE0D, bytes(40))
    if pad:
        exts += _ext(0x0015, bytes(pad))
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(exts).to_bytes(2, "big")
        + exts
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def split_crypto(hello: bytes, parts: int, *, shuffle: int | None = None) -> list[bytes]:
    """CRYPTO frames covering ``hello`` in ``parts`` pieces, optionally shuffled (seeded)."""
    step = -(-len(hello) // parts)
    frames = [crypto_frame(i, hello[i : i + step]) for i in range(0, len(hello), step)]
    if shuffle is not None:
        random.Random(shuffle).shuffle(frames)
    return frames


def long_header(
    version: int,
    ptype: int,
    dcid: bytes,
    scid: bytes = b"",
    *,
    token: bytes | None = b"",
    length: int,
    pn: int,
    pn_len: int = 2,
) -> bytes:
    first = 0xC0 | (ptype << 4) | (pn_len - 1)
    head = bytes((first,)) + version.to_bytes(4, "big")
    head += bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    if token is not None:
        head += varint(len(token)) + token
    return head + (length | 0x4000).to_bytes(2, "big") + pn.to_bytes(pn_len, "big")


def make_initial(
    payload: bytes,
    *,
    dcid: bytes = b"\x11" * 8,
    scid: bytes = b"\x22" * 8,
    version: int = VERSION_V1,
    pn: int = 0,
    key_dcid: bytes | None = None,
    token: bytes = b"",
    pad_to: int | None = 1200,
) -> bytes:
    """A client Initial packet with ``payload`` as its frames, protected with keys from
    ``key_dcid`` (default: its own DCID), padded with PADDING frames to ``pad_to`` bytes."""
    spec = version_spec(version)
    assert spec is not None
    pn_len = 2
    if pad_to is not None:
        overhead = len(long_header(version, 0, dcid, scid, token=token, length=0, pn=0)) + 16
        payload += bytes(max(0, pad_to - overhead - len(payload)))
    header = long_header(
        version,
        spec.initial_type,
        dcid,
        scid,
        token=token,
        length=pn_len + len(payload) + 16,
        pn=pn,
        pn_len=pn_len,
    )
    keys = InitialKeys.for_client(spec, key_dcid if key_dcid is not None else dcid)
    return protect_long_packet(keys, header, pn, payload)


def make_packet(version: int, ptype: int, body: bytes, dcid: bytes = b"\x11" * 8) -> bytes:
    """An unprotected long-header packet (0-RTT/Handshake stand-in: we never open those)."""
    return long_header(version, ptype, dcid, token=None, length=2 + len(body), pn=0) + body


def make_retry(
    scid: bytes,
    *,
    version: int = VERSION_V1,
    odcid: bytes = b"\x11" * 8,
    dcid: bytes = b"\x22" * 8,
    forged: bool = False,
) -> bytes:
    """A server Retry with its integrity tag over ``odcid`` (RFC 9001 section 5.8)."""
    spec = version_spec(version)
    assert spec is not None and spec.retry_key is not None and spec.retry_nonce is not None
    first = 0xC0 | (spec.retry_type << 4)
    head = bytes((first,)) + version.to_bytes(4, "big")
    packet = head + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid + b"token"
    pseudo = bytes((len(odcid),)) + (bytes(len(odcid)) if forged else odcid) + packet
    return packet + AESGCM(spec.retry_key).encrypt(spec.retry_nonce, b"", pseudo)


def feed(
    tracker: QuicTracker,
    datagram: bytes,
    *,
    src: tuple[str, int] = CLIENT,
    dst: tuple[str, int] = SERVER,
    ts: float = 0.0,
) -> QuicHello | None:
    return tracker.on_datagram(ts, src[0], src[1], dst[0], dst[1], datagram)


def hello_of(name: str | None, version: int = VERSION_V1, *, ech: bool = False) -> QuicHello:
    return QuicHello(sni=name, version=version, gquic=False, has_ech=ech)


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def tracker(counters: Counters) -> QuicTracker:
    return QuicTracker(counters)


# ---------------------------------------------------------------- keys and protection


def test_rfc9001_client_initial_keys() -> None:
    spec = version_spec(VERSION_V1)
    assert spec is not None
    secret = client_initial_secret(spec.salt, RFC_DCID)
    assert secret.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    key, iv, hp = derive_key_iv_hp(secret, spec.labels)
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9369_client_initial_keys() -> None:
    spec = version_spec(VERSION_V2)
    assert spec is not None
    secret = client_initial_secret(spec.salt, RFC_DCID)
    assert secret.hex() == "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
    key, iv, hp = derive_key_iv_hp(secret, spec.labels)
    assert key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert iv.hex() == "91f73e2351d8fa91660e909f"
    assert hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"


def test_rfc9001_header_protection_mask() -> None:
    keys = InitialKeys.for_client(version_spec(VERSION_V1) or pytest.fail(), RFC_DCID)
    sample = bytes.fromhex("d1b1c98dd7689fb8ec11d242b123dc9b")
    assert keys.header_mask(sample).hex() == "437b9aec36"


@pytest.mark.parametrize(
    ("version", "plain_header", "packet"),
    [
        (VERSION_V1, RFC9001_CLIENT_HEADER, RFC9001_CLIENT_PACKET),
        (VERSION_V2, RFC9369_CLIENT_HEADER, RFC9369_CLIENT_PACKET),
    ],
)
def test_rfc_client_initial_opens_and_seals(
    version: int, plain_header: bytes, packet: bytes
) -> None:
    spec = version_spec(version)
    assert spec is not None
    keys = InitialKeys.for_client(spec, RFC_DCID)
    pn_offset = len(plain_header) - 4
    opened = open_long_packet(keys, packet, 0, pn_offset, len(packet), largest_pn=-1)
    assert opened == (2, RFC_CLIENT_PAYLOAD)
    # The factory's sealing is the exact inverse, so synthetic packets below are real ones.
    assert protect_long_packet(keys, plain_header, 2, RFC_CLIENT_PAYLOAD) == packet


@pytest.mark.parametrize(
    ("version", "packet"),
    [(VERSION_V1, RFC9001_CLIENT_PACKET), (VERSION_V2, RFC9369_CLIENT_PACKET)],
)
def test_tracker_reads_rfc_client_initial(
    version: int, packet: bytes, tracker: QuicTracker, counters: Counters
) -> None:
    assert feed(tracker, packet) == hello_of("example.com", version)
    assert counters.snapshot() == {"quic.hello": 1}


def test_wrong_keys_do_not_open() -> None:
    keys = InitialKeys.for_client(version_spec(VERSION_V1) or pytest.fail(), b"\x00" * 8)
    assert open_long_packet(keys, RFC9001_CLIENT_PACKET, 0, 18, 1200, -1) is None


def test_open_rejects_packet_too_short_to_sample() -> None:
    keys = InitialKeys.for_client(version_spec(VERSION_V1) or pytest.fail(), RFC_DCID)
    with pytest.raises(TruncatedError):
        open_long_packet(keys, RFC9001_CLIENT_PACKET[:30], 0, 18, 30, -1)


@pytest.mark.parametrize(
    ("largest", "truncated", "nbits", "expected"),
    [
        (0xA82F30EA, 0x9B32, 16, 0xA82F9B32),  # RFC 9000 appendix A.3
        (-1, 0, 8, 0),  # the first packet of a space
        (0xFF, 0x01, 8, 0x101),  # wraps forward past the window
        (0x101, 0xFF, 8, 0xFF),  # a late packet from just before the wrap
        (5, 3, 32, 3),
    ],
)
def test_decode_packet_number(largest: int, truncated: int, nbits: int, expected: int) -> None:
    assert decode_packet_number(largest, truncated, nbits) == expected


def test_version_table() -> None:
    salts = {
        VERSION_V1: "38762cf7f55934b34d179ae6a4c80cadccbb7f0a",
        VERSION_V2: "0dede3def700a6db819381be6e269dcbf9bd2ed9",
        DRAFT_29: "afbfec289993d24c9e9786f19c6111e04390a899",
        0xFF000022: "afbfec289993d24c9e9786f19c6111e04390a899",  # draft-34
        DRAFT_27: "c3eef712c72ebb5a11a7d2432bb46365bef9f502",
        0xFF000017: "c3eef712c72ebb5a11a7d2432bb46365bef9f502",  # draft-23
        DRAFT_22: "7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a",
        MVFST_27: "c3eef712c72ebb5a11a7d2432bb46365bef9f502",
        0xFACEB00E: "c3eef712c72ebb5a11a7d2432bb46365bef9f502",
        0xFACEB001: "7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a",
        0x1A2A3A4A: "afbfec289993d24c9e9786f19c6111e04390a899",  # reserved, as Wireshark
    }
    for version, salt in salts.items():
        spec = version_spec(version)
        assert spec is not None and spec.salt.hex() == salt, hex(version)
    v2 = version_spec(VERSION_V2)
    assert v2 is not None and (v2.initial_type, v2.retry_type) == (1, 0)
    assert v2.labels == (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")
    for unknown in (0x00000002, 0xFF000015, 0x12345678, 0x51303436):
        assert version_spec(unknown) is None


# ---------------------------------------------------------------- frames and reassembly


def test_read_varint_sizes() -> None:
    for value in (0, 37, 15293, 494878333, 151288809941952652):
        assert read_varint(varint(value), 0) == (value, len(varint(value)))
    assert read_varint(bytes.fromhex("c2197c5eff14e88c"), 0)[0] == 151288809941952652
    with pytest.raises(TruncatedError):
        read_varint(b"\x80\x01", 0)


def test_initial_frames_skip_padding_ping_ack_and_close() -> None:
    ack_ecn = b"\x03" + varint(10) + varint(3) + varint(2) + varint(1)
    ack_ecn += varint(0) + varint(2) + varint(1) + varint(0)  # two more ranges
    ack_ecn += varint(1) + varint(2) + varint(3)  # ECN counts
    close = b"\x1c" + varint(0x0A) + varint(0x06) + varint(3) + b"bye"
    ack = b"\x02" + varint(1) + varint(0) + varint(0) + varint(0)
    parts = [bytes(5), b"\x01", crypto_frame(100, b"world"), ack_ecn, ack]
    payload = b"".join([*parts, crypto_frame(0, b"hello"), close, bytes(50)])
    assert initial_crypto_chunks(payload) == ([(100, b"world"), (0, b"hello")], None)


def test_unknown_frame_stops_the_walk() -> None:
    payload = crypto_frame(0, b"abc") + b"\x08\x00" + crypto_frame(3, b"def")
    assert initial_crypto_chunks(payload) == ([(0, b"abc")], 0x08)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x06\x00\x10abc",  # CRYPTO longer than the packet
        b"\x06\x40",  # offset varint cut short
        b"\x02" + varint(1) + varint(0) + varint(5000) + varint(0),  # absurd range count
        b"\x02" + varint(1) + varint(0) + varint(2) + varint(0) + varint(1),  # ranges cut short
        b"\x1c\x00\x00\x20abc",  # close reason longer than the packet
    ],
)
def test_malformed_frames_raise(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        initial_crypto_chunks(payload)


def test_gquic_framing_crypto() -> None:
    payload = bytes(3) + b"\x07" + b"\x08" + varint(0) + varint(4) + b"CHLO" + b"\x40rest"
    assert gquic_crypto_chunks(payload) == ([(0, b"CHLO")], 0x40)


def test_crypto_stream_out_of_order_and_overlapping() -> None:
    data = bytes(range(200))
    stream = CryptoStream(limit=1000)
    stream.add(150, data[150:])
    stream.add(50, data[50:100])
    assert stream.contiguous() == 0
    stream.add(0, data[0:60])  # overlaps the second chunk
    assert stream.contiguous() == 100
    stream.add(90, data[90:160])  # bridges the gap and overlaps both sides
    assert stream.contiguous() == 200
    assert stream.prefix(200) == data
    stream.add(0, data[:10])  # a retransmission changes nothing
    assert stream.contiguous() == 200


def test_crypto_stream_keeps_only_limit_bytes() -> None:
    stream = CryptoStream(limit=64)
    stream.add(1000, b"x" * 100)  # entirely past the limit: ignored, nothing allocated
    assert stream.buffered == 0
    stream.add(0, bytes(100))
    assert stream.contiguous() == 64 and stream.buffered == 64


# ---------------------------------------------------------------- the tracker


@pytest.mark.parametrize(
    "version", [VERSION_V1, VERSION_V2, DRAFT_29, DRAFT_27, DRAFT_22, MVFST_27]
)
def test_single_initial(version: int, tracker: QuicTracker) -> None:
    hello = make_client_hello("Chat.Example.AI.")
    assert feed(tracker, make_initial(crypto_frame(0, hello), version=version)) == hello_of(
        "chat.example.ai", version
    )


def test_reserved_version_uses_draft29_keys(tracker: QuicTracker) -> None:
    packet = make_initial(crypto_frame(0, make_client_hello("x.example")), version=0x0A0A0A0A)
    assert feed(tracker, packet) == hello_of("x.example", 0x0A0A0A0A)


def test_hello_without_sni_and_with_ech(tracker: QuicTracker) -> None:
    assert feed(tracker, make_initial(crypto_frame(0, make_client_hello(None)))) == hello_of(None)
    other = ("192.0.2.11", 40000)
    packet = make_initial(crypto_frame(0, make_client_hello("public.example", ech=True)))
    assert feed(tracker, packet, src=other) == hello_of("public.example", ech=True)


def test_crypto_out_of_order_within_and_across_packets(
    tracker: QuicTracker, counters: Counters
) -> None:
    hello = make_client_hello("split.example", pad=2500)
    frames = split_crypto(hello, 8, shuffle=7)
    assert not any(f.startswith(b"\x06\x00") for f in frames[:2])  # offset 0 is not first
    packets = [
        make_initial(b"".join(frames[:3]) + b"\x01", pn=0),
        make_initial(b"".join(frames[3:6]), pn=1, dcid=b"\x33" * 8, key_dcid=b"\x11" * 8),
        make_initial(b"".join(frames[6:]), pn=2),
    ]
    results = [feed(tracker, p) for p in (packets[2], packets[0], packets[1])]
    assert results == [None, None, hello_of("split.example")]
    assert counters.get("quic.hello") == 1


def test_later_initial_with_server_chosen_dcid_uses_first_keys(
    tracker: QuicTracker, counters: Counters
) -> None:
    hello = make_client_hello("dcid.example")
    first, second = split_crypto(hello, 2)
    assert feed(tracker, make_initial(first, dcid=b"\x11" * 8)) is None
    later = make_initial(second, dcid=b"\x99" * 5, key_dcid=b"\x11" * 8, pn=1)
    assert feed(tracker, later) == hello_of("dcid.example")
    assert counters.get("quic.decrypt_failed") == 0


def test_one_result_per_hello(tracker: QuicTracker, counters: Counters) -> None:
    packet = make_initial(crypto_frame(0, make_client_hello("once.example")))
    assert feed(tracker, packet) == hello_of("once.example")
    assert feed(tracker, packet) is None  # retransmission
    ack_only = make_initial(b"\x02" + varint(0) + varint(0) + varint(0) + varint(0), pn=1)
    assert feed(tracker, ack_only) is None
    # The same hello from a new 4-tuple is a new connection.
    assert feed(tracker, packet, src=("192.0.2.10", 50001)) == hello_of("once.example")
    # A new DCID whose own keys open it, on the same 4-tuple after completion: port reuse.
    reused = make_initial(crypto_frame(0, make_client_hello("next.example")), dcid=b"\x44" * 8)
    assert feed(tracker, reused) == hello_of("next.example")
    assert counters.get("quic.flow_restarted") == 1
    assert counters.get("quic.hello") == 3


def test_new_attempt_after_version_negotiation(tracker: QuicTracker, counters: Counters) -> None:
    first, _ = split_crypto(make_client_hello("vn.example", pad=1500), 2)
    assert feed(tracker, make_initial(first, version=0x1A2A3A4A)) is None
    version_negotiation = b"\x80\x00\x00\x00\x00\x08" + b"\x22" * 8 + b"\x08" + b"\x11" * 8
    assert feed(tracker, version_negotiation + b"\x00\x00\x00\x01", src=SERVER, dst=CLIENT) is None
    # The client starts over in v1, from CRYPTO offset 0, with the same DCID.
    again = make_client_hello("vn.example", pad=1200)
    assert feed(tracker, make_initial(crypto_frame(0, again))) == hello_of("vn.example")
    assert counters.get("quic.flow_restarted") == 1


def test_compatible_version_upgrade_keeps_the_connection(
    tracker: QuicTracker, counters: Counters
) -> None:
    packet = make_initial(crypto_frame(0, make_client_hello("up.example")))
    assert feed(tracker, packet) == hello_of("up.example")
    # The server answered in v2 (RFC 9368); the client acknowledges in v2 Initials, to the
    # server's CID, protected with v2 keys from its original DCID.
    ack = b"\x02" + varint(0) + varint(0) + varint(0) + varint(0)
    v2_ack = make_initial(ack, version=VERSION_V2, dcid=b"\x55" * 8, key_dcid=b"\x11" * 8, pn=1)
    assert feed(tracker, v2_ack) is None
    assert feed(tracker, v2_ack) is None
    assert counters.get("quic.version_upgrade") == 1
    assert counters.get("quic.decrypt_failed") == counters.get("quic.flow_restarted") == 0


def test_retry_switches_keys_mid_hello(tracker: QuicTracker, counters: Counters) -> None:
    hello = make_client_hello("retry.example")
    first, second = split_crypto(hello, 2)
    retry_scid = b"\x77" * 8
    assert feed(tracker, make_initial(first)) is None
    assert feed(tracker, make_retry(retry_scid), src=SERVER, dst=CLIENT) is None
    # After the Retry, the old keys would fail; the flow follows the Retry's SCID.
    after = make_initial(second, dcid=retry_scid, pn=1, token=b"token")
    assert feed(tracker, after) == hello_of("retry.example")
    assert counters.get("quic.retry") == 1
    assert counters.get("quic.flow_restarted") == 0
    assert counters.get("quic.decrypt_failed") == 0


def test_forged_or_second_retry_is_ignored(tracker: QuicTracker, counters: Counters) -> None:
    first, second = split_crypto(make_client_hello("forged.example"), 2)
    assert feed(tracker, make_initial(first)) is None
    forged = make_retry(b"\x66" * 8, forged=True)  # its tag is not over our client's DCID
    assert feed(tracker, forged, src=SERVER, dst=CLIENT) is None
    assert counters.get("quic.retry_rejected") == 1
    assert feed(tracker, make_retry(b"\x77" * 8), src=SERVER, dst=CLIENT) is None
    assert feed(tracker, make_retry(b"\x88" * 8), src=SERVER, dst=CLIENT) is None  # second
    assert counters.get("quic.retry") == 1
    after = make_initial(second, dcid=b"\x77" * 8, pn=1, token=b"token")
    assert feed(tracker, after) == hello_of("forged.example")
    assert counters.get("quic.flow_restarted") == 0


def test_retry_v2_type_bits(tracker: QuicTracker, counters: Counters) -> None:
    hello = make_client_hello("retry2.example")
    first, second = split_crypto(hello, 2)
    assert feed(tracker, make_initial(first, version=VERSION_V2)) is None
    retry = make_retry(b"\x78" * 8, version=VERSION_V2)
    assert (retry[0] >> 4) & 3 == 0  # RFC 9369: Retry is type 0 in v2
    assert feed(tracker, retry, src=SERVER, dst=CLIENT) is None
    after = make_initial(second, dcid=b"\x78" * 8, pn=1, version=VERSION_V2)
    assert feed(tracker, after) == hello_of("retry2.example", VERSION_V2)
    assert counters.get("quic.retry") == 1


def test_server_initials_are_ignored(tracker: QuicTracker, counters: Counters) -> None:
    first, second = split_crypto(make_client_hello("srv.example"), 2)
    feed(tracker, make_initial(first))
    # A server Initial (protected with server keys we never derive) is not even opened.
    server_initial = make_initial(b"\x02\x00\x00\x00\x00", dcid=b"\x22" * 8, pad_to=None)
    assert feed(tracker, server_initial, src=SERVER, dst=CLIENT) is None
    assert counters.get("quic.decrypt_failed") == 0
    assert feed(tracker, make_initial(second, pn=1)) == hello_of("srv.example")


def test_coalesced_packets(tracker: QuicTracker) -> None:
    handshake = make_packet(VERSION_V1, 2, b"\xee" * 40)
    zero_rtt = make_packet(VERSION_V1, 1, b"\xdd" * 60)
    initial = make_initial(crypto_frame(0, make_client_hello("co.example")), pad_to=None)
    datagram = handshake + initial + zero_rtt + bytes(300)  # trailing padding bytes
    assert feed(tracker, datagram) == hello_of("co.example")


def test_hello_split_over_coalesced_initials(tracker: QuicTracker) -> None:
    first, second = split_crypto(make_client_hello("two.example"), 2)
    datagram = make_initial(second, pn=1, pad_to=None) + make_initial(first, pn=0, pad_to=None)
    assert feed(tracker, datagram) == hello_of("two.example")


def test_unknown_frame_is_counted(tracker: QuicTracker, counters: Counters) -> None:
    first, second = split_crypto(make_client_hello("frames.example"), 2)
    assert feed(tracker, make_initial(first + b"\x1e" + second)) is None
    assert counters.get("quic.unknown_frame") == 1
    assert feed(tracker, make_initial(second, pn=1)) == hello_of("frames.example")


def test_fast_reject_short_header_and_unknown_version(
    tracker: QuicTracker, counters: Counters
) -> None:
    assert feed(tracker, b"\x40" + os.urandom(1200)) is None
    assert feed(tracker, b"") is None
    assert counters.snapshot() == {}
    assert feed(tracker, b"\xc0\x12\x34\x56\x78" + bytes(1200)) is None
    assert counters.snapshot() == {"quic.unknown_version": 1}
    version_negotiation = b"\x80\x00\x00\x00\x00\x08" + bytes(8) + b"\x00" + b"\x00\x00\x00\x01"
    assert feed(tracker, version_negotiation, src=SERVER, dst=CLIENT) is None
    assert counters.snapshot() == {"quic.unknown_version": 1}
    assert len(tracker) == 0


@pytest.mark.parametrize(
    ("datagram", "counter"),
    [
        (b"\xc0\x00\x00\x00\x01", "quic.malformed"),  # too short for a long header
        (b"\xc0\x00\x00\x00\x01\x15" + bytes(40), "quic.malformed"),  # DCID of 21 bytes
        (
            b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x44\xff" + bytes(30),
            "quic.malformed",
        ),
        (
            b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x40\x40" + bytes(64),
            "quic.decrypt_failed",
        ),
        (b"\xc0\x00\x00\x00\x01\x08" + bytes(8) + b"\x00\x00\x05" + bytes(5), "quic.malformed"),
    ],
)
def test_malformed_initials_are_counted(
    datagram: bytes, counter: str, tracker: QuicTracker, counters: Counters
) -> None:
    assert feed(tracker, datagram) is None
    assert counters.get(counter) == 1


def test_malformed_hello_is_counted(tracker: QuicTracker, counters: Counters) -> None:
    bad = b"\x01\x00\x00\x10" + bytes(16)  # a ClientHello header over a body too short
    assert feed(tracker, make_initial(crypto_frame(0, bad))) is None
    assert counters.get("quic.hello_malformed") == 1
    not_a_hello = b"\x02\x00\x00\x04abcd"  # a ServerHello type
    assert feed(tracker, make_initial(crypto_frame(0, not_a_hello)), src=("192.0.2.9", 9)) is None
    assert counters.get("quic.hello_malformed") == 2


def test_hello_larger_than_the_per_flow_limit(counters: Counters) -> None:
    tracker = QuicTracker(counters, max_bytes_per_flow=1024)
    frames = split_crypto(make_client_hello("big.example", pad=3000), 4)
    results = [feed(tracker, make_initial(f, pn=i)) for i, f in enumerate(frames)]
    assert results == [None] * 4
    assert counters.get("quic.hello_too_large") == 1


def test_eviction_of_oldest_flow(counters: Counters) -> None:
    tracker = QuicTracker(counters, max_flows=2)
    halves = split_crypto(make_client_hello("evict.example"), 2)
    for port in (1, 2, 3):
        feed(tracker, make_initial(halves[0]), src=("192.0.2.1", port))
    assert counters.get("quic.flows_evicted") == 1
    assert len(tracker) == 2
    # The first flow is gone, so its second half alone cannot complete it.
    assert feed(tracker, make_initial(halves[1], pn=1), src=("192.0.2.1", 1)) is None
    assert feed(tracker, make_initial(halves[1], pn=1), src=("192.0.2.1", 3)) is not None


def test_incomplete_hello_times_out(counters: Counters) -> None:
    tracker = QuicTracker(counters, timeout=10.0)
    first, second = split_crypto(make_client_hello("slow.example"), 2)
    feed(tracker, make_initial(first), ts=100.0)
    tracker.expire(105.0)
    assert len(tracker) == 1
    tracker.expire(110.5)
    assert len(tracker) == 0
    assert counters.get("quic.hello_timeout") == 1
    assert feed(tracker, make_initial(second, pn=1), ts=111.0) is None


def test_completed_flows_expire_without_counting(counters: Counters) -> None:
    tracker = QuicTracker(counters, timeout=1.0)
    feed(tracker, make_initial(crypto_frame(0, make_client_hello("a.example"))), ts=5.0)
    tracker.expire(7.0)
    assert len(tracker) == 0
    assert counters.get("quic.hello_timeout") == 0


# ---------------------------------------------------------------- never raises


_tracker_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_tracker_settings
@given(st.binary(max_size=1500))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = QuicTracker(Counters()).on_datagram(0.0, "a", 1, "b", 2, data)
    assert result is None or isinstance(result, QuicHello)


@_tracker_settings
@given(
    st.sampled_from([VERSION_V1, VERSION_V2, DRAFT_29, 0x51303530]),
    st.integers(0, 3),
    st.binary(max_size=1300),
)
def test_long_headers_of_known_versions_never_raise(version: int, ptype: int, rest: bytes) -> None:
    data = bytes((0xC0 | ptype << 4,)) + version.to_bytes(4, "big") + rest
    tracker = QuicTracker(Counters())
    for src, dst in ((CLIENT, SERVER), (SERVER, CLIENT)):
        result = feed(tracker, data, src=src, dst=dst)
        assert result is None or isinstance(result, QuicHello)


@_tracker_settings
@given(st.binary(max_size=1100), st.sampled_from([VERSION_V1, VERSION_V2, 0x51303530]))
def test_random_plaintext_in_valid_initials_never_raises(payload: bytes, version: int) -> None:
    # Properly protected, so the frame walker and hello parsers see the random bytes.
    result = feed(QuicTracker(Counters()), make_initial(payload, version=version))
    assert result is None or isinstance(result, QuicHello)


@_tracker_settings
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.binary(max_size=300)), min_size=1, max_size=6),
    st.binary(max_size=8),
)
def test_random_crypto_frames_never_raise(chunks: list[tuple[int, bytes]], tail: bytes) -> None:
    tracker = QuicTracker(Counters(), max_bytes_per_flow=2048)
    hello = make_client_hello("fuzz.example")
    frames = b"".join(crypto_frame(off, hello[:5] + data) for off, data in chunks) + tail
    result = feed(tracker, make_initial(frames))
    assert result is None or isinstance(result, QuicHello)


@_tracker_settings
@given(st.data())
def test_mutated_initials_never_raise(data: st.DataObject) -> None:
    packet = bytearray(make_initial(crypto_frame(0, make_client_hello("mut.example"))))
    for _ in range(data.draw(st.integers(1, 8))):
        packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(packet)))
    tracker = QuicTracker(Counters())
    result = feed(tracker, bytes(packet[:cut]))
    assert result is None or isinstance(result, QuicHello)


# ---------------------------------------------------------------- aioquic as an oracle


def _aioquic_client(name: str, version: int, big: bool = False) -> object:
    aioquic = pytest.importorskip("aioquic.quic.connection")
    configuration = pytest.importorskip("aioquic.quic.configuration")
    config = configuration.QuicConfiguration(
        is_client=True,
        server_name=name,
        alpn_protocols=["h3"],
        original_version=version,
        supported_versions=[version],
        quantum_readiness_test=big,  # a ~1.2 KB dummy extension: the hello spans two Initials
    )
    client = aioquic.QuicConnection(configuration=config)
    client.connect(("127.0.0.1", 4433), now=0.0)
    return client


def _datagrams(client: object, now: float) -> list[bytes]:
    return [data for data, _ in client.datagrams_to_send(now=now)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [VERSION_V1, VERSION_V2])
@pytest.mark.parametrize("big", [False, True])
def test_aioquic_initials(version: int, big: bool, tracker: QuicTracker) -> None:
    client = _aioquic_client("Api.Anthropic.example", version, big)
    datagrams = _datagrams(client, 0.0)
    assert len(datagrams) == (2 if big else 1)
    results = [feed(tracker, d) for d in datagrams]
    assert [r for r in results if r] == [hello_of("api.anthropic.example", version)]


@pytest.mark.parametrize("version", [VERSION_V1, VERSION_V2])
def test_aioquic_retry(version: int, tracker: QuicTracker, counters: Counters) -> None:
    packet_mod = pytest.importorskip("aioquic.quic.packet")
    client = _aioquic_client("retry.anthropic.example", version, big=True)
    first, _ = _datagrams(client, 0.0)  # the second half of the hello is lost
    assert feed(tracker, first) is None
    dcil = first[5]
    original_dcid, client_scid = first[6 : 6 + dcil], first[7 + dcil : 7 + dcil + first[6 + dcil]]
    retry = packet_mod.encode_quic_retry(
        version=version,
        source_cid=b"\x5a" * 8,
        destination_cid=client_scid,
        original_destination_cid=original_dcid,
        retry_token=b"opaque-token",
    )
    assert feed(tracker, retry, src=SERVER, dst=CLIENT) is None
    client.receive_datagram(retry, ("127.0.0.1", 4433), now=0.1)  # type: ignore[attr-defined]
    results = [feed(tracker, d, ts=0.1) for d in _datagrams(client, 0.1)]
    assert [r for r in results if r] == [hello_of("retry.anthropic.example", version)]
    assert counters.get("quic.retry") == 1
    assert counters.get("quic.flow_restarted") == counters.get("quic.decrypt_failed") == 0


# ---------------------------------------------------------------- real captures vs tshark


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


def hellos_in(path: Path, counters: Counters | None = None) -> list[QuicHello]:
    tracker = QuicTracker(counters or Counters())
    found = []
    for ts, src, sport, dst, dport, payload in udp_datagrams(path):
        hello = tracker.on_datagram(ts, src, sport, dst, dport, payload)
        if hello is not None:
            found.append(hello)
        tracker.expire(ts)
    return found


def tshark_expected() -> dict[str, collections.Counter[tuple[str, str]]]:
    expected: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(
        collections.Counter
    )
    for line in (PCAPS / "tshark_expected.tsv").read_text().splitlines()[1:]:
        name, kind, value, count = line.split("\t")
        if kind in ("quic_sni", "gquic_sni"):
            expected[name][(kind, value)] += int(count)
    return expected


# Where Lantern and tshark 4.0 disagree, and why Lantern is right.
KNOWN_EXTRA = {
    # DNS-over-QUIC on UDP 853: tshark does not dissect that port as QUIC unless told to
    # (`-d udp.port==853,quic`, which then shows this same v1 ClientHello: ALPN doq, no SNI);
    # Zeek's quic.log for this trace also has the hello without a server name.
    "zeek__quic_quicdoq.pcap": {("quic_sni", "(no-sni)")},
}
# tshark counts every packet with a CHLO; the client sends an inchoate CHLO and then a full one
# after the server's REJ on the same connection ID, and Lantern reports one per connection.
PER_CONNECTION_GQUIC = {"ndpi__quic046.pcap": 1}

ALL_PCAPS = sorted(p.name for p in PCAPS.glob("*.pcap*"))


def test_every_capture_is_covered() -> None:
    assert len(ALL_PCAPS) >= 42
    assert set(tshark_expected()) <= set(ALL_PCAPS)


@pytest.mark.parametrize("name", ALL_PCAPS)
def test_capture_matches_tshark(name: str) -> None:
    counters = Counters()
    found = hellos_in(PCAPS / name, counters)
    got = collections.Counter(
        ("gquic_sni" if h.gquic else "quic_sni", h.sni or "(no-sni)") for h in found
    )
    expected = tshark_expected().get(name, collections.Counter())
    assert set(got) == set(expected) | KNOWN_EXTRA.get(name, set())
    # Per-name counts agree too: one result per ClientHello, as tshark counts IETF hellos.
    for key, count in expected.items():
        wanted = PER_CONNECTION_GQUIC.get(name, count) if key[0] == "gquic_sni" else count
        assert got[key] == wanted, key
    assert counters.get("quic.decrypt_failed") == 0
    assert counters.get("quic.malformed") == 0
    assert counters.get("quic.hello_malformed") == 0
    assert counters.get("quic.retry_rejected") == 0


def test_capture_versions() -> None:
    versions = {
        "ndpi__quic-v2.pcapng": {VERSION_V2},
        "zeek__quic_quicv2-http3-443.pcap": {VERSION_V2},
        "ndpi__quic-mvfst-27.pcapng": {MVFST_27},
        "ndpi__quic_0RTT.pcap": {VERSION_V1, 0xFF00001C},
        "ndpi__quic_frags_ch_out_of_order_same_packet_craziness.pcapng": {DRAFT_29},
        "ndpi__quic_interop_V.pcapng": {0x0A0A0A0A},
        "zeek__quic_interop_quic-go_quic-go_retry.pcap": {VERSION_V1},
    }
    for name, wanted in versions.items():
        assert {h.version for h in hellos_in(PCAPS / name)} == wanted, name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("zeek__quic_interop_quic-go_quic-go_retry.pcap", hello_of("server4:443")),  # v1
        ("ndpi__doq_adguard.pcapng", hello_of("dns.adguard.com", DRAFT_29)),
    ],
)
def test_capture_retry_is_authenticated_and_followed(name: str, expected: QuicHello) -> None:
    counters = Counters()
    assert hellos_in(PCAPS / name, counters) == [expected]
    assert counters.get("quic.retry") == 1
    assert counters.get("quic.retry_rejected") == counters.get("quic.decrypt_failed") == 0
