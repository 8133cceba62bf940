"""Bytes per TCP connection from tcp_info: real loopback connections with known byte counts."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator

import pytest

from agent.attribution.sockstats import TcpStats, bytes_from_tcp_info

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="tcp_info over sock_diag is Linux-only"
)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def stats() -> Iterator[TcpStats]:
    s = TcpStats()
    yield s
    s.close()


def _exchange(cli: socket.socket, acc: socket.socket, up: int, down: int) -> None:
    cli.sendall(b"u" * up)
    got = 0
    while got < up:
        got += len(acc.recv(65536))
    acc.sendall(b"d" * down)
    got = 0
    while got < down:
        got += len(cli.recv(65536))


def _settled(stats: TcpStats, conn: tuple[str, int, str, int], up: int) -> tuple[int, int]:
    # An ACK may still be in flight right after recv returns; wait for the counter to settle.
    deadline = time.monotonic() + 2
    while True:
        got = stats.tcp_bytes(*conn)
        assert got is not None
        if got[0] >= up or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.0.0.1"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here"),
        ),
    ],
    ids=["ipv4", "ipv6"],
)
def test_known_byte_counts(stats: TcpStats, family: int, host: str) -> None:
    up, down = 123_457, 9_876
    with socket.socket(family) as srv:
        srv.bind((host, 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()[:2]) as cli:
            acc, _ = srv.accept()
            with acc:
                _exchange(cli, acc, up, down)
                local, lport = cli.getsockname()[:2]
                remote, rport = cli.getpeername()[:2]
                mine = (local, lport, remote, rport)
                theirs = (remote, rport, local, lport)
                sent, received = _settled(stats, mine, up)
                # The kernel counts the SYN as one acknowledged byte of the connecting side.
                assert sent in (up, up + 1)
                assert received == down
                peer = _settled(stats, theirs, down)
                assert peer[0] in (down, down + 1) and peer[1] == up
                many = stats.tcp_bytes_many([mine, theirs, ("192.0.2.1", 9, "192.0.2.2", 9)])
                assert set(many) == {mine, theirs}
                assert many[mine][1] == down and many[theirs][1] == up
    # Closed: the kernel no longer has the connection.
    assert stats.tcp_bytes(*mine) is None
    assert stats.tcp_bytes_many([mine]) == {}


def test_ipv4_connection_on_a_dual_stack_socket(stats: TcpStats) -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.socket(socket.AF_INET6) as cli:
            cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            cli.connect(("::ffff:127.0.0.1", srv.getsockname()[1]))
            acc, _ = srv.accept()
            with acc:
                _exchange(cli, acc, 500, 700)
                conn = ("127.0.0.1", cli.getsockname()[1], "127.0.0.1", srv.getsockname()[1])
                assert _settled(stats, conn, 500)[1] == 700
                assert stats.tcp_bytes_many([conn])[conn][1] == 700


def test_unknown_connection_and_old_kernels(stats: TcpStats) -> None:
    assert stats.tcp_bytes("192.0.2.1", 1, "192.0.2.2", 2) is None
    assert stats.tcp_bytes_many([]) == {}
    assert bytes_from_tcp_info(None) is None
    assert bytes_from_tcp_info(b"\0" * 120) is None  # a tcp_info from before Linux 4.2
    info = b"\0" * 120 + struct.pack("=QQ", 7, 9) + b"\0" * 8
    assert bytes_from_tcp_info(info) == (7, 9)
