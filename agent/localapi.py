"""The agent's local API on a Unix socket: each caller sees only their own data (`lantern me`).

Protocol: the client sends one JSON object on one line, ``{"op": "me"}`` or ``{"op": "status"}``,
and reads one JSON object until the server closes: ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": {"code": ..., "message": ...}}``. Who is asking comes from the kernel
(``SO_PEERCRED``), never from the request, so the request has no field to name a user and any
field besides ``op`` is refused. ``status`` holds aggregate counters only, so any local user may
ask for it.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.collected import employee_view
from agent.counters import Counters
from agent.exceptions import AgentUnavailableError, LocalApiError
from agent.spool import Spool

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
MAX_RESPONSE = 64 << 20
OPS = ("me", "status")


class LocalApiHandler(Protocol):
    """What the running service provides to answer requests."""

    def me(self, user: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


class SpoolApiHandler:
    """Answers ``me`` from the spool (the employee view) and ``status`` from a callback."""

    def __init__(self, spool: Spool, status: Callable[[], dict[str, Any]]) -> None:
        self._spool = spool
        self._status = status

    def me(self, user: str) -> dict[str, Any]:
        return employee_view(user, self._spool.entries(user=user))

    def status(self) -> dict[str, Any]:
        return self._status()


def user_name(uid: int) -> str:
    """The OS user name of ``uid``, as attribution names it ("uid:1234" when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket, from the kernel."""
    if not hasattr(socket, "SO_PEERCRED"):
        raise LocalApiError("peer credentials are only implemented for Linux (SO_PEERCRED)")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class _RequestHandler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        srv = self.server
        sock: socket.socket = self.request
        if not srv.slots.acquire(blocking=False):
            srv.counters.inc("localapi.busy")
            self._reply(_error("busy", "too many requests at once; try again"))
            return
        try:
            self._reply(self._answer(sock))
        finally:
            srv.slots.release()

    def _answer(self, sock: socket.socket) -> dict[str, Any]:
        srv = self.server
        srv.counters.inc("localapi.requests")
        try:
            raw = _read_request(sock, srv.timeout_s)
        except TimeoutError:
            srv.counters.inc("localapi.bad_request")
            return _error("timeout", f"no complete request within {srv.timeout_s:g} s")
        except ValueError as exc:
            srv.counters.inc("localapi.bad_request")
            _drain(sock)  # closing with unread input would reset the connection before the reply
            return _error("too_large", str(exc))
        try:
            request = json.loads(raw)
        except ValueError:
            srv.counters.inc("localapi.bad_request")
            return _error("bad_request", 'the request must be one JSON object: {"op": "me"}')
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            srv.counters.inc("localapi.bad_request")
            return _error("bad_request", 'the request must be a JSON object with "op"')
        extra = sorted(set(request) - {"op"})
        if extra:
            srv.counters.inc("localapi.bad_request")
            return _error(
                "bad_request",
                f"unexpected field(s) {', '.join(extra)}: the caller is identified by the "
                "operating system, never by the request",
            )
        op = request["op"]
        if op not in OPS:
            srv.counters.inc("localapi.bad_request")
            return _error("unknown_op", f"unknown op {op!r}; known: {', '.join(OPS)}")
        try:
            if op == "me":
                result = srv.handler.me(user_name(peer_uid(sock)))
            else:
                result = srv.handler.status()
        except Exception:
            srv.counters.inc("localapi.handler_error")
            log.exception("local API: %s failed", op)
            return _error("internal", f"the agent could not answer {op!r}; see its log")
        return {"ok": True, "result": result}

    def _reply(self, response: dict[str, Any]) -> None:
        try:
            self.request.sendall(json.dumps(response).encode() + b"\n")
        except OSError:
            self.server.counters.inc("localapi.reply_failed")  # the client went away


def _read_request(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(MAX_REQUEST + 1 - len(buf))
        if not chunk:
            break  # the client half-closed: what came is the request
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return buf.split(b"\n", 1)[0]


def _drain(sock: socket.socket, limit: int = 1 << 20) -> None:
    sock.settimeout(0.2)
    try:
        while limit > 0 and (chunk := sock.recv(1 << 16)):
            limit -= len(chunk)
    except OSError:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    handler: LocalApiHandler
    counters: Counters
    slots: threading.BoundedSemaphore
    timeout_s: float


class LocalApiServer:
    """Serves the local API on ``path`` (mode 0666) from a background thread."""

    def __init__(
        self,
        path: Path,
        handler: LocalApiHandler,
        *,
        counters: Counters | None = None,
        max_clients: int = 8,
        timeout: float = 2.0,
    ) -> None:
        self.path = path
        self.handler = handler
        self.counters = counters if counters is not None else Counters()
        self.max_clients = max_clients
        self.timeout = timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; a stale socket is replaced, a live one is an error."""
        self._clear_stale()
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o755, parents=True)
        try:
            server = _Server(str(self.path), _RequestHandler)
        except OSError as exc:
            raise LocalApiError(f"cannot listen on {self.path}: {exc.strerror}") from exc
        # every local user may connect; SO_PEERCRED decides what each one gets
        os.chmod(self.path, 0o666)
        server.handler = self.handler
        server.counters = self.counters
        server.slots = threading.BoundedSemaphore(self.max_clients)
        server.timeout_s = self.timeout
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="lantern-localapi"
        )
        self._thread.daemon = True
        self._thread.start()

    def _clear_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise LocalApiError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # left by an agent that died
            return
        finally:
            probe.close()
        raise LocalApiError(f"another agent is already serving {self.path}")

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
        self._server = None

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def query(path: Path, op: str, *, timeout: float = 2.0) -> dict[str, Any]:
    """Ask the agent on ``path``; returns the result object or raises LocalApiError."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailableError(f"no agent is listening on {path}") from exc
        except PermissionError as exc:
            raise AgentUnavailableError(f"cannot connect to {path}: permission denied") from exc
        except OSError as exc:
            raise AgentUnavailableError(f"cannot connect to {path}: {exc}") from exc
        try:
            sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            raw = _read_all(sock, deadline)
        except TimeoutError as exc:
            raise AgentUnavailableError(
                f"the agent on {path} did not answer within {timeout:g} s"
            ) from exc
        except OSError as exc:
            raise AgentUnavailableError(f"lost the connection to {path}: {exc}") from exc
    finally:
        sock.close()
    try:
        response = json.loads(raw)
    except ValueError as exc:
        raise LocalApiError(f"the agent on {path} answered something that is not JSON") from exc
    if not isinstance(response, dict):
        raise LocalApiError(f"the agent on {path} answered something that is not an object")
    if response.get("ok") is True and isinstance(response.get("result"), dict):
        return response["result"]  # type: ignore[no-any-return]
    error = response.get("error")
    if isinstance(error, dict):
        raise LocalApiError(f"{error.get('code')}: {error.get('message')}")
    raise LocalApiError(f"the agent on {path} answered without a result or an error")


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise LocalApiError(f"answer longer than {MAX_RESPONSE} bytes")
        chunks.append(chunk)
