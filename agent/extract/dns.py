"""DNS wire-format decoding: questions and answer records from one message, and TCP DNS framing.

Only what name extraction needs is decoded: the header, the question section and the answer
section. Authority and additional records (SOA, glue, EDNS OPT) are never read, so their bytes
cannot make a message fail and cost nothing. Decoding follows RFC 1035 with RFC 9460 for SVCB and
HTTPS records.

Names come out lower-cased, without the trailing dot; the root is ``""``. A label byte outside
printable ASCII, and the characters ``"().;\\@$``, are escaped the way dnspython's ``to_text``
does (``\\DDD``, ``\\.``). So a label that carries a dot cannot pose as two labels, an escaped
label never equals a catalog label, and the odd record still decodes instead of failing the
whole message (mDNS service names with spaces or UTF-8 are common).

One malformed answer rejects the whole message: a message whose structure does not hold is not
evidence, and the caller counts the ``DecodeError``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from agent.exceptions import DecodeError, TruncatedError

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_PTR = 12
TYPE_AAAA = 28
TYPE_DNAME = 39
TYPE_SVCB = 64
TYPE_HTTPS = 65

_NAME_TYPES = frozenset((TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_DNAME))

_SVC_IPV4HINT = 4
_SVC_ECH = 5
_SVC_IPV6HINT = 6

_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

_HEADER_LEN = 12
_MAX_NAME_WIRE = 255
# A 255-octet name has at most 127 labels, so an honest compressor never needs more pointers;
# the cap keeps a crafted pointer chain from costing O(message size) per name.
_MAX_JUMPS = 127
# RFC 2181 section 8: a TTL with the top bit set is treated as zero.
_MAX_TTL = 0x7FFFFFFF

# Bytes that stay as they are in a name's text form; everything else is escaped (dnspython's rule).
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b'"().;\\@$')


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """One question: the name asked (normalised as described above) and its query type."""

    name: str
    qtype: int


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One answer record.

    ``value`` is the address text for A/AAAA (``str(ipaddress.ip_address(...))``), the target name
    for CNAME/DNAME/PTR/NS and for SVCB/HTTPS (a ServiceMode "." target is the owner name; an
    AliasMode "." means "no such service", RFC 9460 section 2.5.1, so it is ``None``), and ``None``
    for every other type. ``hints`` are the SVCB/HTTPS ipv4hint and ipv6hint addresses.
    """

    name: str
    rtype: int
    ttl: int
    value: str | None
    hints: tuple[str, ...] = ()
    has_ech: bool = False


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """The parts of a message that name extraction uses; ``answers`` is the answer section only."""

    id: int
    is_response: bool
    opcode: int
    rcode: int
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsRecord, ...]


def parse_dns(data: bytes | bytearray | memoryview) -> DnsMessage:
    """Decode the header, questions and answers of one DNS message.

    Raises ``TruncatedError`` when the bytes end inside the questions or answers and
    ``DecodeError`` for any other malformation.
    """
    if type(data) is not bytes:
        # A stream reassembler may hand over a bytearray or memoryview; ipaddress takes only bytes.
        data = bytes(data)
    if len(data) < _HEADER_LEN:
        raise TruncatedError(f"DNS header needs {_HEADER_LEN} bytes, got {len(data)}")
    msg_id, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data)
    end = len(data)
    pos = _HEADER_LEN
    questions: list[DnsQuestion] = []
    for _ in range(qdcount):
        name, pos = _read_name(data, pos)
        if pos + 4 > end:
            raise TruncatedError("DNS question ends early")
        questions.append(DnsQuestion(name, _U16.unpack_from(data, pos)[0]))
        pos += 4
    answers: list[DnsRecord] = []
    for _ in range(ancount):
        record, pos = _read_record(data, pos)
        answers.append(record)
    return DnsMessage(
        id=msg_id,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        questions=tuple(questions),
        answers=tuple(answers),
    )


