"""The local API tells each OS user only their own sessions, and answers bad requests cleanly."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.collected import privacy_notice
from agent.localapi import (
    MAX_REQUEST,
    AgentUnavailableError,
    LocalApiError,
    LocalApiServer,
    SpoolApiHandler,
    query,
    user_name,
)
from agent.spool import Spool
from tests.agent.test_spool import make_session

ROOT = Path(__file__).resolve().parents[2]
ME = user_name(os.geteuid())


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="lantern-api-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db") as sp:
        yield sp


def raw_exchange(path: Path, data: bytes, *, half_close: bool = True) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    out: dict[str, Any] = json.loads(reply)
    return out


@pytest.fixture
def server(public_dir: Path, spool: Spool) -> Iterator[LocalApiServer]:
    handler = SpoolApiHandler(spool, lambda: {"health": "ok", "counters": {"tls.sni": 3}})
    with LocalApiServer(public_dir / "run" / "agent.sock", handler, timeout=0.5) as srv:
        yield srv


def test_me_returns_only_the_callers_sessions(server: LocalApiServer, spool: Spool) -> None:
    spool.put_session(make_session(id="mine", user=ME))
    spool.put_session(make_session(id="theirs", user="someone-else"))
    result = query(server.path, "me")
    assert result["user"] == ME
    assert [s["id"] for s in result["sessions"]] == ["mine"]
    assert result["sessions"][0]["sent"] is False
    assert result["privacy_notice"] == privacy_notice()


def test_status_is_the_handlers_aggregate(server: LocalApiServer) -> None:
    assert query(server.path, "status") == {"health": "ok", "counters": {"tls.sni": 3}}


def test_the_socket_is_open_to_every_local_user(server: LocalApiServer) -> None:
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o666


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"not json\n", "bad_request", "one JSON object"),
        (b"[1, 2]\n", "bad_request", '"op"'),
        (b'{"op": 3}\n', "bad_request", '"op"'),
        (b'{"op": "delete"}\n', "unknown_op", "known: me, status"),
        (b'{"op": "me", "user": "alice"}\n', "bad_request", "identified by the operating system"),
        (b'{"op": "me"', "bad_request", "one JSON object"),  # cut short, then closed
        (b"x" * (MAX_REQUEST + 10), "too_large", "longer than"),
        (b"", "bad_request", "one JSON object"),
    ],
)
def test_bad_requests_get_an_error_object(
    server: LocalApiServer, data: bytes, code: str, words: str
) -> None:
    reply = raw_exchange(server.path, data)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert words in reply["error"]["message"]
    assert query(server.path, "status")["health"] == "ok"  # still serving


def test_a_client_that_sends_nothing_times_out(server: LocalApiServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        s.sendall(b'{"op":')
        reply = json.loads(s.recv(65536))
    assert reply["error"]["code"] == "timeout"
    assert server.counters.get("localapi.bad_request") == 1


def test_a_failing_handler_is_an_internal_error_not_a_crash(public_dir: Path) -> None:
    class Broken:
        def me(self, user: str) -> dict[str, Any]:
            raise RuntimeError("boom")

        def status(self) -> dict[str, Any]:
            return {"health": "ok"}

    with LocalApiServer(public_dir / "agent.sock", Broken()) as srv:
        with pytest.raises(LocalApiError, match="internal: the agent could not answer 'me'"):
            query(srv.path, "me")
        assert query(srv.path, "status") == {"health": "ok"}
        assert srv.counters.get("localapi.handler_error") == 1


def test_query_without_an_agent_says_so(public_dir: Path) -> None:
    with pytest.raises(AgentUnavailableError, match="no agent is listening"):
        query(public_dir / "agent.sock", "me")


def test_a_stale_socket_is_replaced_and_a_live_one_refused(server: LocalApiServer) -> None:
    handler = SpoolApiHandler.__new__(SpoolApiHandler)
    with pytest.raises(LocalApiError, match="already serving"):
        LocalApiServer(server.path, handler).start()
    server.stop()
    assert not server.path.exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(server.path))
    stale.close()  # a socket file nobody listens on, as a killed agent leaves it
    with LocalApiServer(server.path, server.handler) as again:
        assert query(again.path, "status")["health"] == "ok"


def test_a_regular_file_in_the_way_is_not_deleted(public_dir: Path) -> None:
    path = public_dir / "agent.sock"
    path.write_text("keep me")
    with pytest.raises(LocalApiError, match="not a socket"):
        LocalApiServer(path, SpoolApiHandler.__new__(SpoolApiHandler)).start()
    assert path.read_text() == "keep me"


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway OS user (useradd) needs root")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    name = f"lt{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


# Started as root (the interpreter may sit under /root), the client drops to the other user
# before it connects: SO_PEERCRED reports the credentials of the connecting process.
CLIENT = """
import json, os, sys
from pathlib import Path
from agent.localapi import query
uid, gid = int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
assert (os.getuid(), os.geteuid(), os.getgid()) == (uid, uid, gid)
out = {}
for op in ("me", "status"):
    out[op] = query(Path(sys.argv[1]), op)
print(json.dumps(out))
"""


@pytest.mark.root
def test_another_os_user_sees_only_their_own_sessions(
    server: LocalApiServer, spool: Spool, other_user: pwd.struct_passwd
) -> None:
    name = other_user.pw_name
    spool.put_session(make_session(id="theirs-1", user=name, tool="Claude"))
    spool.put_session(make_session(id="theirs-2", user=name, closed=True))
    spool.put_session(make_session(id="roots", user=ME))
    spool.put_session(make_session(id="alices", user="alice"))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            str(server.path),
            str(other_user.pw_uid),
            str(other_user.pw_gid),
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["me"]["user"] == name
    assert sorted(s["id"] for s in got["me"]["sessions"]) == ["theirs-1", "theirs-2"]
    assert {t["tool"] for t in got["me"]["tools"]} == {"Claude", "ChatGPT"}
    for word in ("roots", "alices", "alice", ME):
        assert f'"{word}"' not in json.dumps(got["me"])
    assert got["status"] == {"health": "ok", "counters": {"tls.sni": 3}}
    # and the caller here (root) still sees only its own
    assert [s["id"] for s in query(server.path, "me")["sessions"]] == ["roots"]
