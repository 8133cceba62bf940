"""The kernel filter: exact decisions per packet kind, checked against libpcap's compiler."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.arch.common import compile_filter
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw

from agent.capture.bpf import Framing, Insn, SockFprog, build_program, listing

SO_ATTACH_FILTER = 26
DLT_EN10MB = 1
DLT_RAW = 12

# --- a small classic BPF interpreter: kernel semantics (out-of-bounds load = drop) ----------


def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes, protocol: int = 0) -> int:
    """Run ``prog`` on ``pkt``; ``protocol`` answers the SKF_AD_PROTOCOL ancillary load."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(pkt)
    mask = 0xFFFFFFFF

    def load(off: int, size: int) -> int | None:
        if off >= 0xFFFFF000:  # SKF_AD_OFF: the ancillary area; only PROTOCOL is used
            return protocol if off == 0xFFFFF000 else None
        if off < 0 or off + size > n:
            return None
        return int.from_bytes(pkt[off : off + size], "big")

    while pc < len(prog):
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD, LDX
            size = {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            mode = code & 0xE0
            if mode == 0x00:
                val = k
            elif mode == 0x20:
                v = load(k, size)
                if v is None:
                    return 0
                val = v
            elif mode == 0x40:
                v = load((x + k) & mask, size)
                if v is None:
                    return 0
                val = v
            elif mode == 0x60:
                val = mem[k]
            elif mode == 0x80:
                val = n
            elif mode == 0xA0:  # ldxb 4*([k]&0xf)
                v = load(k, 1)
                if v is None:
                    return 0
                val = (v & 0x0F) * 4
            else:  # pragma: no cover
                raise AssertionError(f"bad mode {code:#x}")
            if cls == 0x00:
                a = val
            else:
                x = val
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                a = (a + src) & mask
            elif op == 0x10:
                a = (a - src) & mask
            elif op == 0x20:
                a = (a * src) & mask
            elif op == 0x30:
                if src == 0:
                    return 0
                a //= src
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & mask if src < 32 else 0
            elif op == 0x70:
                a = a >> src if src < 32 else 0
            elif op == 0x80:
                a = (-a) & mask
            else:  # pragma: no cover
                raise AssertionError(f"bad alu {code:#x}")
        elif cls == 0x05:
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            cond = {
                0x10: a == src,
                0x20: a > src,
                0x30: a >= src,
                0x40: bool(a & src),
            }[op]
            pc += jt if cond else jf
        elif cls == 0x06:
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise AssertionError("fell off the end of the program")


def ours(framing: Framing) -> list[tuple[int, int, int, int]]:
    return [(i.code, i.jt, i.jf, i.k) for i in build_program(framing, 2048)]


# --- the same policy written as a libpcap expression (the oracle) ---------------------------

_EXT = " or ".join(f"ip6[6] = {nh}" for nh in (0, 43, 44, 51, 60, 135, 139, 140, 253, 254))
_POLICY = (
    "(udp port 53 or tcp port 53 or udp port 5353)"
    " or (ip and ip[6:2] & 0x1fff != 0)"
    f" or (ip6 and ({_EXT}))"
    " or (ip and ip[9] = 6 and (tcp[13] & 6 != 0"
    "     or ip[2:2] - ((ip[0] & 0xf) << 2) > (tcp[12] & 0xf0) >> 2))"
    " or (ip6 and ip6[6] = 6 and (ip6[53] & 6 != 0 or ip6[4:2] > (ip6[52] & 0xf0) >> 2))"
    " or (udp port 443 and ((ip and (udp[8] & 0x80 != 0 or udp[8] & 0xc9 = 9))"
    "     or (ip6 and (ip6[48] & 0x80 != 0 or ip6[48] & 0xc9 = 9))))"
)
ETHERNET_EXPRESSION = f"{_POLICY} or (vlan and ({_POLICY}))"


def libpcap(expression: str, dlt: int) -> list[tuple[int, int, int, int]]:
    prog = compile_filter(expression, linktype=dlt)
    return [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len]]


@pytest.fixture(scope="module")
def oracle_ether() -> list[tuple[int, int, int, int]]:
    return libpcap(ETHERNET_EXPRESSION, DLT_EN10MB)


@pytest.fixture(scope="module")
def oracle_raw() -> list[tuple[int, int, int, int]]:
    return libpcap(_POLICY, DLT_RAW)


# --- packets ---------------------------------------------------------------------------------

A4, B4 = "10.200.0.1", "10.200.0.2"
A6, B6 = "fd00:200::1", "fd00:200::2"
HELLO = b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03" + b"\x00" * 59
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def dns_q() -> Packet:
    return DNS(rd=1, qd=DNSQR(qname="api.openai.com"))


def _v4(l4: Packet, **ip: object) -> Packet:
    return IP(src=A4, dst=B4, **ip) / l4


def _v6(l4: Packet, **ip: object) -> Packet:
    return IPv6(src=A6, dst=B6, **ip) / l4


