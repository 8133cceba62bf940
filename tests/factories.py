"""Packet and capture factories for agent tests: TLS/QUIC hellos, DNS, TCP flows, link framing.

Everything here is written into files, never sent: addresses come from the documentation ranges
(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), MAC addresses are locally
administered, and every random byte comes from a seeded generator so a factory called twice with
the same arguments returns the same bytes.
"""

from __future__ import annotations

import base64
import os
import random
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from unittest import mock

import dns.flags
import dns.message
import dns.rrset
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import HDLC, PPP, PPPoE
from scapy.packet import Packet, Raw

CLIENT4 = "192.0.2.10"
CLIENT6 = "2001:db8::10"
RESOLVER4 = "192.0.2.53"
RESOLVER6 = "2001:db8::53"
SERVER4 = "203.0.113.10"
SERVER6 = "2001:db8:1::10"
CLIENT_MAC = "02:00:00:00:00:01"
GATEWAY_MAC = "02:00:00:00:00:02"
MSS = 1460

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# A frame to write: a scapy packet (its .time is the timestamp), (timestamp, bytes), or for
# pcapng (timestamp, bytes, interface index).
Frame = Packet | tuple[float, bytes] | tuple[float, bytes, int]

# --------------------------------------------------------------------------- TLS ClientHello

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SCT = 0x0012
EXT_PADDING = 0x0015
EXT_EXTENDED_MASTER_SECRET = 0x0017
EXT_COMPRESS_CERTIFICATE = 0x001B
EXT_SESSION_TICKET = 0x0023
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_PSK_KEY_EXCHANGE_MODES = 0x002D
EXT_KEY_SHARE = 0x0033
EXT_APPLICATION_SETTINGS = 0x44CD
EXT_ECH = 0xFE0D
EXT_RENEGOTIATION_INFO = 0xFF01
GROUP_X25519 = 0x001D
GROUP_X25519_MLKEM768 = 0x11EC
GREASE = 0x0A0A
MLKEM768_X25519_SHARE = 1184 + 32  # ML-KEM-768 encapsulation key, then the X25519 share


def _u8(b: bytes) -> bytes:
    return bytes((len(b),)) + b


def _u16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _u24(b: bytes) -> bytes:
    return struct.pack("!I", len(b))[1:] + b


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!H", etype) + _u16(body)


