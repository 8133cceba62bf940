"""TLS ClientHello decoding: server name, ALPN and the encrypted-hello markers."""

from __future__ import annotations

from dataclasses import dataclass

from agent.exceptions import DecodeError, TruncatedError

HANDSHAKE_CLIENT_HELLO = 1
RECORD_HANDSHAKE = 22
EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_ECH = 0xFE0D  # RFC 9849 encrypted_client_hello
EXT_ESNI = 0xFFCE  # draft ESNI, still seen in old captures
MAX_HANDSHAKE = 1 << 16  # real hellos are < 8 KiB; 64 KiB bounds reassembly

_EMPTY: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello says about where it is going; never anything else of the hello."""

    sni: str | None  # lower-case host_name; None when the hello carries no server_name
    has_ech: bool  # an ECH extension: the SNI, if any, is the outer (public) name
    has_esni: bool
    alpn: tuple[str, ...]


def handshake_length(prefix: bytes | bytearray | memoryview) -> int | None:
    """Total length (4-byte header included) of the handshake message starting ``prefix``."""
    if len(prefix) < 4:
        return None
    if prefix[0] != HANDSHAKE_CLIENT_HELLO:
        raise DecodeError("not a ClientHello")
    length = (prefix[1] << 16) | (prefix[2] << 8) | prefix[3]
    if length > MAX_HANDSHAKE:
        raise DecodeError("ClientHello too long")
    return 4 + length


def looks_like_client_hello_record(data: bytes | bytearray | memoryview) -> bool:
    """Cheap first-segment test: a handshake record of TLS 1.0-1.3 starting a ClientHello."""
    return (
        len(data) >= 6
        and data[0] == RECORD_HANDSHAKE
        and data[1] == 3
        and data[2] <= 4
        and data[5] == HANDSHAKE_CLIENT_HELLO
    )


def records_to_handshake(stream: bytes | bytearray) -> bytes:
    """Join the fragments of handshake records at the start of a TLS stream into the first
    handshake message. Raises TruncatedError until the whole message is present.
    """
    out = bytearray()
    pos = 0
    need: int | None = None
    n = len(stream)
    while need is None or len(out) < need:
        if pos + 5 > n:
            raise TruncatedError("record header")
        if stream[pos] != RECORD_HANDSHAKE or stream[pos + 1] != 3:
            raise DecodeError("not a TLS handshake record")
        rlen = (stream[pos + 3] << 8) | stream[pos + 4]
        if rlen == 0 or rlen > 16384 + 2048:
            raise DecodeError("bad record length")
        end = pos + 5 + rlen
        out += stream[pos + 5 : min(end, n)]
        if need is None:
            need = handshake_length(out)
        if end > n and (need is None or len(out) < need):
            raise TruncatedError("record body")
        pos = end
    return bytes(out[:need])


def parse_client_hello(handshake: bytes | bytearray | memoryview) -> ClientHello:
    """Decode a ClientHello handshake message (header included)."""
    # Indexing bytes is cheaper than indexing a memoryview, and the copy is one hello.
    data = handshake if type(handshake) is bytes else bytes(handshake)
    total = handshake_length(data)
    if total is None or len(data) < total:
        raise TruncatedError("ClientHello")
    end = total
    pos = 4 + 2 + 32  # header, legacy_version, random
    if pos + 1 > end:
        raise DecodeError("short ClientHello")
    pos += 1 + data[pos]  # session id
    if pos + 2 > end:
        raise DecodeError("short ClientHello")
    pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
    if pos + 1 > end:
        raise DecodeError("short ClientHello")
    pos += 1 + data[pos]  # compression methods
    if pos == end:  # SSLv3-style hello without extensions
        return ClientHello(None, False, False, _EMPTY)
    if pos + 2 > end:
        raise DecodeError("short extensions")
    ext_end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if ext_end > end:
        raise DecodeError("extensions overrun")
    pos += 2
    sni: str | None = None
    has_ech = has_esni = False
    alpn = _EMPTY
    while pos + 4 <= ext_end:
        etype = (data[pos] << 8) | data[pos + 1]
        elen = (data[pos + 2] << 8) | data[pos + 3]
        body = pos + 4
        pos = body + elen
        if pos > ext_end:
            raise DecodeError("extension overrun")
        if etype == EXT_SERVER_NAME:
            sni = _server_name(data[body:pos])
        elif etype == EXT_ECH:
            has_ech = True
        elif etype == EXT_ESNI:
            has_esni = True
        elif etype == EXT_ALPN:
            alpn = _alpn(data[body:pos])
    return ClientHello(sni, has_ech, has_esni, alpn)


def _server_name(ext: bytes) -> str | None:
    if len(ext) < 2:
        raise DecodeError("short server_name")
    end = min(len(ext), 2 + ((ext[0] << 8) | ext[1]))
    pos = 2
    while pos + 3 <= end:
        ntype = ext[pos]
        nlen = (ext[pos + 1] << 8) | ext[pos + 2]
        start = pos + 3
        pos = start + nlen
        if pos > end:
            raise DecodeError("server_name overrun")
        if ntype == 0:  # host_name; other types were never defined
            raw = ext[start:pos]
            if not raw or not raw.isascii():
                raise DecodeError("server_name is not an ASCII host name")
            return raw.decode("ascii").lower().rstrip(".")
    return None


def _alpn(ext: bytes) -> tuple[str, ...]:
    if len(ext) < 2:
        return _EMPTY
    end = min(len(ext), 2 + ((ext[0] << 8) | ext[1]))
    pos = 2
    out: list[str] = []
    while pos < end:
        n = ext[pos]
        out.append(ext[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return tuple(out)
