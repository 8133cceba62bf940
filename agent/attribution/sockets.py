"""Which local socket owns a connection: Linux sock_diag over netlink, psutil elsewhere, a fake.

The netlink path asks the kernel for exactly one socket by its 4-tuple (``inet_diag_req_v2``
without NLM_F_DUMP), which costs one round trip however many sockets the host has, and answers
with the socket's uid and inode. Dumps (every socket of a family, optionally with tcp_info) serve
the byte counters in :mod:`agent.attribution.sockstats`.

Kernel quirks handled here, each checked by a test on a real socket:

* TCP exact lookups take ``idiag_src`` as the local side; UDP exact lookups take it as the remote
  side ("swapped for historical reasons", ``net/ipv4/udp_diag.c``).
* An exact TCP lookup falls back to a listening socket and a UDP lookup matches unconnected
  sockets, so an answer is accepted only when its tuple is the one asked for (an unconnected UDP
  socket only when the caller allows it: a DNS client often sends from one).
* A dual-stack socket shows IPv4 peers as ``::ffff:a.b.c.d`` in the AF_INET6 table.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Transport = Literal["tcp", "udp"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2  # attribute type carrying struct tcp_info
ALL_STATES = 0xFFFFFFFF
NOCOOKIE = 0xFFFFFFFF
TCP_LISTEN = 10

_NLMSGHDR = struct.Struct("=LHHLL")
_REQ_HEAD = struct.Struct("=BBBxI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")  # interface index, cookie[2] (host order)
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_RTA = struct.Struct("=HH")
_MSG_LEN = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + _MSG_TAIL.size  # 72
_PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True, slots=True)
class DiagSocket:
    """One socket as sock_diag reports it. Addresses are in the family's text form."""

    family: int
    state: int
    local: str
    lport: int
    remote: str
    rport: int
    uid: int
    inode: int
    tcp_info: bytes | None = None


@dataclass(frozen=True, slots=True)
class SocketOwner:
    """Who owns a socket, as far as the platform tells: the uid and inode, or the pid directly."""

    uid: int | None
    inode: int | None  # 0 or None once the socket has no file (TIME_WAIT, closed)
    pid: int | None = None


class SocketTable(Protocol):
    """Find the socket with this local and remote end, or None."""

    def close(self) -> None: ...

    def find(
        self,
        transport: Transport,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        *,
        allow_unconnected: bool = False,
    ) -> SocketOwner | None: ...


# --- netlink message codec (bytes in, records out; no sockets) -------------------------------


def _packed(family: int, addr: str) -> bytes:
    return socket.inet_pton(family, addr).ljust(16, b"\0")


def encode_request(
    family: int,
    transport: Transport,
    src: str = "",
    sport: int = 0,
    dst: str = "",
    dport: int = 0,
    *,
    dump: bool = False,
    ext: int = 0,
    states: int = ALL_STATES,
    seq: int = 1,
) -> bytes:
    """One SOCK_DIAG_BY_FAMILY request; ``src``/``dst`` are the kernel's idiag_src/idiag_dst."""
    zero = b"\0" * 16
    sockid = _SOCKID.pack(
        sport, dport, _packed(family, src) if src else zero, _packed(family, dst) if dst else zero
    ) + _SOCKID_TAIL.pack(0, NOCOOKIE, NOCOOKIE)
    body = _REQ_HEAD.pack(family, _PROTO[transport], ext, states) + sockid
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def decode_messages(data: bytes) -> tuple[list[DiagSocket], bool, int]:
    """Parse one netlink datagram: (sockets, done, errno). ``done`` on NLMSG_DONE or an error."""
    out: list[DiagSocket] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        body = off + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            return out, True, 0
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            return out, True, -err
        if kind == SOCK_DIAG_BY_FAMILY and length - _NLMSGHDR.size >= _MSG_LEN:
            out.append(_decode_one(data, body, off + length))
        off += (length + 3) & ~3
    return out, False, 0