def client_hello_message(
    sni: str | None = "chatgpt.com",
    *,
    ech: bool = False,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    pq_key_share: bool = True,
    padding: int = 0,
    extra_extensions: Sequence[tuple[int, bytes]] = (),
    seed: int = 0,
) -> bytes:
    """A TLS 1.3 ClientHello handshake message (4-byte header included), laid out like Chrome's.

    With ``pq_key_share`` the key_share extension carries an X25519MLKEM768 share (1216 bytes)
    and comes before server_name, so at MSS 1460 the name lands in the second TCP segment.
    ``ech`` adds an outer encrypted_client_hello extension (the SNI is then the public name).
    ``padding`` adds a padding extension of that many zero bytes.
    """
    rnd = random.Random(seed)
    shares = _u16(struct.pack("!H", GREASE) + _u16(b"\x00"))
    if pq_key_share:
        shares = _u16(
            struct.pack("!H", GREASE)
            + _u16(b"\x00")
            + struct.pack("!H", GROUP_X25519_MLKEM768)
            + _u16(rnd.randbytes(MLKEM768_X25519_SHARE))
            + struct.pack("!H", GROUP_X25519)
            + _u16(rnd.randbytes(32))
        )
    else:
        shares = _u16(struct.pack("!H", GROUP_X25519) + _u16(rnd.randbytes(32)))
    groups = [GREASE, GROUP_X25519_MLKEM768, GROUP_X25519, 0x0017, 0x0018]
    if not pq_key_share:
        groups.remove(GROUP_X25519_MLKEM768)
    sigalgs = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
    exts = [
        _ext(GREASE, b""),
        _ext(EXT_SUPPORTED_GROUPS, _u16(b"".join(struct.pack("!H", g) for g in groups))),
        _ext(EXT_EC_POINT_FORMATS, _u8(b"\x00")),
        _ext(EXT_SESSION_TICKET, b""),
        _ext(EXT_KEY_SHARE, shares),
        _ext(EXT_PSK_KEY_EXCHANGE_MODES, _u8(b"\x01")),
        _ext(EXT_SUPPORTED_VERSIONS, _u8(struct.pack("!HHH", GREASE, 0x0304, 0x0303))),
        _ext(EXT_SIGNATURE_ALGORITHMS, _u16(b"".join(struct.pack("!H", s) for s in sigalgs))),
        _ext(EXT_COMPRESS_CERTIFICATE, _u8(b"\x00\x02")),
        _ext(EXT_EXTENDED_MASTER_SECRET, b""),
        _ext(EXT_RENEGOTIATION_INFO, b"\x00"),
        _ext(EXT_SCT, b""),
    ]
    if sni is not None:
        name = sni.encode("ascii")
        exts.append(_ext(EXT_SERVER_NAME, _u16(b"\x00" + _u16(name))))
    if alpn:
        exts.append(_ext(EXT_ALPN, _u16(b"".join(_u8(p.encode()) for p in alpn))))
        exts.append(_ext(EXT_APPLICATION_SETTINGS, _u16(_u8(b"h2"))))
    if ech:
        # outer ClientHello: type 0, HPKE suite (HKDF-SHA256, AES-128-GCM), config id, enc, payload
        exts.append(
            _ext(
                EXT_ECH,
                b"\x00"
                + struct.pack("!HH", 0x0001, 0x0001)
                + bytes((rnd.randrange(256),))
                + _u16(rnd.randbytes(32))
                + _u16(rnd.randbytes(208)),
            )
        )
    exts += [_ext(etype, body) for etype, body in extra_extensions]
    exts.append(_ext(GREASE + 0x1010, b"\x00"))
    if padding:
        exts.append(_ext(EXT_PADDING, bytes(padding)))
    suites = (GREASE, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8)
    body = (
        b"\x03\x03"
        + rnd.randbytes(32)
        + _u8(rnd.randbytes(32))
        + _u16(b"".join(struct.pack("!H", s) for s in suites))
        + _u8(b"\x00")
        + _u16(b"".join(exts))
    )
    return b"\x01" + _u24(body)


def tls_records(handshake: bytes, record_size: int = 16384, version: int = 0x0301) -> bytes:
    """``handshake`` in TLS handshake records of at most ``record_size`` bytes each."""
    out = bytearray()
    for pos in range(0, len(handshake), record_size):
        chunk = handshake[pos : pos + record_size]
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
    return bytes(out)


def make_client_hello(
    sni: str | None = "chatgpt.com",
    *,
    ech: bool = False,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    pq_key_share: bool = True,
    padding: int = 0,
    record_size: int = 16384,
    seed: int = 0,
) -> bytes:
    """A ClientHello as it appears on the TCP stream: TLS records (see client_hello_message)."""
    message = client_hello_message(
        sni, ech=ech, alpn=alpn, pq_key_share=pq_key_share, padding=padding, seed=seed
    )
    return tls_records(message, record_size)


# --------------------------------------------------------------------------- IP, UDP, TCP


def ip_layer(src: str, dst: str, ip_id: int = 1) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, id=ip_id & 0xFFFF)


def make_packet(
    src: str = CLIENT4,
    dst: str = SERVER4,
    sport: int = 50000,
    dport: int = 443,
    payload: bytes = b"",
    *,
    proto: str = "tcp",
    flags: str = "PA",
    seq: int = 1,
    ack: int = 0,
    ts: float = 1_700_000_000.0,
    ip_id: int = 1,
) -> Packet:
    """One IPv4 or IPv6 (chosen by the address) TCP or UDP packet with ``payload``."""
    if proto == "udp":
        l4: Packet = UDP(sport=sport, dport=dport)
    else:
        l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240)
    pkt = ip_layer(src, dst, ip_id) / l4
    if payload:
        pkt = pkt / Raw(payload)
    pkt.time = ts
    return pkt


