"""The kernel capture filter: a hand-written classic BPF program and its `sock_fprog` bytes.

The kernel runs this program on every frame before it is queued to our socket, so traffic the
agent never reads (bulk data ACKs, ICMP, ARP, non-DNS UDP) costs no copy and no wakeup.
It passes exactly:

* DNS: UDP or TCP with source or destination port 53, and UDP port 5353 (mDNS);
* TCP segments that can start or carry a ClientHello or a plaintext HTTP request: SYN or RST
  set, or a payload. Payload length is IP length minus IP header minus TCP data offset, never
  the frame length, so Ethernet padding on a 60-byte bare ACK does not count as data;
* UDP with source or destination port 443 whose first payload byte has 0x80 set (QUIC long
  header: Initial, 0-RTT, Handshake, Retry) or matches the legacy gQUIC public header with the
  version flag (``& 0xC9 == 0x09``, Q043 and older; the pipeline reads those too);
* IPv4 non-first fragments (offset != 0): they carry no ports to test, and the reassembler
  needs them to complete a fragmented DNS answer or QUIC Initial;
* IPv6 whose next header is an extension header (hop-by-hop, routing, fragment, AH,
  destination options, mobility, HIP, shim6, experimental): classic BPF cannot walk a chain
  of variable length, and dropping them could lose a fragmented DNS answer, so they all pass.
  ESP (50) and no-next-header (59) are dropped: nothing readable follows.

Framings (``Framing``):

* ``ETHERNET`` for AF_PACKET SOCK_RAW on ARPHRD_ETHER and ARPHRD_LOOPBACK: untagged frames and
  one 802.1Q / 802.1ad / 0x9100 tag. A tag the NIC strips (VLAN offload) is not in the frame
  at all, so the filter sees an untagged frame: also correct. Not covered (dropped): two or
  more tags in the frame (QinQ without offload), PPPoE sessions, MPLS. On a PPPoE host capture
  ``ppp0`` instead, which carries the default route.
* ``COOKED`` for AF_PACKET SOCK_DGRAM (the ``any`` pseudo-device and every link that is not
  Ethernet: tun, WireGuard, PPP): the frame starts at the IP header and the EtherType comes
  from the kernel's ``skb->protocol`` through the ancillary load ``SKF_AD_PROTOCOL``, the way
  libpcap's own cooked filters do.

Accepted frames are cut to ``snaplen`` by the return value, so the kernel copies no more.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass

# instruction classes, sizes, modes, operations (linux/filter.h, linux/bpf_common.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, AND, LSH, RSH = 0x00, 0x10, 0x50, 0x60, 0x70
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
ANCILLARY_PROTOCOL = (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF

BPF_MAXINSNS = 4096
DNS_PORTS = (53, 5353)
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
# IPv6 next-header values that are extension headers (the chain goes on after them)
IPV6_EXTENSION_HEADERS = (0, 43, 44, 51, 60, 135, 139, 140, 253, 254)

# scratch memory slots
_M_L3 = 0  # offset of the IP header
_M_IHL = 1  # IPv4 header length in bytes
_M_L4 = 2  # offset of the TCP/UDP header
_M_L4LEN = 3  # bytes from the TCP/UDP header to the end of the IP datagram


class Framing(enum.Enum):
    """Where the IP header starts, and how its EtherType is found."""

    ETHERNET = "ethernet"  # SOCK_RAW on an Ethernet-like link: 14-byte header, maybe a VLAN tag
    COOKED = "cooked"  # SOCK_DGRAM: IP at offset 0, EtherType from skb->protocol


@dataclass(frozen=True, slots=True)
class Insn:
    """One classic BPF instruction (``struct sock_filter``) and why it is there."""

    code: int
    jt: int
    jf: int
    k: int
    why: str = ""

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k & 0xFFFFFFFF)


class _Assembler:
    """Instructions with symbolic jump targets; ``None`` means the next instruction."""

    def __init__(self) -> None:
        self._ops: list[tuple[int, int, str | None, str | None, str]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._ops)

    def op(self, code: int, k: int = 0, why: str = "") -> None:
        self._ops.append((code, k, None, None, why))

    def jump(self, code: int, k: int, jt: str | None, jf: str | None = None, why: str = "") -> None:
        self._ops.append((code, k, jt, jf, why))

    def goto(self, target: str, why: str = "") -> None:
        self._ops.append((JMP | JA, 0, target, None, why))

    def build(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, k, jt, jf, why) in enumerate(self._ops):
            if code == JMP | JA:
                assert jt is not None
                out.append(Insn(code, 0, 0, self._offset(i, jt), why))
            elif code & 0x07 == JMP:
                out.append(Insn(code, self._offset(i, jt), self._offset(i, jf), k, why))
            else:
                out.append(Insn(code, 0, 0, k, why))
        return out

    def _offset(self, i: int, target: str | None) -> int:
        if target is None:
            return 0
        off = self._labels[target] - (i + 1)
        if not 0 <= off <= 255:
            raise ValueError(f"jump from {i} to {target} out of range ({off})")
        return off


def build_program(framing: Framing, snaplen: int = 2048) -> list[Insn]:
    """The filter for one framing; accepted frames are cut to ``snaplen`` bytes."""
    if snaplen <= 0:
        raise ValueError("snaplen must be positive")
    a = _Assembler()
    # --- link layer: leave the EtherType in A and the IP header offset in X
    if framing is Framing.ETHERNET:
        a.op(LD | H | ABS, 12, "EtherType, or the TPID of a VLAN tag")
        for tpid in VLAN_TPIDS:
            a.jump(JMP | JEQ | K, tpid, "vlan", why=f"{tpid:#06x}: one VLAN tag follows")
        a.op(LDX | IMM, 14, "untagged: IP header after the 14-byte Ethernet header")
        a.goto("l3", "A still holds the EtherType")
        a.label("vlan")
        a.op(LD | H | ABS, 16, "EtherType after the tag (a second tag drops below)")
        a.op(LDX | IMM, 18, "IP header after Ethernet header and one 4-byte tag")
    else:
        a.op(LD | H | ABS, ANCILLARY_PROTOCOL, "skb->protocol: SOCK_DGRAM has no link header")
        a.op(LDX | IMM, 0, "the frame starts at the IP header")
    a.label("l3")
    a.jump(JMP | JEQ | K, 0x0800, "ipv4", why="IPv4")
    a.jump(JMP | JEQ | K, 0x86DD, "ipv6", why="IPv6")
    a.op(RET | K, 0, "not IP (ARP, LLDP, PPPoE, a second VLAN tag): drop")

    # --- IPv4: X = IP header offset
    a.label("ipv4")
    a.op(LD | H | IND, 6, "flags and fragment offset")
    a.jump(JMP | JSET | K, 0x1FFF, "accept", why="a non-first fragment has no ports: pass")
    a.op(STX, _M_L3, "keep the IP header offset")
    a.op(LD | B | IND, 0, "version and IHL")
    a.op(ALU | AND | K, 0x0F, "IHL in 32-bit words")
    a.op(ALU | LSH | K, 2, "IHL in bytes")
    a.op(ST, _M_IHL, "keep it to subtract from the total length")
    a.op(ALU | ADD | X, 0, "+ IP header offset")
    a.op(ST, _M_L4, "= transport header offset")
    a.op(LD | H | IND, 2, "IP total length (the frame may be padded beyond it)")
    a.op(LDX | MEM, _M_IHL, "")
    a.op(ALU | SUB | X, 0, "- IP header = TCP/UDP header + payload")
    a.op(ST, _M_L4LEN, "")
    a.op(LDX | MEM, _M_L3, "")
    a.op(LD | B | IND, 9, "protocol")
    a.jump(JMP | JEQ | K, 6, "tcp", why="TCP")
    a.jump(JMP | JEQ | K, 17, "udp", why="UDP")
    a.op(RET | K, 0, "ICMP, GRE, ESP...: drop")

    # --- IPv6: X = IP header offset
    a.label("ipv6")
    a.op(LD | H | IND, 4, "payload length: everything after the 40-byte fixed header")
    a.op(ST, _M_L4LEN, "")
    a.op(MISC | TXA, 0, "")
    a.op(ALU | ADD | K, 40, "the transport header follows the fixed header directly")
    a.op(ST, _M_L4, "")
    a.op(LD | B | IND, 6, "next header")
    a.jump(JMP | JEQ | K, 6, "tcp", why="TCP")
    a.jump(JMP | JEQ | K, 17, "udp", why="UDP")
    for nh in IPV6_EXTENSION_HEADERS:
        a.jump(JMP | JEQ | K, nh, "accept", why=f"extension header {nh}: cannot walk it, pass")
    a.op(RET | K, 0, "ICMPv6, ESP, no next header...: drop")

    # --- TCP: M[L4] = header offset, M[L4LEN] = header + payload length
    a.label("tcp")
    a.op(LDX | MEM, _M_L4, "")
    a.op(LD | H | IND, 0, "source port")
    a.jump(JMP | JEQ | K, 53, "accept", why="DNS over TCP (answer)")
    a.op(LD | H | IND, 2, "destination port")
    a.jump(JMP | JEQ | K, 53, "accept", why="DNS over TCP (query)")
    a.op(LD | B | IND, 13, "TCP flags")
    a.jump(JMP | JSET | K, 0x06, "accept", why="SYN or RST: flow start and end for the tracker")
    a.op(LD | B | IND, 12, "data offset (high nibble)")
    a.op(ALU | AND | K, 0xF0, "")
    a.op(ALU | RSH | K, 2, "TCP header length in bytes")
    a.op(MISC | TAX, 0, "")
    a.op(LD | MEM, _M_L4LEN, "")
    a.jump(JMP | JGT | X, 0, "accept", why="more than the header: a payload")
    a.op(RET | K, 0, "bare ACK or FIN: drop")

    # --- UDP: DNS on either side first, then QUIC on either side
    a.label("udp")
    a.op(LDX | MEM, _M_L4, "")
    a.op(LD | H | IND, 0, "source port")
    for port in DNS_PORTS:
        a.jump(JMP | JEQ | K, port, "accept", why=f"DNS answer ({port})")
    a.op(LD | H | IND, 2, "destination port")
    for port in DNS_PORTS:
        a.jump(JMP | JEQ | K, port, "accept", why=f"DNS query ({port})")
    a.jump(JMP | JEQ | K, 443, "quic", why="to a QUIC server")
    a.op(LD | H | IND, 0, "source port again")
    a.jump(JMP | JEQ | K, 443, "quic", why="from a QUIC server")
    a.op(RET | K, 0, "other UDP: drop")
    a.label("quic")
    a.op(LD | B | IND, 8, "first UDP payload byte")
    a.jump(JMP | JSET | K, 0x80, "accept", why="QUIC long header (Initial, Handshake, ...)")
    a.op(ALU | AND | K, 0xC9, "")
    a.jump(JMP | JEQ | K, 0x09, "accept", why="gQUIC public header with version flag")
    a.op(RET | K, 0, "QUIC short header (1-RTT data): drop")

    a.label("accept")
    a.op(RET | K, snaplen, "pass, cut to snaplen")
    prog = a.build()
    if len(prog) > BPF_MAXINSNS:  # pragma: no cover - the program is fixed and short
        raise ValueError("BPF program too long")
    return prog


def listing(prog: list[Insn]) -> str:
    """A numbered listing with the reason for each instruction, for docs and debugging."""
    lines = []
    for i, ins in enumerate(prog):
        head = f"{i:3d}  code={ins.code:#06x} jt={ins.jt:<3d} jf={ins.jf:<3d} k={ins.k:#010x}"
        lines.append(f"{head}  {ins.why}")
    return "\n".join(lines)


class SockFprog:
    """``struct sock_fprog`` for SO_ATTACH_FILTER. Holds the instruction array the struct
    points to, so keep this object alive until setsockopt has returned."""

    def __init__(self, prog: list[Insn]) -> None:
        raw = b"".join(ins.pack() for ins in prog)
        self._array = ctypes.create_string_buffer(raw, len(raw))
        self.count = len(prog)
        self.bytes = struct.pack("@HP", self.count, ctypes.addressof(self._array))
