"""Bytes sent and received per TCP connection, from the kernel's tcp_info (Linux sock_diag).

``tcpi_bytes_acked`` (bytes the peer acknowledged, ≈ bytes up; the kernel counts the SYN and FIN
as one byte each, so a connection that sent N bytes reports N+1 or N+2) and
``tcpi_bytes_received`` (bytes down). Both exist since Linux 4.1/4.2; an older kernel or another
platform answers None, which sessions report as "unknown", never as zero.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

from agent.attribution.sockets import (
    INET_DIAG_INFO,
    TCP_LISTEN,
    DiagSocket,
    SockDiag,
    SockDiagError,
    mapped6,
)

Conn = tuple[str, int, str, int]  # local address, local port, remote address, remote port

# Offsets in struct tcp_info (include/uapi/linux/tcp.h): 8 bytes of u8 fields, 24 u32, 2 u64
# pacing rates, then bytes_acked and bytes_received.
_BYTES = struct.Struct("=QQ")
_BYTES_OFFSET = 120
INFO_EXT = 1 << (INET_DIAG_INFO - 1)  # idiag_ext bit asking for struct tcp_info


def bytes_from_tcp_info(info: bytes | None) -> tuple[int, int] | None:
    """(up, down) from a raw tcp_info, None when the kernel's struct is too old to have them."""
    if info is None or len(info) < _BYTES_OFFSET + _BYTES.size:
        return None
    acked, received = _BYTES.unpack_from(info, _BYTES_OFFSET)
    return int(acked), int(received)


def _key(addr: str) -> str:
    # One spelling per address: dual-stack sockets show IPv4 peers mapped, callers may not
    # compress IPv6 the way the kernel's inet_ntop does.
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class TcpStats:
    """Byte counters for TCP connections by 4-tuple (local side first)."""

    def __init__(self, diag: SockDiag | None = None) -> None:
        self._diag = diag or SockDiag()

    def close(self) -> None:
        self._diag.close()

    @classmethod
    def available(cls) -> TcpStats | None:
        """A TcpStats where the platform can tell bytes, else None."""
        try:
            return cls()
        except SockDiagError:
            return None

    def tcp_bytes(self, src: str, sport: int, dst: str, dport: int) -> tuple[int, int] | None:
        """(bytes up, bytes down) of the connection from local ``src`` to ``dst``, or None."""
        tries: list[tuple[str, str]] = [(src, dst)]
        msrc, mdst = mapped6(src), mapped6(dst)
        if msrc is not None and mdst is not None:
            tries.append((msrc, mdst))
        for local, remote in tries:
            try:
                answers = self._diag.lookup("tcp", local, sport, remote, dport, INFO_EXT)
            except (OSError, ValueError):
                continue
            for s in answers:
                if s.state != TCP_LISTEN and s.lport == sport and s.rport == dport:
                    return bytes_from_tcp_info(s.tcp_info)
        return None

    def tcp_bytes_many(self, conns: Iterable[Conn]) -> dict[Conn, tuple[int, int]]:
        """Bytes for many connections with one kernel dump per address family.

        Connections the kernel no longer has (closed) or cannot tell are absent from the result.
        """
        wanted = {(_key(c[0]), c[1], _key(c[2]), c[3]): c for c in conns}
        out: dict[Conn, tuple[int, int]] = {}
        if not wanted:
            return out
        families = {socket.AF_INET6 if ":" in k[0] else socket.AF_INET for k in wanted}
        if socket.AF_INET in families:
            families.add(socket.AF_INET6)  # dual-stack sockets hold IPv4 connections too
        for family in sorted(families):
            try:
                sockets = self._diag.dump(family, "tcp", ext=INFO_EXT)
            except OSError:
                continue
            for s in sockets:
                conn = wanted.get(_conn_key(s))
                if conn is not None:
                    counted = bytes_from_tcp_info(s.tcp_info)
                    if counted is not None:
                        out[conn] = counted
        return out


def _conn_key(s: DiagSocket) -> Conn:
    return (_key(s.local), s.lport, _key(s.remote), s.rport)
