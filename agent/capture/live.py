"""Live capture: AF_PACKET sockets with the kernel filter attached, as a PacketSource.

One socket per interface (SOCK_RAW on Ethernet-like links, SOCK_DGRAM elsewhere), or one
SOCK_DGRAM socket for the ``any`` pseudo-interface. Both directions are captured (AF_PACKET
delivers PACKET_OUTGOING by default; nothing here turns it off).

Each socket is created listening to no protocol, gets its filter, and only then is bound to
ETH_P_ALL, so no unfiltered frame is ever queued. Frames are read with ``recv_into`` one
preallocated buffer (MSG_TRUNC reports the real length, so cut frames are counted), then
copied out as bytes: the only allocation per frame. When the consumer falls behind, frames
wait in the socket buffer and then the kernel drops them and counts the drops
(``stats().kernel_dropped``); the host is never blocked.

After draining its sockets the loop sleeps ``coalesce`` seconds (10 ms) so frames gather in
the socket buffer: one wakeup per frame (three syscalls and a context switch) cost five times
the name extraction itself in the benchmark. stop() therefore takes up to ``coalesce`` longer.

Timestamps are ``time.time()`` when the frame is read, not the kernel's arrival time: taking
the kernel's costs a recvmsg with ancillary data or an ioctl per frame. The error is the time
a frame waits in the socket buffer: up to ``coalesce`` when keeping up, up to the buffer's
depth under overload. Sightings and sessions need seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.capture.bpf import (
    ABS,
    ANCILLARY_PROTOCOL,
    JEQ,
    JMP,
    LD,
    RET,
    Framing,
    H,
    Insn,
    K,
    SockFprog,
    build_program,
)
from agent.capture.interfaces import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    default_interfaces,
    interface,
)
from agent.capture.source import RawFrame
from agent.counters import Counters
from agent.exceptions import CaptureError
from agent.options import Option, Options

SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_LOCK_FILTER = 44
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
ANY = "any"
_BATCH = 256  # frames read from one socket before looking at the others and at stop()

# Admits or sheds one frame: (frame, linktype) -> keep it. See agent.watchdog.LoadShedder.
Admit = Callable[[bytes, int], bool]


def permission_message() -> str:
    python = os.path.realpath(sys.executable)
    return (
        "lantern agent needs CAP_NET_RAW to capture: run as root, or "
        f"`sudo setcap cap_net_raw,cap_net_admin+eip {python}`, "
        "or use the systemd unit's AmbientCapabilities=CAP_NET_RAW"
    )


def check_capture_permission() -> None:
    """Raise CaptureError with the fix when this process may not open packet sockets."""
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as exc:
        raise CaptureError(permission_message()) from exc
    except OSError as exc:
        raise CaptureError(f"cannot open a packet socket: {exc.strerror}") from exc
    probe.close()


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Totals since the source opened."""

    read: int  # frames handed to the consumer or shed
    kernel_received: int  # frames that passed the kernel filter (PACKET_STATISTICS tp_packets)
    kernel_dropped: int  # frames the kernel dropped because the socket buffer was full
    truncated: int  # frames longer than snaplen, cut
    shed: int  # frames read but dropped by the load shedder


@dataclass
class _Tap:
    sock: socket.socket
    name: str
    linktype: int


def declare_options(options: Options) -> None:
    """The live capture's configuration keys."""
    options.declare(
        Option(
            "capture.interfaces",
            list,
            [],
            "Interfaces to capture on; empty means the ones carrying a default route.",
            check=_check_interfaces,
        )
    )
    options.declare(
        Option(
            "capture.any",
            bool,
            False,
            "Capture on every interface at once (the 'any' device); overrides "
            "capture.interfaces. Traffic crossing two interfaces is then seen twice.",
        )
    )
    options.declare(
        Option(
            "capture.snaplen",
            int,
            2048,
            "Bytes kept of each frame. A ClientHello bigger than this in one frame (TSO/GRO "
            "can merge segments) is cut and counted as capture.truncated.",
            check=lambda v: None if 256 <= v <= 262144 else "must be between 256 and 262144",
        )
    )


def _check_interfaces(value: list[object]) -> str | None:
    for name in value:
        if not isinstance(name, str) or not name or len(name) > 15:
            return f"{name!r} is not an interface name"
    return None


def interfaces_from(options: Options) -> list[str]:
    """The interface list LiveSource should open for these options."""
    if options["capture.any"]:
        return [ANY]
    names: list[str] = list(options["capture.interfaces"])
    return names or default_interfaces()