def split_tcp_dns(buffer: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
    """Cut complete DNS-over-TCP messages (RFC 1035 4.2.2, 2-byte length prefix) off ``buffer``.

    Returns the messages and how many bytes they used; the rest is an incomplete message that the
    caller keeps until more stream data arrives. A zero-length frame comes back as ``b""`` so that
    decoding it fails and is counted rather than vanishing.
    """
    messages: list[bytes] = []
    pos = 0
    end = len(buffer)
    while pos + 2 <= end:
        length = _U16.unpack_from(buffer, pos)[0]
        stop = pos + 2 + length
        if stop > end:
            break
        messages.append(bytes(buffer[pos + 2 : stop]))
        pos = stop
    return messages, pos


def _read_record(data: bytes, pos: int) -> tuple[DnsRecord, int]:
    name, pos = _read_name(data, pos)
    if pos + _RR_FIXED.size > len(data):
        raise TruncatedError("DNS record header ends early")
    rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    start = pos + _RR_FIXED.size
    stop = start + rdlength
    if stop > len(data):
        raise TruncatedError("DNS record data ends early")
    if ttl > _MAX_TTL:
        ttl = 0
    if rtype == TYPE_A:
        if rdlength != 4:
            raise DecodeError(f"A record with {rdlength} bytes of data")
        return DnsRecord(name, rtype, ttl, socket.inet_ntoa(data[start:stop])), stop
    if rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DecodeError(f"AAAA record with {rdlength} bytes of data")
        return DnsRecord(name, rtype, ttl, str(ipaddress.IPv6Address(data[start:stop]))), stop
    if rtype in _NAME_TYPES:
        target, after = _read_name(data, start)
        if after != stop:
            raise DecodeError(f"type {rtype} target name does not fill its record data")
        return DnsRecord(name, rtype, ttl, target), stop
    if rtype in (TYPE_SVCB, TYPE_HTTPS):
        return _read_svcb(data, start, stop, name, rtype, ttl), stop
    return DnsRecord(name, rtype, ttl, None), stop


def _read_svcb(data: bytes, pos: int, stop: int, owner: str, rtype: int, ttl: int) -> DnsRecord:
    if stop - pos < 3:
        raise DecodeError("SVCB/HTTPS record too short")
    priority = _U16.unpack_from(data, pos)[0]
    target, pos = _read_name(data, pos + 2)
    if pos > stop:
        raise DecodeError("SVCB/HTTPS target name overruns its record data")
    hints: list[str] = []
    has_ech = False
    while pos < stop:
        if pos + 4 > stop:
            raise DecodeError("SVCB/HTTPS parameter header overruns its record data")
        key, length = _U16_PAIR.unpack_from(data, pos)
        pos += 4
        end = pos + length
        if end > stop:
            raise DecodeError("SVCB/HTTPS parameter overruns its record data")
        if key == _SVC_IPV4HINT:
            if length == 0 or length % 4:
                raise DecodeError(f"ipv4hint of {length} bytes")
            hints.extend(socket.inet_ntoa(data[i : i + 4]) for i in range(pos, end, 4))
        elif key == _SVC_IPV6HINT:
            if length == 0 or length % 16:
                raise DecodeError(f"ipv6hint of {length} bytes")
            hints.extend(str(ipaddress.IPv6Address(data[i : i + 16])) for i in range(pos, end, 16))
        elif key == _SVC_ECH:
            has_ech = True
        pos = end
    value: str | None = target
    if not target:
        value = owner if priority else None
    return DnsRecord(owner, rtype, ttl, value, tuple(hints), has_ech)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name at ``pos``; return its text and the offset after it."""
    labels: list[bytes] = []
    end = len(data)
    resume = -1  # where the caller continues: right after the first pointer, if any
    # Every pointer must land strictly before the previous one (and the first before the name
    # itself), as dnspython requires; together with the jump cap this rules out loops.
    limit = pos
    jumps = 0
    wire_len = 1  # the terminating root label
    while True:
        if pos >= end:
            raise TruncatedError("DNS name runs past the end of the message")
        length = data[pos]
        if length == 0:
            break
        kind = length & 0xC0
        if kind == 0:
            pos += 1
            label_end = pos + length
            if label_end > end:
                raise TruncatedError("DNS label runs past the end of the message")
            wire_len += length + 1
            if wire_len > _MAX_NAME_WIRE:
                raise DecodeError("DNS name longer than 255 octets")
            labels.append(data[pos:label_end])
            pos = label_end
        elif kind == 0xC0:
            if pos + 1 >= end:
                raise TruncatedError("DNS compression pointer cut in half")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise DecodeError("DNS compression pointer does not point backwards")
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise DecodeError("too many DNS compression pointers in one name")
            if resume < 0:
                resume = pos + 2
            limit = pos = target
        else:
            # 0x40 (extended label, RFC 6891 deprecated it) and 0x80 (reserved).
            raise DecodeError(f"unsupported DNS label type 0x{kind:02x}")
    if resume < 0:
        resume = pos + 1
    if not labels:
        return "", resume
    if b"".join(labels).translate(None, _PLAIN):
        return ".".join(_escape(label.lower()) for label in labels), resume
    return b".".join(labels).lower().decode("ascii"), resume


def _escape(label: bytes) -> str:
    # Only reached for names with unusual bytes, so a per-byte loop is acceptable here.
    parts: list[str] = []
    for byte in label:
        if byte in _PLAIN:
            parts.append(chr(byte))
        elif 0x20 < byte < 0x7F:
            parts.append("\\" + chr(byte))
        else:
            parts.append(f"\\{byte:03d}")
    return "".join(parts)
