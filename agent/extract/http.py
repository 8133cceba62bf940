"""HTTP/1 request Host (and CONNECT authority) on plaintext connections."""

from __future__ import annotations

from agent.exceptions import DecodeError, TruncatedError

METHODS = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)
MAX_HEADER = 8192


def looks_like_http_request(data: bytes | bytearray) -> bool:
    return data[:8].startswith(METHODS)


def request_host(data: bytes | bytearray) -> str | None:
    """The host an HTTP/1 request is for: the CONNECT authority or the Host header.

    Raises TruncatedError until the header block is complete (bounded by MAX_HEADER), and
    DecodeError when it is not an HTTP request. Returns None for IP literals and missing Host.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER)
    if end < 0:
        if len(data) >= MAX_HEADER:
            raise DecodeError("HTTP header block too long")
        raise TruncatedError("HTTP header block")
    head = bytes(data[:end])
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise DecodeError("not an HTTP/1 request line")
    if parts[0] == b"CONNECT":
        return _host_only(parts[1])
    if line_end < 0:
        return None
    for line in head[line_end + 2 :].split(b"\r\n"):
        if line[:5].lower() == b"host:":
            return _host_only(line[5:].strip())
    return None


def _host_only(authority: bytes) -> str | None:
    if not authority or authority.startswith(b"["):
        return None  # empty or an IPv6 literal
    host = authority.rsplit(b":", 1)[0] if authority.count(b":") == 1 else authority
    if not host.isascii():
        raise DecodeError("non-ASCII Host")
    text = host.decode("ascii").lower().rstrip(".")
    if not text or text.replace(".", "").isdigit():
        return None  # an IPv4 literal is not a name
    if any(c in text for c in " /\t@"):
        raise DecodeError("malformed Host")
    return text