# (name, IP-or-lower packet, expected to pass)
CASES: list[tuple[str, Packet, bool]] = [
    ("dns query udp", _v4(UDP(sport=40000, dport=53) / dns_q()), True),
    ("dns answer udp", _v4(UDP(sport=53, dport=40000) / dns_q()), True),
    ("dns tcp bare ack", _v4(TCP(sport=40000, dport=53, flags="A")), True),
    ("dns tcp data", _v4(TCP(sport=53, dport=40000, flags="PA") / Raw(b"\x00\x20" * 8)), True),
    ("mdns", _v4(UDP(sport=5353, dport=5353) / dns_q()), True),
    ("llmnr is not dns here", _v4(UDP(sport=40000, dport=5355) / dns_q()), False),
    ("tls client hello", _v4(TCP(sport=40000, dport=443, flags="PA") / Raw(HELLO)), True),
    ("http get", _v4(TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n")), True),
    ("syn", _v4(TCP(sport=40000, dport=443, flags="S")), True),
    ("syn-ack", _v4(TCP(sport=443, dport=40000, flags="SA")), True),
    ("rst", _v4(TCP(sport=443, dport=40000, flags="R")), True),
    ("bare ack", _v4(TCP(sport=40000, dport=443, flags="A")), False),
    ("bare ack padded", _v4(TCP(sport=40000, dport=443, flags="A")) / Padding(b"\0" * 6), False),
    ("bare fin", _v4(TCP(sport=40000, dport=443, flags="FA")), False),
    (
        "ack with tcp options, no data",
        _v4(TCP(sport=40000, dport=443, flags="A", options=[("Timestamp", (1, 2)), ("NOP", None)])),
        False,
    ),
    ("fin with data", _v4(TCP(sport=40000, dport=443, flags="FPA") / Raw(b"x")), True),
    ("bulk data", _v4(TCP(sport=443, dport=40000, flags="A") / Raw(b"\xaa" * 1400)), True),
    (
        "ip options + data",
        _v4(TCP(sport=40000, dport=443, flags="PA") / Raw(HELLO), options=[IPOption_RR()]),
        True,
    ),
    (
        "ip options, bare ack",
        _v4(TCP(sport=40000, dport=443, flags="A"), options=[IPOption_RR()]),
        False,
    ),
    ("quic initial", _v4(UDP(sport=40000, dport=443) / Raw(b"\xc3" + b"\0" * 1199)), True),
    ("quic server long", _v4(UDP(sport=443, dport=40000) / Raw(b"\xe1" + b"\0" * 50)), True),
    ("quic short header", _v4(UDP(sport=40000, dport=443) / Raw(b"\x43" + b"\0" * 50)), False),
    ("gquic version flag", _v4(UDP(sport=40000, dport=443) / Raw(b"\x09" + b"\0" * 50)), True),
    ("gquic no version", _v4(UDP(sport=40000, dport=443) / Raw(b"\x08" + b"\0" * 50)), False),
    ("long header not 443", _v4(UDP(sport=40000, dport=8443) / Raw(b"\xc3" + b"\0" * 50)), False),
    ("443 to dns", _v4(UDP(sport=443, dport=53) / dns_q()), True),
    ("udp other", _v4(UDP(sport=40000, dport=123) / Raw(b"\x23" * 48)), False),
    ("empty udp 443", _v4(UDP(sport=40000, dport=443)), False),
    ("icmp echo", _v4(ICMP()), False),
    ("icmp unreachable", _v4(ICMP(type=3, code=3) / IP(src=B4, dst=A4) / UDP(dport=53)), False),
    ("non-first fragment", _v4(Raw(b"\xaa" * 64), proto=17, frag=100), True),
    ("first fragment dns", _v4(UDP(sport=53, dport=40000) / dns_q(), flags="MF"), True),
    ("first fragment other", _v4(UDP(sport=9, dport=9) / Raw(b"x" * 64), flags="MF"), False),
    ("v6 dns", _v6(UDP(sport=40000, dport=53) / dns_q()), True),
    ("v6 client hello", _v6(TCP(sport=40000, dport=443, flags="PA") / Raw(HELLO)), True),
    ("v6 syn", _v6(TCP(sport=40000, dport=443, flags="S")), True),
    ("v6 bare ack", _v6(TCP(sport=40000, dport=443, flags="A")), False),
    ("v6 quic initial", _v6(UDP(sport=40000, dport=443) / Raw(b"\xc0" + b"\0" * 1199)), True),
    ("v6 quic short", _v6(UDP(sport=40000, dport=443) / Raw(b"\x40" + b"\0" * 60)), False),
    ("v6 icmp", _v6(ICMPv6EchoRequest()), False),
    ("v6 fragment header", _v6(IPv6ExtHdrFragment(offset=10) / Raw(b"\xaa" * 32)), True),
    ("v6 hop-by-hop", _v6(IPv6ExtHdrHopByHop() / TCP(flags="A")), True),
    ("v6 esp", _v6(Raw(b"\0" * 32), nh=50), False),
]


def frame(pkt: Packet) -> bytes:
    return bytes(ETH / pkt)


def framed_cases() -> list[tuple[str, bytes, bool]]:
    out = [(name, frame(pkt), want) for name, pkt, want in CASES]
    tag = ETH.copy()
    for name, pkt, want in CASES[:12]:
        out.append((f"vlan {name}", bytes(tag / Dot1Q(vlan=7) / pkt), want))
    out.append(("802.1ad dns", bytes(tag / Dot1AD(vlan=7) / CASES[0][1]), True))
    # two tags in the frame are not covered: documented as dropped
    out.append(("qinq dns", bytes(tag / Dot1AD(vlan=7) / Dot1Q(vlan=8) / CASES[0][1]), False))
    out.append(("arp", bytes(ETH / ARP(psrc=A4, pdst=B4)), False))
    hello = frame(CASES[6][1])
    out.append(("client hello cut in the tcp header", hello[:40], False))
    return out


FRAMED = framed_cases()


@pytest.mark.parametrize(("name", "data", "want"), FRAMED, ids=[c[0] for c in FRAMED])
def test_ethernet_decisions(
    name: str, data: bytes, want: bool, oracle_ether: list[tuple[int, int, int, int]]
) -> None:
    got = run_bpf(ours(Framing.ETHERNET), data)
    assert (got != 0) is want, name
    assert (run_bpf(oracle_ether, data) != 0) is want, f"oracle disagrees on {name}"
    if want:
        assert got == 2048  # accepted frames are cut to the snap length


@pytest.mark.parametrize(("name", "pkt", "want"), CASES, ids=[c[0] for c in CASES])
def test_cooked_decisions(
    name: str, pkt: Packet, want: bool, oracle_raw: list[tuple[int, int, int, int]]
) -> None:
    data = bytes(pkt)
    proto = 0x0800 if data[0] >> 4 == 4 else 0x86DD
    assert (run_bpf(ours(Framing.COOKED), data, proto) != 0) is want, name
    assert (run_bpf(oracle_raw, data) != 0) is want, f"oracle disagrees on {name}"


def test_cooked_drops_non_ip_by_protocol() -> None:
    arp = bytes(ARP(psrc=A4, pdst=B4))
    assert run_bpf(ours(Framing.COOKED), arp, 0x0806) == 0
    # the EtherType decides, not the bytes: an IPv4 DNS query labelled ARP is dropped
    assert run_bpf(ours(Framing.COOKED), bytes(CASES[0][1]), 0x0806) == 0


_packets = st.builds(
    lambda v6, l4, sport, dport, flags, payload, first, vlan, pad: (
        v6,
        l4,
        sport,
        dport,
        flags,
        payload,
        first,
        vlan,
        pad,
    ),
    st.booleans(),
    st.sampled_from(["tcp", "udp"]),
    st.sampled_from([53, 443, 5353, 5355, 80, 40000]),
    st.sampled_from([53, 443, 5353, 123, 40001]),
    st.integers(0, 0x3F),
    st.binary(max_size=24),
    st.integers(0, 255),
    st.booleans(),
    st.integers(0, 8),
)


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_matches_libpcap_on_random_packets(
    case: tuple[bool, str, int, int, int, bytes, int, bool, int],
) -> None:
    v6, l4name, sport, dport, flags, payload, first, vlan, pad = case
    body = payload if not payload else bytes([first]) + payload
    l4: Packet = (
        TCP(sport=sport, dport=dport, flags=flags)
        if l4name == "tcp"
        else UDP(sport=sport, dport=dport)
    )
    pkt = (_v6 if v6 else _v4)(l4 / Raw(body)) / Padding(b"\0" * pad)
    data = bytes(ETH / Dot1Q(vlan=3) / pkt) if vlan else frame(pkt)
    oracle = libpcap(ETHERNET_EXPRESSION, DLT_EN10MB)
    assert (run_bpf(ours(Framing.ETHERNET), data) != 0) == (run_bpf(oracle, data) != 0)


@pytest.mark.parametrize("framing", list(Framing))
def test_kernel_accepts_the_program(framing: Framing) -> None:
    """The kernel's checker validates classic BPF on any socket, so no privilege is needed."""
    fprog = SockFprog(build_program(framing, 2048))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog.bytes)


def test_sock_fprog_layout() -> None:
    prog = build_program(Framing.ETHERNET, 1500)
    fprog = SockFprog(prog)
    count, _ = struct.unpack("@HP", fprog.bytes)
    assert count == len(prog) == fprog.count
    assert prog[-1] == Insn(0x06, 0, 0, 1500, "pass, cut to snaplen")


def test_every_instruction_is_listed() -> None:
    prog = build_program(Framing.ETHERNET)
    text = listing(prog)
    assert len(text.splitlines()) == len(prog)
    assert "bare ACK or FIN: drop" in text


def test_bad_snaplen() -> None:
    with pytest.raises(ValueError, match="snaplen"):
        build_program(Framing.ETHERNET, 0)
