"""The addon's channel sender: straight onto the socket when it can, in order always."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from agent.metering.channel import CallStart, ChannelSender, decode

CLIENT, PROXY = ("127.0.0.1", 40001), ("127.0.0.1", 8118)


class Collector:
    """A plain Unix-socket reader that keeps every line, optionally slowly."""

    def __init__(self, path: Path, delay: float = 0.0, rcvbuf: int | None = None) -> None:
        self.lines: list[bytes] = []
        self.delay = delay
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.srv.bind(str(path))
        self.srv.listen()
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.conn, _ = self.srv.accept()
        buf = b""
        while True:
            chunk = self.conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            *done, buf = buf.split(b"\n")
            self.lines.extend(done)
            if self.delay:
                time.sleep(self.delay)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.srv.close()
        self.thread.join(5)

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.005)


def test_messages_go_straight_onto_the_socket_once_connected(tmp_path: Path) -> None:
    rx = Collector(tmp_path / "c.sock")
    sender = ChannelSender(tmp_path / "c.sock")
    sender.send(CallStart("first", CLIENT, PROXY))  # connects, through the thread
    rx.wait_for(1)
    assert len(rx.lines) == 1

    # From now on the thread is not needed: wedge it, and the messages still arrive.
    wedged = threading.Event()

    def stuck(data: bytes, tail: bool) -> None:
        wedged.wait()

    sender._send_blocking = stuck  # type: ignore[method-assign]
    for i in range(100):
        sender.send(CallStart(f"m{i}", CLIENT, PROXY))
    rx.wait_for(101)
    assert [decode(line + b"\n").id for line in rx.lines] == ["first"] + [  # type: ignore[union-attr]
        f"m{i}" for i in range(100)
    ]
    wedged.set()
    sender.close()
    rx.close()


def test_order_holds_when_the_reader_falls_behind(tmp_path: Path) -> None:
    """A slow reader and a small socket buffer: some sends go straight, the rest through the
    thread (whole, or the rest of a line the socket took only part of); the agent still gets
    every line whole and in order."""
    rx = Collector(tmp_path / "c.sock", delay=0.0005, rcvbuf=4096)
    sender = ChannelSender(tmp_path / "c.sock")
    sender.send(CallStart("first", CLIENT, PROXY))
    rx.wait_for(1)
    assert sender._sock is not None
    sender._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    through_thread = {"whole": 0, "tail": 0}
    blocking = sender._send_blocking

    def counting(data: bytes, tail: bool) -> None:
        through_thread["tail" if tail else "whole"] += 1
        blocking(data, tail)

    sender._send_blocking = counting  # type: ignore[method-assign]
    n = 3000
    expected = ["first"] + [f"id-{i:05d}-" + "x" * 200 for i in range(n)]
    for i in range(n):
        sender.send(CallStart(expected[i + 1], CLIENT, PROXY))
        if i % 20 == 0:
            time.sleep(0.002)  # now and then the queue drains and sends go straight again
    sender.close(timeout=60)
    rx.wait_for(n + 1, timeout=60)
    ids = [decode(line + b"\n").id for line in rx.lines]  # type: ignore[union-attr]
    assert ids == expected
    assert sender.counters.get("metering.channel.dropped") == 0
    # both paths were taken: straight onto the socket, and queued behind a full buffer
    assert 0 < through_thread["whole"] + through_thread["tail"] < n
    rx.close()


def test_a_missing_agent_costs_the_caller_nothing(tmp_path: Path) -> None:
    sender = ChannelSender(tmp_path / "nobody-listens.sock")
    t0 = time.perf_counter()
    for i in range(1000):
        sender.send(CallStart(f"m{i}", CLIENT, PROXY))
    spent = time.perf_counter() - t0
    sender.close(timeout=5)
    assert sender.counters.get("metering.channel.sent") == 0
    assert sender.counters.get("metering.channel.dropped") == 1000
    assert spent < 1.0  # never waited for a connection (each send is a few microseconds)
