"""QUIC wire format for client Initials: long headers, frames, and CRYPTO stream reassembly."""

from __future__ import annotations

import re
from collections.abc import Iterator

from agent.exceptions import DecodeError, TruncatedError

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C
GQUIC_FRAME_PING = 0x07
GQUIC_FRAME_CRYPTO = 0x08

MAX_CID_LEN = 20  # RFC 9000 section 17.2, for every version we can open
_LONG_HEADER = 0x80

_NONZERO = re.compile(b"[^\x00]")
# A sender can claim any range count; more ranges than bytes left is malformed, but bounding the
# loop up front keeps a lying count from costing more than the payload it arrived in.
_MAX_ACK_RANGES = 1024

CryptoChunk = tuple[int, bytes]  # (stream offset, data)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 section 16) at ``pos``: (value, next position)."""
    if pos >= len(buf):
        raise TruncatedError("varint")
    first = buf[pos]
    size = 1 << (first >> 6)
    if size == 1:
        return first, pos + 1
    end = pos + size
    if end > len(buf):
        raise TruncatedError("varint")
    return int.from_bytes(buf[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


def long_header_cids(data: bytes, pos: int) -> tuple[bytes, bytes, int]:
    """DCID and SCID of the long header at ``pos``, and the position after them."""
    at = pos + 5
    if at >= len(data):
        raise TruncatedError("long header")
    dcil = data[at]
    if dcil > MAX_CID_LEN:
        raise DecodeError("connection ID longer than 20 bytes")
    dcid = data[at + 1 : at + 1 + dcil]
    at += 1 + dcil
    if at >= len(data):
        raise TruncatedError("long header")
    scil = data[at]
    if scil > MAX_CID_LEN:
        raise DecodeError("connection ID longer than 20 bytes")
    scid = data[at + 1 : at + 1 + scil]
    at += 1 + scil
    if at > len(data):
        raise TruncatedError("long header")
    return dcid, scid, at


def long_packets(
    data: bytes, initial_type: int, retry_type: int
) -> Iterator[tuple[int, bytes, int, int, int]]:
    """The coalesced long-header packets of one datagram (RFC 9000 section 12.2), walked by their
    Length fields: (type bits, DCID, start, packet-number offset, end) of each.

    The walk stops at a short-header packet, which runs to the end of the datagram, at a packet
    of another version, and at a Retry, which has no Length (only servers send one).
    """
    version = data[1:5]
    pos, n = 0, len(data)
    while pos < n:
        first = data[pos]
        if not first & _LONG_HEADER or data[pos + 1 : pos + 5] != version:
            return
        ptype = (first >> 4) & 0x03
        if ptype == retry_type:
            return
        dcid, _, at = long_header_cids(data, pos)
        if ptype == initial_type:
            token_len, at = read_varint(data, at)
            at += token_len
        length, at = read_varint(data, at)
        end = at + length
        if end > n:
            raise TruncatedError("long-header packet overruns the datagram")
        yield ptype, dcid, pos, at, end
        pos = end


def _skip_padding(payload: bytes, pos: int) -> int:
    found = _NONZERO.search(payload, pos)
    return len(payload) if found is None else found.start()


def _crypto_frame(payload: bytes, pos: int) -> tuple[CryptoChunk, int]:
    offset, pos = read_varint(payload, pos)
    length, pos = read_varint(payload, pos)
    end = pos + length
    if end > len(payload):
        raise DecodeError("CRYPTO frame overruns the packet")
    return (offset, payload[pos:end]), end


def _skip_ack(payload: bytes, pos: int, ecn: bool) -> int:
    _, pos = read_varint(payload, pos)  # largest acknowledged
    _, pos = read_varint(payload, pos)  # ack delay
    count, pos = read_varint(payload, pos)
    if count > _MAX_ACK_RANGES:
        raise DecodeError("ACK frame with too many ranges")
    _, pos = read_varint(payload, pos)  # first range
    for _ in range(count):
        _, pos = read_varint(payload, pos)  # gap
        _, pos = read_varint(payload, pos)  # range length
    if ecn:
        for _ in range(3):
            _, pos = read_varint(payload, pos)
    return pos


def _skip_connection_close(payload: bytes, pos: int) -> int:
    _, pos = read_varint(payload, pos)  # error code
    _, pos = read_varint(payload, pos)  # offending frame type
    length, pos = read_varint(payload, pos)
    if pos + length > len(payload):
        raise DecodeError("CONNECTION_CLOSE reason overruns the packet")
    return pos + length


def initial_crypto_chunks(payload: bytes) -> tuple[list[CryptoChunk], int | None]:
    """The CRYPTO data of an IETF QUIC Initial payload, and the type of an unknown frame if one
    stopped the walk (its length is unknown, so nothing after it can be read).

    Only frames allowed in Initial packets (RFC 9000 table 3) are understood.
    """
    # Browsers scatter the hello over dozens of small CRYPTO frames between PING and PADDING
    # frames, so this loop is hot: CRYPTO frames with 1- and 2-byte varints (all of them in
    # practice) are read inline; anything else takes the general path.
    chunks: list[CryptoChunk] = []
    search = _NONZERO.search
    pos, n = 0, len(payload)
    while pos < n:
        ftype = payload[pos]
        pos += 1
        if ftype == FRAME_CRYPTO:
            if pos < n and payload[pos] < 0x40:
                offset = payload[pos]
                pos += 1
            elif pos + 1 < n and payload[pos] < 0x80:
                offset = ((payload[pos] & 0x3F) << 8) | payload[pos + 1]
                pos += 2
            else:
                offset, pos = read_varint(payload, pos)
            if pos < n and payload[pos] < 0x40:
                length = payload[pos]
                pos += 1
            elif pos + 1 < n and payload[pos] < 0x80:
                length = ((payload[pos] & 0x3F) << 8) | payload[pos + 1]
                pos += 2
            else:
                length, pos = read_varint(payload, pos)
            end = pos + length
            if end > n:
                raise DecodeError("CRYPTO frame overruns the packet")
            chunks.append((offset, payload[pos:end]))
            pos = end
        elif ftype == FRAME_PADDING:
            found = search(payload, pos)
            pos = n if found is None else found.start()
        elif ftype == FRAME_PING:
            continue
        elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
            pos = _skip_ack(payload, pos, ftype == FRAME_ACK_ECN)
        elif ftype == FRAME_CONNECTION_CLOSE:
            pos = _skip_connection_close(payload, pos)
        else:
            return chunks, ftype
    return chunks, None


def gquic_crypto_chunks(payload: bytes) -> tuple[list[CryptoChunk], int | None]:
    """The CRYPTO data of a Google Q050/T05x Initial payload, which uses gQUIC frame types.

    gQUIC ACK frames have a version-specific layout we do not need, so they stop the walk; the
    client's first Initials, which carry the hello, have none.
    """
    chunks: list[CryptoChunk] = []
    pos, n = 0, len(payload)
    while pos < n:
        ftype = payload[pos]
        pos += 1
        if ftype == FRAME_PADDING:
            pos = _skip_padding(payload, pos)
        elif ftype == GQUIC_FRAME_CRYPTO:
            chunk, pos = _crypto_frame(payload, pos)
            chunks.append(chunk)
        elif ftype == GQUIC_FRAME_PING:
            continue
        else:
            return chunks, ftype
    return chunks, None


class CryptoStream:
    """Reassembles the start of one CRYPTO stream from chunks in any order, with overlaps.

    Only the first ``limit`` bytes are kept: a client's Initial CRYPTO stream holds nothing but
    its hello, so anything past the limit belongs to a hello too big to keep (or to an attacker).
    """

    __slots__ = ("_buf", "_ranges", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._ranges: list[tuple[int, int]] = []  # sorted, disjoint, non-adjacent [start, end)

    def add(self, offset: int, data: bytes) -> None:
        end = min(offset + len(data), self.limit)
        if offset >= end:
            return
        buf = self._buf
        ranges = self._ranges
        if offset == len(buf):  # right after everything so far: the usual case once sorted
            buf += data if end - offset == len(data) else data[: end - offset]
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((offset, end))
            return
        if end > len(buf):
            buf.extend(bytes(end - len(buf)))
        buf[offset:end] = data if end - offset == len(data) else data[: end - offset]
        # Chunks are mostly added in offset order: extend or append to the last range.
        if not ranges or offset > ranges[-1][1]:
            ranges.append((offset, end))
            return
        last_lo, last_hi = ranges[-1]
        if offset >= last_lo:
            ranges[-1] = (last_lo, max(last_hi, end))
            return
        merged: list[tuple[int, int]] = []
        start = offset
        for lo, hi in ranges:
            if hi < start or lo > end:
                merged.append((lo, hi))
            else:
                start, end = min(lo, start), max(hi, end)
        merged.append((start, end))
        merged.sort()
        self._ranges = merged

    def contiguous(self) -> int:
        """How many bytes from offset 0 are present."""
        if self._ranges and self._ranges[0][0] == 0:
            return self._ranges[0][1]
        return 0

    def prefix(self, length: int) -> bytes:
        return bytes(self._buf[:length])

    @property
    def buffered(self) -> int:
        return len(self._buf)