def split_payload(payload: bytes, split_at: Sequence[int] | None, mss: int = MSS) -> list[bytes]:
    """``payload`` cut at the given offsets; by default into ``mss``-sized segments."""
    if split_at is None:
        split_at = range(mss, len(payload), mss)
    cuts = [0, *sorted(split_at), len(payload)]
    return [payload[a:b] for a, b in pairwise(cuts) if b > a]


def tcp_flow_packets(
    client: tuple[str, int] = (CLIENT4, 50000),
    server: tuple[str, int] = (SERVER4, 443),
    payload: bytes = b"",
    *,
    split_at: Sequence[int] | None = None,
    order: Sequence[int | tuple[int, int]] | None = None,
    duplicate: Iterable[int] = (),
    syn: bool = True,
    reply: bytes = b"",
    isn: int = 1_000_000,
    server_isn: int = 7_000_000,
    start: float = 1_700_000_000.0,
    step: float = 0.001,
) -> list[Packet]:
    """A TCP connection carrying ``payload`` from client to server.

    ``split_at`` cuts the payload into segments (default: MSS-sized). ``order`` lists what is
    sent after the handshake: an int is a segment index, a ``(start, end)`` pair sends those
    payload bytes as one extra segment (an overlapping retransmission); the default sends the
    segments in order. Segments in ``duplicate`` are sent a second time right after the first.
    With ``syn=False`` the handshake is left out, as in a capture that started mid-flow.
    ``reply`` is sent back by the server, in one segment, after the client's data.
    """
    (csrc, cport), (sdst, sport) = client, server
    segments = split_payload(payload, split_at)
    offsets = [0]
    for seg in segments:
        offsets.append(offsets[-1] + len(seg))
    dup = set(duplicate)
    base = (isn + 1) & 0xFFFFFFFF
    ack = (server_isn + 1) & 0xFFFFFFFF
    ts = start
    out: list[Packet] = []

    def emit(pkt: Packet) -> None:
        nonlocal ts
        pkt.time = ts
        ts += step
        if IP in pkt:  # each datagram its own IP ID, as stacks do (fragments are keyed by it)
            pkt[IP].id = ((isn >> 16) + len(out)) & 0xFFFF
        out.append(pkt)

    if syn:
        emit(make_packet(csrc, sdst, cport, sport, flags="S", seq=isn))
        emit(make_packet(sdst, csrc, sport, cport, flags="SA", seq=server_isn, ack=base))
        emit(make_packet(csrc, sdst, cport, sport, flags="A", seq=base, ack=ack))
    for item in range(len(segments)) if order is None else order:
        lo, hi = (offsets[item], offsets[item + 1]) if isinstance(item, int) else item
        seq = (base + lo) & 0xFFFFFFFF
        for _ in range(2 if isinstance(item, int) and item in dup else 1):
            emit(make_packet(csrc, sdst, cport, sport, payload[lo:hi], seq=seq, ack=ack))
    if reply:
        end = (base + len(payload)) & 0xFFFFFFFF
        emit(make_packet(sdst, csrc, sport, cport, reply, seq=ack, ack=end))
    return out


# --------------------------------------------------------------------------- DNS


def make_dns_query(name: str, qtype: str = "A", *, ident: int = 0x4242) -> bytes:
    """Wire bytes of a recursive query. ``name`` keeps its case (for 0x20 tests)."""
    query = dns.message.make_query(name, qtype, id=ident)
    return bytes(query.to_wire())


