"""Link, network and transport decoding: frame bytes to a transport segment, no scapy."""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_ntop
from struct import error as StructError  # noqa: N812 - reads as an exception
from struct import unpack_from

from agent.counters import Counters
from agent.decode.fragments import FragmentReassembler

# pcap LINKTYPE_* values
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_OLD = 12
LINKTYPE_RAW_OLD2 = 14
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

TCP = 6
UDP = 17
_SYN_RST = 0x06
_V6_EXT_HEADERS = frozenset({0, 43, 60, 135, 139, 140, 253, 254})
_AH = 51
_FRAG6 = 44
_VLAN_TYPES = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_PPP_IP4 = frozenset({0x0021})
_PPP_IP6 = frozenset({0x0057})

# (l4 protocol, src address bytes, dst address bytes, sport, dport, tcp seq, tcp flags, payload)
Segment = tuple[int, bytes, bytes, int, int, int, int, bytes]

_ntop_cache: dict[bytes, str] = {}


def shard_of(src: bytes, dst: bytes, count: int) -> int:
    """Which of ``count`` shards the address pair belongs to: the same for both directions,
    and cheap enough to test on every packet (the last address bytes vary the most)."""
    return (src[-1] ^ dst[-1]) % count


def addr_text(addr: bytes) -> str:
    """Printable form of a 4- or 16-byte address (cached: the same few hosts repeat)."""
    text = _ntop_cache.get(addr)
    if text is None:
        if len(_ntop_cache) > 65536:
            _ntop_cache.clear()
        text = _ntop_cache[addr] = inet_ntop(AF_INET if len(addr) == 4 else AF_INET6, addr)
    return text