class LiveSource:
    """Frames from live interfaces. ``stop()`` (from any thread) ends ``frames()`` promptly.

    ``bpf=False`` attaches no policy filter (for measurements and debugging); a SOCK_DGRAM
    socket then still gets an IP-only filter, because its frames carry no link header that
    would tell an ARP packet from an IP one.
    """

    def __init__(
        self,
        interfaces: list[str],
        counters: Counters,
        *,
        snaplen: int = 2048,
        bpf: bool = True,
        rcvbuf: int = 8 << 20,
        admit: Admit | None = None,
        coalesce: float = 0.01,
    ) -> None:
        if not interfaces:
            raise CaptureError("no interface to capture on")
        if ANY in interfaces and len(interfaces) > 1:
            raise CaptureError("'any' already captures every interface; name it alone")
        check_capture_permission()
        self.name = "live:" + ",".join(interfaces)
        self.counters = counters
        self.snaplen = snaplen
        self._admit = admit
        self._coalesce = coalesce
        self._taps: list[_Tap] = []
        self._lock = threading.Lock()
        self._kernel = [0, 0]
        self._read = self._truncated = self._shed = 0
        self._stopped = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for name in interfaces:
                self._taps.append(self._open(name, bpf, rcvbuf))
        except BaseException:
            self.close()
            raise

    def _open(self, name: str, bpf: bool, rcvbuf: int) -> _Tap:
        if name == ANY:
            ifindex, framing = 0, Framing.COOKED
        else:
            iface = interface(name)
            ifindex = iface.index
            ethernet = iface.arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
            framing = Framing.ETHERNET if ethernet else Framing.COOKED
        kind = socket.SOCK_RAW if framing is Framing.ETHERNET else socket.SOCK_DGRAM
        try:
            sock = socket.socket(socket.AF_PACKET, kind, 0)  # protocol 0: receives nothing yet
        except PermissionError as exc:
            raise CaptureError(permission_message()) from exc
        try:
            if bpf:
                _attach(sock, SockFprog(build_program(framing, self.snaplen)))
            elif framing is Framing.COOKED:
                _attach(sock, SockFprog(_ip_only()))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:  # CAP_NET_ADMIN missing: the sysctl cap applies
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            _bind(sock, ifindex, ETH_P_ALL)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise CaptureError(f"cannot capture on {name}: {exc.strerror or exc}") from exc
        linktype = LINKTYPE_ETHERNET if framing is Framing.ETHERNET else LINKTYPE_RAW
        return _Tap(sock, name, linktype)

    def frames(self) -> Iterator[RawFrame]:
        sel = selectors.DefaultSelector()
        for entry in self._taps:
            sel.register(entry.sock, selectors.EVENT_READ, entry)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        snaplen = self.snaplen
        view = memoryview(bytearray(snaplen))
        admit = self._admit
        trunc = socket.MSG_TRUNC
        clock = time.time
        sleep, coalesce = time.sleep, self._coalesce
        try:
            while not self._stopped:
                drained = False
                for key, _ in sel.select(timeout=1.0):
                    if key.data is None:
                        self._drain_wake()
                        continue
                    tap: _Tap = key.data
                    recv_into, linktype = tap.sock.recv_into, tap.linktype
                    for _ in range(_BATCH):
                        try:
                            n = recv_into(view, snaplen, trunc)
                        except BlockingIOError:
                            drained = True
                            break
                        except InterruptedError:
                            continue
                        except OSError as exc:
                            if exc.errno == errno.ENETDOWN:  # link went down: wait for it
                                self.counters.inc("capture.netdown")
                                break
                            raise CaptureError(f"capture on {tap.name}: {exc.strerror}") from exc
                        self._read += 1
                        if n > snaplen:
                            self._truncated += 1
                            self.counters.inc("capture.truncated")
                            n = snaplen
                        frame = bytes(view[:n])
                        if admit is not None and not admit(frame, linktype):
                            self._shed += 1
                            self.counters.inc("capture.shed")
                            continue
                        yield clock(), linktype, frame
                        if self._stopped:
                            return
                if drained and coalesce:
                    # Let frames gather in the socket buffer instead of waking per frame: at
                    # 10 ms, 20k frames/s cost 100 wakeups a second, not 20,000.
                    sleep(coalesce)
        finally:
            sel.close()

    def progress(self) -> tuple[int, int]:
        return self._read, 0

    def stop(self) -> None:
        """End ``frames()`` soon; safe from another thread or a signal handler."""
        self._stopped = True
        with contextlib.suppress(OSError):  # already woken (pipe full), or closed
            os.write(self._wake_w, b"x")

    def stats(self) -> CaptureStats:
        """Totals so far; also adds the kernel's new drops to ``capture.kernel_dropped``."""
        with self._lock:
            for tap in self._taps:
                if tap.sock.fileno() < 0:
                    continue
                raw = tap.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                packets, drops = struct.unpack("=II", raw)  # reading resets them in the kernel
                self._kernel[0] += packets
                self._kernel[1] += drops
                if drops:
                    self.counters.inc("capture.kernel_dropped", drops)
            return CaptureStats(
                read=self._read,
                kernel_received=self._kernel[0],
                kernel_dropped=self._kernel[1],
                truncated=self._truncated,
                shed=self._shed,
            )

    def close(self) -> None:
        self.stop()
        for tap in self._taps:
            tap.sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass


def _attach(sock: socket.socket, fprog: SockFprog) -> None:
    # ``fprog`` owns the instruction array the struct points to; it is alive for this call.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog.bytes)
    # Locked so that nothing else holding the descriptor can replace or remove the filter.
    sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)


def _ip_only() -> list[Insn]:
    return [
        Insn(LD | H | ABS, 0, 0, ANCILLARY_PROTOCOL, "skb->protocol"),
        Insn(JMP | JEQ | K, 2, 0, 0x0800, "IPv4"),
        Insn(JMP | JEQ | K, 1, 0, 0x86DD, "IPv6"),
        Insn(RET | K, 0, 0, 0, "not IP: drop"),
        Insn(RET | K, 0, 0, 0x40000, "pass"),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _bind(sock: socket.socket, ifindex: int, protocol: int) -> None:
    """bind() with a raw sockaddr_ll: Python's AF_PACKET bind cannot say ifindex 0 (all)."""
    addr = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(protocol), ifindex, 0, 0, 0, b"")
    buf = ctypes.create_string_buffer(addr, len(addr))
    if _libc.bind(sock.fileno(), buf, len(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
