"""The channel from the metering process to the agent: newline-delimited JSON on a Unix socket.

Two messages, one JSON object per line:

* ``{"t": "start", "id": ..., "client": [host, port], "dst": [host, port]}`` when a metered
  request's headers arrive, so the agent finds the client's socket while it surely exists;
* ``{"t": "call", ...}``: a `MeteredCall` when the exchange ends.

Neither carries content: a `MeteredCall` holds a `Usage` (counts, model, tags, a keyed hash of the
API key), `Labels` (label names and counts) and sizes. The agent's `ChannelServer` accepts a
connection only from the metering process's uid (``SO_PEERCRED``) and reads lines of at most
`MAX_LINE` bytes; the addon's `ChannelSender` sends each message at once when the socket takes
it without waiting, and otherwise queues it for its own thread, dropping (and counting) when the
queue is full, so a slow agent never stalls the proxy.

Standard library only: the sender runs inside mitmproxy's environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from agent.counters import Counters
from agent.metering.detect.records import Labels, UploadStat
from agent.metering.records import Usage

log = logging.getLogger("lantern.metering.channel")

MAX_LINE = 64 * 1024
QUEUE_SIZE = 10_000
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class CallStart:
    """A metered request began on the client connection ``client`` → ``dst`` (the proxy in
    regular mode, the original destination in transparent mode)."""

    id: str
    client: Address
    dst: Address


@dataclass(frozen=True, slots=True)
class MeteredCall:
    """What the metering process reports about one AI call. No content, only metadata."""

    id: str
    host: str
    started: float
    ended: float
    usage: Usage
    labels: Labels | None  # of the request body; None when it had none
    bytes_up: int
    bytes_down: int
    client: Address
    dst: Address
    error: str | None = None  # exception class name when the body could not be read


Message = CallStart | MeteredCall

_USAGE_FIELDS = frozenset(f.name for f in fields(Usage))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fields_of(obj: Any) -> dict[str, Any]:
    """A record's fields, one level deep: the encoder calls this again for nested records.
    (`dataclasses.asdict` deep-copies every value first, which cost the proxy 0.1 ms a call.)"""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        if not is_dataclass(obj) or isinstance(obj, type):
            raise TypeError(f"{type(obj).__name__} is not a channel record")
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    return {name: getattr(obj, name) for name in names}


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_fields_of)


def encode(msg: Message) -> bytes:
    data = {"t": "start" if isinstance(msg, CallStart) else "call", **_fields_of(msg)}
    return _ENCODER.encode(data).encode() + b"\n"


def _addr(raw: Any) -> Address:
    host, port = raw
    if not isinstance(host, str) or not isinstance(port, int):
        raise ValueError("bad address")
    return host, port


def _labels(raw: Any) -> Labels | None:
    if raw is None:
        return None
    return Labels(
        counts=tuple((str(k), int(n)) for k, n in raw["counts"]),
        data_class=raw["data_class"],
        uploads=tuple(
            UploadStat(u["kind"], u["ext_class"], int(u["count"]), int(u["total_bytes"]))
            for u in raw["uploads"]
        ),
        truncated=bool(raw["truncated"]),
    )


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict) or set(raw) != _USAGE_FIELDS:
        raise ValueError("usage does not match this version's Usage record")
    values = dict(raw)
    values["tags"] = tuple((str(k), str(v)) for k, v in raw["tags"])
    return Usage(**values)


def decode(line: bytes) -> Message:
    """One line back into a message; raises ValueError (incl. JSON errors) on anything else."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    kind = data.pop("t", None)
    if kind == "start":
        return CallStart(str(data["id"]), _addr(data["client"]), _addr(data["dst"]))
    if kind == "call":
        return MeteredCall(
            id=str(data["id"]),
            host=str(data["host"]),
            started=float(data["started"]),
            ended=float(data["ended"]),
            usage=_usage(data["usage"]),
            labels=_labels(data["labels"]),
            bytes_up=int(data["bytes_up"]),
            bytes_down=int(data["bytes_down"]),
            client=_addr(data["client"]),
            dst=_addr(data["dst"]),
            error=None if data.get("error") is None else str(data["error"]),
        )
    raise ValueError(f"unknown message type {kind!r}")


# --------------------------------------------------------------------------- metering side