def make_dns_response(
    name: str,
    qtype: str = "A",
    *,
    a: Sequence[str] = (),
    aaaa: Sequence[str] = (),
    cname: Sequence[str] = (),
    https_hints: Sequence[str] = (),
    ech: bool = False,
    ttl: int = 300,
    ident: int = 0x4242,
) -> bytes:
    """Wire bytes of an answer: ``name`` → CNAME chain ``cname`` → addresses at its end.

    For ``qtype="HTTPS"`` the answer is a ServiceMode record with ``https_hints`` as ipv4hint/
    ipv6hint, and an ``ech`` SvcParam when asked.
    """
    query = dns.message.make_query(name, qtype, id=ident)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    owner = name if name.endswith(".") else name + "."
    for target in cname:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", target + "."))
        owner = target + "."
    if a:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", "A", *a))
    if aaaa:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", "AAAA", *aaaa))
    if qtype == "HTTPS":
        params = 'alpn="h3,h2"'
        v4 = [h for h in https_hints if ":" not in h]
        v6 = [h for h in https_hints if ":" in h]
        if v4:
            params += " ipv4hint=" + ",".join(v4)
        if ech:
            params += f' ech="{base64.b64encode(ech_config_list()).decode()}"'
        if v6:
            params += " ipv6hint=" + ",".join(v6)
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", "HTTPS", f"1 . {params}"))
    return bytes(response.to_wire(want_shuffle=False))


def ech_config_list(public_name: str = "cloudflare-ech.com", config_id: int = 0x42) -> bytes:
    """An ECHConfigList (RFC 9849 section 4) with one X25519 / HKDF-SHA256 / AES-128-GCM config."""
    name = public_name.encode("ascii")
    contents = (
        bytes((config_id,))
        + struct.pack("!H", 0x0020)  # DHKEM(X25519, HKDF-SHA256)
        + _u16(bytes(range(32)))
        + _u16(struct.pack("!HH", 0x0001, 0x0001))
        + b"\x00"  # maximum_name_length
        + _u8(name)
        + _u16(b"")
    )
    return _u16(struct.pack("!H", 0xFE0D) + _u16(contents))


def dns_exchange(
    name: str,
    qtype: str = "A",
    *,
    client: tuple[str, int] = (CLIENT4, 53000),
    resolver: str = RESOLVER4,
    ts: float = 1_699_999_999.0,
    rtt: float = 0.01,
    ident: int = 0x4242,
    **answer: object,
) -> list[Packet]:
    """A DNS query and its response over UDP; ``answer`` goes to make_dns_response."""
    caddr, cport = client
    q = make_packet(
        caddr, resolver, cport, 53, make_dns_query(name, qtype, ident=ident), proto="udp", ts=ts
    )
    r = make_packet(
        resolver,
        caddr,
        53,
        cport,
        make_dns_response(name, qtype, ident=ident, **answer),  # type: ignore[arg-type]
        proto="udp",
        ts=ts + rtt,
    )
    return [q, r]


def dns_tcp_payload(*messages: bytes) -> bytes:
    """DNS messages framed for TCP (RFC 1035 4.2.2: a 2-byte length before each)."""
    return b"".join(_u16(m) for m in messages)


# --------------------------------------------------------------------------- QUIC Initials