def _decode_one(data: bytes, start: int, end: int) -> DiagSocket:
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, start)
    sport, dport, src, dst = _SOCKID.unpack_from(data, start + _MSG_HEAD.size)
    tail = start + _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(data, tail)
    info: bytes | None = None
    off = start + _MSG_LEN
    while off + _RTA.size <= end:
        rta_len, rta_type = _RTA.unpack_from(data, off)
        if rta_len < _RTA.size:
            break
        if rta_type == INET_DIAG_INFO:
            info = bytes(data[off + _RTA.size : off + rta_len])
        off += (rta_len + 3) & ~3
    return DiagSocket(
        family, state, _text(family, src), sport, _text(family, dst), dport, uid, inode, info
    )


# --- netlink I/O ------------------------------------------------------------------------------


class SockDiagError(OSError):
    """sock_diag is not available here (not Linux, module missing, not permitted)."""


class SockDiag:
    """A netlink socket for sock_diag queries. Not thread-safe: one per thread of use."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SockDiagError(errno.ENOSYS, "sock_diag needs Linux")
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise SockDiagError(exc.errno, f"cannot open NETLINK_SOCK_DIAG: {exc}") from exc
        # A kernel answer takes microseconds; the timeout only guards against a hung agent.
        self._sock.settimeout(2.0)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _ask(self, request: Callable[[int], bytes], dump: bool) -> list[DiagSocket]:
        # Read the whole answer before returning, so a later query never sees leftovers.
        self._seq += 1
        self._sock.sendto(request(self._seq), (0, 0))
        out: list[DiagSocket] = []
        while True:
            data = self._sock.recv(1 << 17)
            sockets, done, err = decode_messages(data)
            if err and err != errno.ENOENT:
                raise SockDiagError(err, os.strerror(err))
            out.extend(sockets)
            if done or not dump:
                return out

    def lookup(
        self, transport: Transport, local: str, lport: int, remote: str, rport: int, ext: int = 0
    ) -> list[DiagSocket]:
        """The kernel's answer to an exact lookup (zero or one socket; not yet checked).

        ``ext`` is the idiag_ext bit mask of extra attributes (``1 << (INET_DIAG_INFO - 1)``).
        """
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        if transport == "udp":
            # udp_diag swaps the roles of idiag_src and idiag_dst.
            src, sport, dst, dport = remote, rport, local, lport
        else:
            src, sport, dst, dport = local, lport, remote, rport
        return self._ask(
            lambda seq: encode_request(family, transport, src, sport, dst, dport, ext=ext, seq=seq),
            dump=False,
        )

    def dump(
        self, family: int, transport: Transport, *, ext: int = 0, states: int = ALL_STATES
    ) -> list[DiagSocket]:
        """Every socket of one family and transport."""
        return self._ask(
            lambda seq: encode_request(
                family, transport, dump=True, ext=ext, states=states, seq=seq
            ),
            dump=True,
        )


def mapped6(addr: str) -> str | None:
    """``::ffff:a.b.c.d`` for an IPv4 address (how dual-stack sockets show it), else None."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return f"::ffff:{ip}" if ip.version == 4 else None


