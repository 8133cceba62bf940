"""Google QUIC client hellos: the plaintext CHLO of Q024-Q046 packets and its SNI tag.

Before Q050, gQUIC sent its handshake message (CHLO) unencrypted on stream 1 of the client's
first packets, behind a 12-byte hash instead of an AEAD tag. Two packet layouts carry it:

* Q024-Q043: the gQUIC public header (flags, 8-byte connection ID, version, packet number).
* Q044-Q046: an IETF-style long header with the version in the invariant position.

Q050 and later protect the CHLO like an IETF Initial; ``quic.py`` opens those and hands the
crypto stream to ``parse_chlo`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.exceptions import DecodeError, TruncatedError

TAG_CHLO = b"CHLO"
TAG_SNI = b"SNI\x00"
HASH_LEN = 12  # FNV-1a-128 truncated to 96 bits, in place of an AEAD tag
MAX_TAGS = 128  # Chromium's kMaxEntries for a crypto handshake message
HANDSHAKE_STREAM = 1

_PUBLIC_FLAG_VERSION = 0x01
_PUBLIC_FLAG_RESET = 0x02
_PUBLIC_FLAG_CID = 0x08  # an 8-byte connection ID follows
# Bits 0x80 and 0x40 are never set in a gQUIC public header; IETF QUIC always sets one of them.
_LEGACY_MASK = 0xC0 | _PUBLIC_FLAG_CID | _PUBLIC_FLAG_VERSION
_LEGACY_CLIENT = _PUBLIC_FLAG_CID | _PUBLIC_FLAG_VERSION
_FRAME_PING = 0x07
_FRAME_STREAM = 0x80
_PN_LENGTHS = (1, 2, 4, 6)  # public flags bits 0x30
_FIRST_BIG_ENDIAN = 39  # Q039 switched the framing's integers from little- to big-endian
_FIRST_WITHOUT_PRIVATE_FLAGS = 34
LONG_HEADER_VERSIONS = frozenset((0x51303434, 0x51303435, 0x51303436))  # Q044-Q046


_NO_CHLO_FOUND: tuple[bool, str | None] = (False, None)


@dataclass(frozen=True, slots=True)
class GquicChlo:
    """A client hello found in a gQUIC packet."""

    version: int
    cid: bytes
    sni: str | None  # lower-case; None when the CHLO has no SNI tag


def gquic_version_number(version: int) -> int | None:
    """The decimal number of a ``Q0dd`` version word, or None when it is not one."""
    raw = version.to_bytes(4, "big")
    if raw[0] != 0x51 or not raw[1:].isdigit():
        return None
    return int(raw[1:])


def is_legacy_client_packet(payload: bytes) -> bool:
    """Cheap test for a gQUIC public header with version and 8-byte CID (Q024-Q043 client)."""
    return len(payload) > 13 and payload[0] & _LEGACY_MASK == _LEGACY_CLIENT and payload[9] == 0x51


def parse_legacy_packet(payload: bytes) -> GquicChlo | None:
    """The CHLO of a client packet with a gQUIC public header, or None if it carries none.

    Raises DecodeError when a CHLO is there but malformed.
    """
    flags = payload[0]
    if flags & _PUBLIC_FLAG_RESET or not flags & _PUBLIC_FLAG_VERSION:
        return None
    version = int.from_bytes(payload[9:13], "big")
    number = gquic_version_number(version)
    if number is None or number >= 44:
        return None
    pos = 13 + _PN_LENGTHS[(flags >> 4) & 0x03] + HASH_LEN
    if number < _FIRST_WITHOUT_PRIVATE_FLAGS:
        pos += 1
    found, sni = _stream_chlo(payload, pos, number >= _FIRST_BIG_ENDIAN)
    return GquicChlo(version, bytes(payload[1:9]), sni) if found else None


def parse_long_header_packet(payload: bytes, version: int) -> GquicChlo | None:
    """The CHLO of a Q044-Q046 client Initial packet, or None if it carries none."""
    if version not in LONG_HEADER_VERSIONS or len(payload) < 6:
        return None
    first = payload[0]
    if first & 0x30:  # only Initial packets (type 0) are in the clear
        return None
    lengths = payload[5]
    dcil = (lengths >> 4) + 3 if lengths >> 4 else 0
    scil = (lengths & 0x0F) + 3 if lengths & 0x0F else 0
    cid_at = 6
    pos = cid_at + dcil + scil + (first & 0x03) + 1 + HASH_LEN
    found, sni = _stream_chlo(payload, pos, big_endian=True)
    return GquicChlo(version, bytes(payload[cid_at : cid_at + dcil]), sni) if found else None


def _stream_chlo(payload: bytes, pos: int, big_endian: bool) -> tuple[bool, str | None]:
    """Find the STREAM frame that starts the handshake stream and read the CHLO's SNI.

    Returns (False, None) for an ordinary gQUIC packet: no CHLO at stream 1 offset 0. Earlier
    frames other than PING are not walked: the client's first packet leads with the CHLO, and
    a packet that does not is not one we need. A CHLO longer than the packet is read as far as
    it goes (TruncatedError if the SNI lies beyond).
    """
    n = len(payload)
    while pos < n and payload[pos] == _FRAME_PING:
        pos += 1
    if pos >= n or not payload[pos] & _FRAME_STREAM:
        return _NO_CHLO_FOUND
    ftype = payload[pos]
    id_len = (ftype & 0x03) + 1
    off_code = (ftype >> 2) & 0x07
    off_len = off_code + 1 if off_code else 0
    has_len = bool(ftype & 0x20)
    pos += 1
    head_end = pos + id_len + off_len + (2 if has_len else 0)
    if head_end > n:
        return _NO_CHLO_FOUND
    order: Literal["big", "little"] = "big" if big_endian else "little"
    stream_id = int.from_bytes(payload[pos : pos + id_len], order)
    pos += id_len
    offset = int.from_bytes(payload[pos : pos + off_len], order)
    pos += off_len
    if has_len:
        end = pos + int.from_bytes(payload[pos : pos + 2], order)
        pos += 2
    else:
        end = n
    if stream_id != HANDSHAKE_STREAM or offset != 0 or payload[pos : pos + 4] != TAG_CHLO:
        return _NO_CHLO_FOUND
    return True, parse_chlo(payload[pos : min(end, n)])


def chlo_length(prefix: bytes) -> int | None:
    """Total length of the CHLO message starting ``prefix`` once its tag index is present."""
    if len(prefix) < 8:
        return None
    if prefix[:4] != TAG_CHLO:
        raise DecodeError("not a CHLO")
    count = int.from_bytes(prefix[4:6], "little")
    if count > MAX_TAGS:
        raise DecodeError("CHLO with too many tags")
    index_end = 8 + 8 * count
    if len(prefix) < index_end:
        return None
    if count == 0:
        return index_end
    return index_end + int.from_bytes(prefix[index_end - 4 : index_end], "little")


def parse_chlo(message: bytes) -> str | None:
    """The SNI tag of a CHLO message (the tag index must be whole; values up to SNI)."""
    if len(message) < 8 or message[:4] != TAG_CHLO:
        raise DecodeError("not a CHLO")
    count = int.from_bytes(message[4:6], "little")
    if count > MAX_TAGS:
        raise DecodeError("CHLO with too many tags")
    index_end = 8 + 8 * count
    if index_end > len(message):
        raise TruncatedError("CHLO tag index")
    prev = 0
    for at in range(8, index_end, 8):
        end = int.from_bytes(message[at + 4 : at + 8], "little")
        if end < prev:
            raise DecodeError("CHLO tag offsets go backwards")
        if message[at : at + 4] == TAG_SNI:
            start, stop = index_end + prev, index_end + end
            if stop > len(message):
                raise TruncatedError("CHLO SNI value")
            return _host(message[start:stop])
        prev = end
    return None


def _host(raw: bytes) -> str | None:
    if not raw.isascii():
        raise DecodeError("CHLO SNI is not an ASCII host name")
    name = raw.decode("ascii").lower().rstrip(".")
    return name or None