class ChannelSender:
    """Sends messages to the agent without ever blocking the caller (the proxy's event loop).

    A message goes straight onto the socket from the caller's thread when nothing is waiting
    ahead of it and the socket takes it at once (``MSG_DONTWAIT``): handing every message to a
    thread cost each proxied call about half a millisecond of thread switching. Whatever the
    socket cannot take at once (no connection yet, a full buffer, the rest of a partly sent
    line) waits, in order, for the sender thread, which connects, reconnects and blocks for it.
    When more than `QUEUE_SIZE` messages wait, new ones are dropped and counted.
    """

    def __init__(self, path: Path, counters: Counters | None = None) -> None:
        self.path = path
        self.counters = counters if counters is not None else Counters()
        # guards everything below; the socket is used by one side at a time: the caller only
        # when nothing waits and the thread is not sending, the thread only while _sending
        self._cond = threading.Condition()
        self._pending: deque[tuple[bytes, bool]] = deque()  # (bytes, the tail of a message)
        self._sending = False
        self._stopping = False
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="lantern-channel", daemon=True)
        self._thread.start()

    def send(self, msg: Message) -> None:
        data = encode(msg)
        with self._cond:
            tail = False
            sock = self._sock
            if sock is not None and not self._pending and not self._sending:
                try:
                    n = sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    n = 0
                except OSError:
                    self._drop_socket()
                    n = 0
                if n == len(data):
                    self.counters.inc("metering.channel.sent")
                    return
                data, tail = data[n:], n > 0
            if len(self._pending) >= QUEUE_SIZE and not tail:
                self.counters.inc("metering.channel.dropped")
                return
            self._pending.append((data, tail))
            self._cond.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Flush what waits (up to ``timeout``), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    break
                data, tail = self._pending.popleft()
                self._sending = True
            try:
                self._send_blocking(data, tail)
            finally:
                with self._cond:
                    self._sending = False
        with self._cond:
            self._drop_socket()

    def _send_blocking(self, data: bytes, tail: bool) -> None:
        for _attempt in range(2):
            fresh = self._sock is None
            if fresh and tail:
                # the head of this line went down a connection that is gone: the rest alone
                # would reach the agent as a broken line
                self.counters.inc("metering.channel.dropped")
                return
            try:
                sock = self._connected()
                sock.settimeout(5.0)
                try:
                    sock.sendall(data)
                finally:
                    sock.settimeout(None)  # blocking again, for the caller's MSG_DONTWAIT sends
                self.counters.inc("metering.channel.sent")
                return
            except OSError:
                with self._cond:
                    self._drop_socket()
                if tail:
                    break
        self.counters.inc("metering.channel.dropped")

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(5.0)
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            with self._cond:
                self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


# --------------------------------------------------------------------------- agent side

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (Linux)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


class ChannelServer:
    """Listens on ``socket_path`` for the metering process; hands each message to ``on_message``.

    ``on_message`` receives `CallStart` and `MeteredCall` messages (`agent.metering.usage`'s
    `UsageReceiver` turns them into `UsageRecord` s). Connections from
    any uid other than ``allowed_uid`` are closed at once and counted. Malformed lines are
    counted and skipped (hooks fail soft); an exception from ``on_message`` is logged and
    counted, and the connection goes on.
    """

    def __init__(
        self,
        socket_path: Path,
        allowed_uid: int,
        on_message: Callable[[Message], None],
        *,
        counters: Counters | None = None,
        socket_owner: tuple[int, int] | None = None,
    ) -> None:
        self.path = socket_path
        self.allowed_uid = allowed_uid
        self.on_message = on_message
        self.counters = counters if counters is not None else Counters()
        self._owner = socket_owner
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        if self._owner is not None:
            os.chown(self.path, *self._owner)  # the metering user connects; nobody else can
        sock.listen(8)
        self._sock = sock
        t = threading.Thread(target=self._accept_loop, name="usage-receiver", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> ChannelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                break
            try:
                uid = peer_uid(conn)
            except OSError:
                uid = -1
            if uid != self.allowed_uid:
                self.counters.inc("metering.channel.refused_peer")
                conn.close()
                continue
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE:
                            self.counters.inc("metering.channel.oversized")
                            return
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    self._handle(line)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            self.counters.inc("metering.channel.oversized")
            return
        try:
            msg = decode(line)
        except (ValueError, KeyError, TypeError):
            self.counters.inc("metering.channel.malformed")
            return
        self.counters.inc("metering.channel.received")
        try:
            self.on_message(msg)
        except Exception:  # a broken consumer must not end the channel; counted, logged
            self.counters.inc("metering.channel.consumer_error")
            log.exception("usage consumer failed")