def same_addr(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _unspecified(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_unspecified
    except ValueError:
        return False


class NetlinkSocketTable:
    """SocketTable over sock_diag exact lookups (Linux)."""

    def __init__(self, diag: SockDiag | None = None) -> None:
        self._diag = diag or SockDiag()

    def close(self) -> None:
        self._diag.close()

    def find(
        self,
        transport: Transport,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        *,
        allow_unconnected: bool = False,
    ) -> SocketOwner | None:
        tries = [(local, remote)]
        mlocal, mremote = mapped6(local), mapped6(remote)
        if mlocal is not None and mremote is not None:
            tries.append((mlocal, mremote))
        for loc, rem in tries:
            try:
                answers = self._diag.lookup(transport, loc, lport, rem, rport)
            except (OSError, ValueError):
                continue
            for s in answers:
                if _accept(s, loc, lport, rem, rport, allow_unconnected):
                    return SocketOwner(uid=s.uid, inode=s.inode or None)
        return None


def _accept(
    s: DiagSocket, local: str, lport: int, remote: str, rport: int, allow_unconnected: bool
) -> bool:
    if s.lport != lport or s.state == TCP_LISTEN:
        return False
    if not (same_addr(s.local, local) or (allow_unconnected and _unspecified(s.local))):
        return False
    if s.rport == rport and same_addr(s.remote, remote):
        return True
    return allow_unconnected and s.rport == 0 and _unspecified(s.remote)


# --- psutil fallback --------------------------------------------------------------------------

_Key = tuple[Transport, str, int, str, int]


class PsutilSocketTable:
    """SocketTable over ``psutil.net_connections()`` (macOS, Windows, Linux without netlink).

    A full table walk is expensive, so the table is cached and rebuilt on a miss at most once per
    ``min_refresh`` seconds.
    """

    def __init__(
        self,
        min_refresh: float = 1.0,
        *,
        connections: Callable[[], list[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_refresh = min_refresh
        self._connections = connections or _psutil_connections
        self._clock = clock
        self._table: dict[_Key, int | None] = {}
        self._unconnected: dict[tuple[Transport, int], int | None] = {}
        self._built = -float("inf")

    def close(self) -> None:
        self._table.clear()

    def _rebuild(self) -> None:
        table: dict[_Key, int | None] = {}
        unconnected: dict[tuple[Transport, int], int | None] = {}
        for c in self._connections():
            transport: Transport = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            if not c.laddr:
                continue
            if c.raddr:
                key = (transport, _norm(c.laddr[0]), c.laddr[1], _norm(c.raddr[0]), c.raddr[1])
                table[key] = c.pid
            elif transport == "udp":
                unconnected[(transport, c.laddr[1])] = c.pid
        self._table, self._unconnected = table, unconnected
        self._built = self._clock()

    def _get(
        self, transport: Transport, local: str, lport: int, remote: str, rport: int, allow: bool
    ) -> tuple[bool, int | None]:
        key = (transport, _norm(local), lport, _norm(remote), rport)
        if key in self._table:
            return True, self._table[key]
        if allow and (transport, lport) in self._unconnected:
            return True, self._unconnected[(transport, lport)]
        return False, None

    def find(
        self,
        transport: Transport,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        *,
        allow_unconnected: bool = False,
    ) -> SocketOwner | None:
        found, pid = self._get(transport, local, lport, remote, rport, allow_unconnected)
        if not found and self._clock() - self._built >= self._min_refresh:
            self._rebuild()
            found, pid = self._get(transport, local, lport, remote, rport, allow_unconnected)
        return SocketOwner(uid=None, inode=None, pid=pid) if found else None


def _norm(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _psutil_connections() -> list[Any]:
    import psutil  # noqa: PLC0415 - the agent extra; the catalog tools never need it

    return list(psutil.net_connections(kind="inet"))


# --- fake -------------------------------------------------------------------------------------


class FakeSocketTable:
    """In-memory SocketTable for unit tests: ``add(...)`` sockets, ``find`` counts its calls."""

    def __init__(self) -> None:
        self.sockets: dict[_Key, SocketOwner] = {}
        self.calls = 0

    def close(self) -> None:
        self.sockets.clear()

    def add(
        self,
        transport: Transport,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        owner: SocketOwner,
    ) -> None:
        self.sockets[(transport, _norm(local), lport, _norm(remote), rport)] = owner

    def find(
        self,
        transport: Transport,
        local: str,
        lport: int,
        remote: str,
        rport: int,
        *,
        allow_unconnected: bool = False,
    ) -> SocketOwner | None:
        self.calls += 1
        hit = self.sockets.get((transport, _norm(local), lport, _norm(remote), rport))
        if hit is None and allow_unconnected:
            hit = self.sockets.get((transport, _norm(local), lport, "0.0.0.0", 0))
        return hit


def default_socket_table() -> SocketTable:
    """sock_diag where the kernel offers it, psutil otherwise."""
    try:
        return NetlinkSocketTable()
    except SockDiagError:
        return PsutilSocketTable()