@contextmanager
def seeded_aioquic(seed: int) -> Iterator[None]:
    """Make aioquic's client deterministic: its random bytes and its key shares come from
    ``seed`` (aioquic draws them from os.urandom and cryptography's key generators)."""
    from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

    rnd = random.Random(seed)

    def x25519_key() -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.from_private_bytes(rnd.randbytes(32))

    def x448_key() -> x448.X448PrivateKey:
        return x448.X448PrivateKey.from_private_bytes(rnd.randbytes(56))

    def ec_key(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
        return ec.derive_private_key(rnd.getrandbits(160) + 1, curve)

    with (
        mock.patch.object(os, "urandom", rnd.randbytes),
        mock.patch.object(x25519.X25519PrivateKey, "generate", x25519_key),
        mock.patch.object(x448.X448PrivateKey, "generate", x448_key),
        mock.patch.object(ec, "generate_private_key", ec_key),
    ):
        yield


def aioquic_datagrams(
    sni: str = "gemini.google.com",
    *,
    alpn: Sequence[str] = ("h3",),
    version: int = 1,
    seed: int = 0,
) -> list[bytes]:
    """The first datagrams aioquic sends as a client (Initial packets with its ClientHello).

    A long ``alpn`` list makes the hello span more than one Initial.
    """
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    with seeded_aioquic(seed):
        config = QuicConfiguration(
            is_client=True,
            server_name=sni,
            alpn_protocols=list(alpn),
            supported_versions=[version],
        )
        conn = QuicConnection(configuration=config)
        conn.connect((SERVER4, 443), now=0.0)
        return [data for data, _ in conn.datagrams_to_send(now=0.0)]


def quic_initial_payloads(datagrams: Iterable[bytes]) -> list[tuple[bytes, int, bytes]]:
    """Decrypt client Initials the way a server would: (DCID, packet number, plaintext)."""
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    out = []
    for data in datagrams:
        buf = Buffer(data=data)
        while not buf.eof() and data[buf.tell()] & 0x40:  # fixed bit: a packet, not padding
            start = buf.tell()
            header = pull_quic_header(buf, host_cid_length=8)
            end = start + header.packet_length
            if header.packet_type == QuicPacketType.INITIAL and header.version is not None:
                pair = CryptoPair()
                pair.setup_initial(header.destination_cid, is_client=False, version=header.version)
                _, plain, pn = pair.decrypt_packet(data[start:end], buf.tell() - start, 0)
                out.append((header.destination_cid, pn, plain))
            buf.seek(end)
    return out


def _varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack("!H", value | 0x4000)
    return struct.pack("!I", value | 0x80000000)


def crypto_stream(datagrams: Iterable[bytes]) -> bytes:
    """The client's Initial CRYPTO stream (its ClientHello) from aioquic's datagrams."""
    chunks: dict[int, bytes] = {}
    for _, _, plain in quic_initial_payloads(datagrams):
        pos = 0
        while pos < len(plain):
            ftype = plain[pos]
            pos += 1
            if ftype == 0x00:
                continue
            if ftype != 0x06:
                raise ValueError(f"unexpected frame type {ftype:#x} in a client Initial")
            off, pos = _read_varint(plain, pos)
            length, pos = _read_varint(plain, pos)
            chunks[off] = plain[pos : pos + length]
            pos += length
    stream = bytearray()
    for off in sorted(chunks):
        stream[off : off + len(chunks[off])] = chunks[off]
    return bytes(stream)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    size = 1 << (buf[pos] >> 6)
    value = int.from_bytes(buf[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def make_quic_initials(
    sni: str = "gemini.google.com",
    *,
    hello: bytes | None = None,
    split_at: Sequence[int] = (),
    packets: Sequence[Sequence[int]] | None = None,
    dcid: bytes = bytes.fromhex("8394c8f03e515708"),
    scid: bytes = bytes.fromhex("c5a1f00dc0ffee01"),
    version: int = 1,
    datagram_size: int = 1200,
    alpn: Sequence[str] = ("h3",),
    seed: int = 0,
) -> list[bytes]:
    """Client Initial datagrams whose CRYPTO frames carry a ClientHello cut and shuffled at will.

    The hello is aioquic's (``sni``, ``alpn``) unless ``hello`` is given. ``split_at`` cuts it
    into CRYPTO chunks; ``packets`` lists, per datagram in sending order, the chunk indexes its
    CRYPTO frames carry, in frame order (default: one datagram with every chunk in order). Each
    datagram is one Initial padded to ``datagram_size`` and encrypted with the keys of ``dcid``.
    """
    from aioquic.quic.crypto import CryptoPair

    if hello is None:
        hello = crypto_stream(aioquic_datagrams(sni, alpn=alpn, version=version, seed=seed))
    cuts = [0, *sorted(split_at), len(hello)]
    chunks = [(a, hello[a:b]) for a, b in pairwise(cuts)]
    if packets is None:
        packets = [range(len(chunks))]
    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=version)
    first = 0xC3 if version != 0x6B3343CF else 0xD3  # long header, Initial, 4-byte packet number
    out = []
    for pn, indexes in enumerate(packets):
        frames = b"".join(
            b"\x06" + _varint(chunks[i][0]) + _varint(len(chunks[i][1])) + chunks[i][1]
            for i in indexes
        )
        head = struct.pack("!BI", first, version) + _u8(dcid) + _u8(scid) + b"\x00"
        overhead = len(head) + 2 + 4 + 16  # length field, packet number, AEAD tag
        frames += bytes(max(0, datagram_size - overhead - len(frames)))
        header = head + struct.pack("!H", 0x4000 | (4 + len(frames) + 16)) + struct.pack("!I", pn)
        out.append(pair.encrypt_packet(header, frames, pn))
    return out


def udp_packets(
    datagrams: Sequence[bytes],
    client: tuple[str, int] = (CLIENT4, 51000),
    server: tuple[str, int] = (SERVER4, 443),
    *,
    start: float = 1_700_000_000.0,
    step: float = 0.001,
) -> list[Packet]:
    """Each datagram as a UDP packet from ``client`` to ``server``."""
    (caddr, cport), (saddr, sport) = client, server
    return [
        make_packet(caddr, saddr, cport, sport, d, proto="udp", ts=start + i * step)
        for i, d in enumerate(datagrams)
    ]


# --------------------------------------------------------------------------- link layers


def _keep_time(framed: Packet, inner: Packet) -> Packet:
    framed.time = inner.time
    return framed


def ether(pkt: Packet, *, outbound: bool = True) -> Packet:
    src, dst = (CLIENT_MAC, GATEWAY_MAC) if outbound else (GATEWAY_MAC, CLIENT_MAC)
    return _keep_time(Ether(src=src, dst=dst) / pkt, pkt)


def vlan(pkt: Packet, *, vid: int = 100, qinq: bool = False, outer_vid: int = 200) -> Packet:
    """802.1Q-tagged Ethernet; ``qinq`` adds an 802.1ad service tag outside it."""
    tags: Packet = Dot1Q(vlan=vid)
    if qinq:
        tags = Dot1AD(vlan=outer_vid) / tags
    return _keep_time(Ether(src=CLIENT_MAC, dst=GATEWAY_MAC) / tags / pkt, pkt)


def pppoe(pkt: Packet, *, session: int = 0x1234) -> Packet:
    return _keep_time(
        Ether(src=CLIENT_MAC, dst=GATEWAY_MAC) / PPPoE(sessionid=session) / PPP() / pkt, pkt
    )


def sll(pkt: Packet) -> Packet:
    """Linux cooked capture v1 (``tcpdump -i any`` before libpcap 1.10)."""
    return _keep_time(
        CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=b"\x02" + bytes(7)) / pkt, pkt
    )


def sll2(pkt: Packet) -> Packet:
    """Linux cooked capture v2 (``tcpdump -i any`` with libpcap 1.10 and later)."""
    return _keep_time(CookedLinuxV2(ifindex=2, pkttype=4, lladdrtype=1, lladdrlen=6) / pkt, pkt)


def null(pkt: Packet, *, big_endian: bool = False) -> Packet:
    """BSD loopback: a 4-byte address family in the writer's byte order (LINKTYPE_NULL) or
    in network order (LINKTYPE_LOOP, ``big_endian=True``). IPv6 uses macOS's AF_INET6, 30."""
    family = 30 if isinstance(pkt, IPv6) else 2
    header = struct.pack(">I" if big_endian else "<I", family)
    return _keep_time(Raw(header) / pkt, pkt)


def ppp(pkt: Packet, *, hdlc: bool = True) -> Packet:
    """PPP (LINKTYPE_PPP), with or without the HDLC address/control bytes ff 03."""
    return _keep_time((HDLC() / PPP() / pkt) if hdlc else (PPP() / pkt), pkt)


def raw(pkt: Packet) -> Packet:
    return pkt


# name -> (wrapper, pcap link type)
LINKS: dict[str, tuple[Callable[[Packet], Packet], int]] = {
    "ether": (ether, LINKTYPE_ETHERNET),
    "vlan": (vlan, LINKTYPE_ETHERNET),
    "qinq": (lambda p: vlan(p, qinq=True), LINKTYPE_ETHERNET),
    "pppoe": (pppoe, LINKTYPE_ETHERNET),
    "sll": (sll, LINKTYPE_LINUX_SLL),
    "sll2": (sll2, LINKTYPE_LINUX_SLL2),
    "raw": (raw, LINKTYPE_RAW),
    "null": (null, LINKTYPE_NULL),
    "loop": (lambda p: null(p, big_endian=True), LINKTYPE_LOOP),
    "ppp": (ppp, LINKTYPE_PPP),
    "ppp-nohdlc": (lambda p: ppp(p, hdlc=False), LINKTYPE_PPP),
}


# --------------------------------------------------------------------------- capture files


def _frames(packets: Iterable[Frame]) -> Iterator[tuple[float, bytes, int]]:
    for p in packets:
        if isinstance(p, tuple):
            yield (p[0], p[1], p[2]) if len(p) == 3 else (p[0], p[1], 0)
        else:
            yield float(p.time), bytes(p), 0


def pcap_bytes(
    packets: Iterable[Frame],
    linktype: int = LINKTYPE_ETHERNET,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = 262144,
) -> bytes:
    """A classic pcap file (micro- or nanosecond timestamps, either byte order); frames longer
    than ``snaplen`` are cut to it, as ``tcpdump -s`` does."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    scale = 1_000_000_000 if nanosecond else 1_000_000
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for ts, data, _ in _frames(packets):
        ticks = round(ts * scale)
        kept = data[:snaplen]
        out += struct.pack(e + "IIII", ticks // scale, ticks % scale, len(kept), len(data)) + kept
    return bytes(out)


def write_pcap(
    path: Path,
    packets: Iterable[Frame],
    linktype: int = LINKTYPE_ETHERNET,
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = 262144,
) -> Path:
    path.write_bytes(
        pcap_bytes(packets, linktype, nanosecond=nanosecond, big_endian=big_endian, snaplen=snaplen)
    )
    return path


def _block(btype: int, body: bytes, e: str = "<") -> bytes:
    body += bytes(-len(body) % 4)
    return (
        struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I", len(body) + 12)
    )


def pcapng_bytes(
    packets: Iterable[Frame],
    linktype: int | Sequence[int] = LINKTYPE_ETHERNET,
    *,
    tsresol: int = 6,
    big_endian: bool = False,
) -> bytes:
    """A pcapng section: one interface per link type given (``if_tsresol`` 10^-tsresol), then
    an enhanced packet block per frame; a ``(ts, bytes, interface)`` frame picks its interface.
    Concatenated sections are a valid pcapng file too (``mergecap -a``)."""
    e = ">" if big_endian else "<"
    out = bytearray(_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e))
    opts = b""
    if tsresol != 6:
        opts = struct.pack(e + "HHB", 9, 1, tsresol) + bytes(3) + struct.pack(e + "HH", 0, 0)
    for lt in [linktype] if isinstance(linktype, int) else linktype:
        out += _block(1, struct.pack(e + "HHI", lt, 0, 262144) + opts, e)
    scale = 10**tsresol
    for ts, data, iface in _frames(packets):
        ticks = round(ts * scale)
        epb = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        out += _block(6, epb + data, e)
    return bytes(out)


def write_pcapng(
    path: Path,
    packets: Iterable[Frame],
    linktype: int | Sequence[int] = LINKTYPE_ETHERNET,
    *,
    tsresol: int = 6,
    big_endian: bool = False,
) -> Path:
    path.write_bytes(pcapng_bytes(packets, linktype, tsresol=tsresol, big_endian=big_endian))
    return path


def write_capture(path: Path, packets: Iterable[Packet], link: str = "ether") -> Path:
    """Frame IP packets for the named link layer (see LINKS) and write a pcap."""
    wrap, linktype = LINKS[link]
    return write_pcap(path, [wrap(p) for p in packets], linktype)