class PacketDecoder:
    """Decodes frames of the supported link types down to TCP/UDP segments.

    Frames that are not IP, not TCP/UDP, or malformed return None; so do TCP segments with
    neither payload nor SYN/RST, which no extractor reads. Malformed frames are counted
    (``decode.malformed``), unsupported link types too (``decode.unsupported_link``).
    IP fragments are held by the FragmentReassembler until the datagram is whole.
    """

    def __init__(
        self,
        counters: Counters,
        fragments: FragmentReassembler | None = None,
        *,
        shard: tuple[int, int] | None = None,
        shared_ports: frozenset[int] = frozenset(),
    ) -> None:
        """``shard=(i, n)``: the fast paths (Ethernet, plain IPv4 or IPv6) return None for a
        valid segment whose address pair is not shard ``i`` of ``n`` (``shard_of``) unless one
        of its ports is in ``shared_ports``. Other frames are decoded as usual, so the caller
        still sorts what comes back; this only spares it the bulk of other shards' packets.
        """
        self.counters = counters
        self.fragments = fragments or FragmentReassembler(counters)
        self._shard_index, self._shard_count = shard or (0, 0)
        self._shared_ports = shared_ports

    def _not_mine(self, frame: bytes, a: int, b: int, ports: int) -> bool:
        """Whether the fast-path segment with address last bytes at ``a``, ``b`` and ports
        at ``ports`` belongs to another shard."""
        shared = self._shared_ports
        return (frame[a] ^ frame[b]) % self._shard_count != self._shard_index and not (
            ((frame[ports] << 8) | frame[ports + 1]) in shared
            or ((frame[ports + 2] << 8) | frame[ports + 3]) in shared
        )

    def decode(self, ts: float, linktype: int, frame: bytes) -> Segment | None:
        # Fast path for the common case: Ethernet, IPv4 without options or fragments.
        if (
            linktype == LINKTYPE_ETHERNET
            and len(frame) >= 54
            and frame[12] == 8
            and frame[13] == 0
            and frame[14] == 0x45
            and not (frame[20] & 0x3F or frame[21])
        ):
            proto = frame[23]
            total = (frame[16] << 8) | frame[17]
            end = 14 + total if total >= 20 else 0
            if end > len(frame) or end < 34:
                end = len(frame) if total >= 20 else 0
            if proto == TCP and end >= 54:
                doff = (frame[46] >> 4) * 4
                if doff >= 20 and 34 + doff <= end:
                    if 34 + doff == end and not frame[47] & _SYN_RST:
                        return None  # a bare ACK/FIN: nothing downstream reads it
                    if self._shard_count and self._not_mine(frame, 29, 33, 34):
                        return None
                    return (
                        TCP,
                        frame[26:30],
                        frame[30:34],
                        (frame[34] << 8) | frame[35],
                        (frame[36] << 8) | frame[37],
                        (frame[38] << 24) | (frame[39] << 16) | (frame[40] << 8) | frame[41],
                        frame[47],
                        frame[34 + doff : end],
                    )
            elif proto == UDP and end >= 42:
                ulen = (frame[38] << 8) | frame[39]
                stop = 34 + ulen if 8 <= ulen <= end - 34 else end
                if self._shard_count and self._not_mine(frame, 29, 33, 34):
                    return None
                return (
                    UDP,
                    frame[26:30],
                    frame[30:34],
                    (frame[34] << 8) | frame[35],
                    (frame[36] << 8) | frame[37],
                    0,
                    0,
                    frame[42:stop],
                )
        # Ethernet, IPv6 with TCP or UDP right after the fixed header: the other common case.
        elif (
            linktype == LINKTYPE_ETHERNET
            and len(frame) >= 54
            and frame[12] == 0x86
            and frame[13] == 0xDD
            and frame[14] >> 4 == 6
            and (frame[20] == TCP or frame[20] == UDP)
        ):
            plen = (frame[18] << 8) | frame[19]
            n = len(frame)
            end = 54 + plen if plen and 54 + plen < n else n
            seg = self._l4(frame[20], frame[22:38], frame[38:54], frame, 54, end)
            if seg is not None and self._shard_count and self._not_mine(frame, 37, 53, 54):
                return None
            return seg
        off = self._network_offset(linktype, frame)
        if off < 0:
            return None
        try:
            return self._ip(ts, frame, off)
        except (IndexError, StructError):  # the frame ends inside a header
            self.counters.inc("decode.malformed")
            return None

    def _network_offset(self, linktype: int, frame: bytes) -> int:
        """Offset of the IP header in ``frame``, or -1 (counted) when there is none."""
        n = len(frame)
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                self.counters.inc("decode.malformed")
                return -1
            etype = (frame[12] << 8) | frame[13]
            off = 14
            while etype in _VLAN_TYPES and off + 4 <= n:
                etype = (frame[off + 2] << 8) | frame[off + 3]
                off += 4
            if etype == 0x8864:  # PPPoE session: 6-byte header, then a PPP protocol
                if off + 8 > n:
                    return -1
                etype = (frame[off + 6] << 8) | frame[off + 7]
                off += 8
                return off if etype in _PPP_IP4 or etype in _PPP_IP6 else -1
            return off if etype in (0x0800, 0x86DD) else -1
        if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW_OLD):
            return 0
        if linktype == LINKTYPE_RAW_OLD2:
            return 0
        if linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                return -1
            proto = (frame[14] << 8) | frame[15]
            return 16 if proto in (0x0800, 0x86DD) else -1
        if linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                return -1
            proto = (frame[0] << 8) | frame[1]
            return 20 if proto in (0x0800, 0x86DD) else -1
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                return -1
            # NULL stores the family in the writer's byte order; accept both
            fam = frame[0] | frame[3]
            return 4 if fam in (2, 24, 28, 30) else -1
        if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_PPP_ETHER):
            off = 6 if linktype == LINKTYPE_PPP_ETHER else 0
            if off + 2 <= n and frame[off] == 0xFF and frame[off + 1] == 0x03:
                off += 2  # address + control
            if off + 1 > n:
                return -1
            if frame[off] & 1:  # protocol field compression: one byte
                proto = frame[off]
                off += 1
            else:
                if off + 2 > n:
                    return -1
                proto = (frame[off] << 8) | frame[off + 1]
                off += 2
            return off if proto in _PPP_IP4 or proto in _PPP_IP6 else -1
        self.counters.inc("decode.unsupported_link")
        return -1

    def _ip(self, ts: float, frame: bytes, off: int) -> Segment | None:
        version = frame[off] >> 4
        if version == 4:
            ihl = (frame[off] & 0x0F) * 4
            total = (frame[off + 2] << 8) | frame[off + 3]
            if ihl < 20 or total < ihl:
                self.counters.inc("decode.malformed")
                return None
            end = min(off + total, len(frame))
            proto = frame[off + 9]
            src = frame[off + 12 : off + 16]
            dst = frame[off + 16 : off + 20]
            frag = (frame[off + 6] << 8) | frame[off + 7]
            payload_off = off + ihl
            if frag & 0x3FFF:  # MF set or offset non-zero
                ident = (frame[off + 4] << 8) | frame[off + 5]
                whole = self.fragments.add(
                    ts,
                    (src, dst, ident, proto),
                    (frag & 0x1FFF) * 8,
                    bool(frag & 0x2000),
                    proto,
                    frame[payload_off:end],
                )
                if whole is None:
                    return None
                return self._l4(whole[0], src, dst, whole[1], 0, len(whole[1]))
            return self._l4(proto, src, dst, frame, payload_off, end)
        if version == 6:
            if len(frame) < off + 40:
                self.counters.inc("decode.malformed")
                return None
            plen = (frame[off + 4] << 8) | frame[off + 5]
            end = off + 40 + plen if plen else len(frame)
            end = min(end, len(frame))
            nh = frame[off + 6]
            src = frame[off + 8 : off + 24]
            dst = frame[off + 24 : off + 40]
            pos = off + 40
            for _ in range(8):  # bounded walk of the extension header chain
                if nh in _V6_EXT_HEADERS:
                    nh, pos = frame[pos], pos + 8 + frame[pos + 1] * 8
                elif nh == _AH:
                    nh, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
                elif nh == _FRAG6:
                    nxt = frame[pos]
                    fo = (frame[pos + 2] << 8) | frame[pos + 3]
                    (ident,) = unpack_from("!I", frame, pos + 4)
                    if pos + 8 > end:
                        self.counters.inc("decode.malformed")
                        return None
                    whole = self.fragments.add(
                        ts,
                        (src, dst, ident, 0),
                        fo & 0xFFF8,
                        bool(fo & 1),
                        nxt,
                        frame[pos + 8 : end],
                    )
                    if whole is None:
                        return None
                    nh, data = whole
                    if nh in _V6_EXT_HEADERS:  # e.g. destination options after the fragment
                        return self._ip6_tail(nh, src, dst, data)
                    return self._l4(nh, src, dst, data, 0, len(data))
                else:
                    break
                if pos > end:
                    self.counters.inc("decode.malformed")
                    return None
            return self._l4(nh, src, dst, frame, pos, end)
        self.counters.inc("decode.malformed")
        return None

    def _ip6_tail(self, nh: int, src: bytes, dst: bytes, data: bytes) -> Segment | None:
        pos = 0
        for _ in range(8):
            if nh not in _V6_EXT_HEADERS:
                break
            nh, pos = data[pos], pos + 8 + data[pos + 1] * 8
        return self._l4(nh, src, dst, data, pos, len(data))

    def _l4(
        self, proto: int, src: bytes, dst: bytes, buf: bytes, off: int, end: int
    ) -> Segment | None:
        if proto == UDP:
            if off + 8 > end:
                self.counters.inc("decode.malformed")
                return None
            sport = (buf[off] << 8) | buf[off + 1]
            dport = (buf[off + 2] << 8) | buf[off + 3]
            ulen = (buf[off + 4] << 8) | buf[off + 5]
            stop = off + ulen if 8 <= ulen <= end - off else end
            return UDP, src, dst, sport, dport, 0, 0, buf[off + 8 : stop]
        if proto == TCP:
            if off + 20 > end:
                self.counters.inc("decode.malformed")
                return None
            doff = (buf[off + 12] >> 4) * 4
            if doff < 20 or off + doff > end:
                self.counters.inc("decode.malformed")
                return None
            sport = (buf[off] << 8) | buf[off + 1]
            dport = (buf[off + 2] << 8) | buf[off + 3]
            if off + doff == end and not buf[off + 13] & _SYN_RST:
                return None  # a bare ACK/FIN: nothing downstream reads it
            (seq,) = unpack_from("!I", buf, off + 4)
            return TCP, src, dst, sport, dport, seq, buf[off + 13], buf[off + doff : end]
        return None
