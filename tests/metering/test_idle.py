"""The metering proxy's idle-time queue: traffic first, metering in the gaps, nothing lost."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time
from typing import Any

from agent.metering.idle import PAUSE, IdleSelector, IdleWork


def _loop(work: IdleWork) -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(IdleSelector(work))


def test_queued_work_runs_when_the_loop_would_wait_in_order() -> None:
    work = IdleWork()
    done: list[int] = []
    loop = _loop(work)
    try:

        async def main() -> None:
            for i in range(5):
                work.defer(done.append, i)
            assert done == []  # queued, not run inline
            await asyncio.sleep(0.01)  # the loop waits: the queue runs

        loop.run_until_complete(main())
    finally:
        loop.close()
    assert done == [0, 1, 2, 3, 4]
    assert work.pending == 0


def test_ready_callbacks_and_sockets_go_before_queued_work() -> None:
    work = IdleWork()
    order: list[str] = []
    loop = _loop(work)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:

        async def main() -> None:
            got = asyncio.Event()

            def readable() -> None:
                a.recv(100)
                order.append("socket")
                got.set()

            loop.add_reader(a.fileno(), readable)
            work.defer(order.append, "work")
            loop.call_soon(order.append, "callback")  # ready: the loop does not wait
            b.send(b"x")  # a socket is ready too
            await got.wait()
            await asyncio.sleep(0.01)
            loop.remove_reader(a.fileno())

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()
        loop.close()
    assert order.index("work") > order.index("callback")
    assert order.index("work") > order.index("socket")
    assert order.count("work") == 1


def test_a_socket_that_becomes_ready_interrupts_the_queue() -> None:
    # Each piece takes 5 ms; data arrives during the first. The reader must not wait for the
    # rest of the queue: it runs after at most the piece in progress.
    work = IdleWork()
    loop = _loop(work)
    a, b = socket.socketpair()
    a.setblocking(False)
    pieces_before_read: list[int] = []
    ran: list[int] = []
    try:

        async def main() -> None:
            got = asyncio.Event()

            def readable() -> None:
                a.recv(100)
                pieces_before_read.append(len(ran))
                got.set()

            def piece(i: int) -> None:
                if i == 0:
                    b.send(b"x")
                time.sleep(0.005)
                ran.append(i)

            loop.add_reader(a.fileno(), readable)
            for i in range(20):
                work.defer(piece, i)
            await got.wait()
            loop.remove_reader(a.fileno())
            await asyncio.sleep(0.2)

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()
        loop.close()
    assert pieces_before_read == [1]
    assert ran == list(range(20))  # and the rest ran afterwards, in order


def test_timers_still_fire_while_work_is_queued() -> None:
    work = IdleWork()
    loop = _loop(work)
    try:

        async def main() -> int:
            for _ in range(50):
                work.defer(time.sleep, 0.001)
            await asyncio.sleep(0.02)
            left = work.pending  # the timer fired in the middle of the queue, not after it
            await asyncio.sleep(0.3)  # the rest runs in this wait
            return left

        left_when_the_timer_fired = loop.run_until_complete(main())
    finally:
        loop.close()
    assert left_when_the_timer_fired > 0
    assert work.pending == 0


def test_a_full_queue_is_run_through_at_once() -> None:
    done: list[int] = []
    work = IdleWork(max_pending=3)
    work.idle_driven = True  # as under an IdleSelector that never gets to run
    for i in range(3):
        work.defer(done.append, i)
    assert done == []
    work.defer(done.append, 3)
    assert done == [0, 1, 2, 3]


def test_queued_body_bytes_are_bounded() -> None:
    seen: list[int] = []
    work = IdleWork(max_pending_bytes=10_000)
    work.idle_driven = True
    work.defer(lambda data: seen.append(len(data)), b"x" * 6_000)
    assert work.pending_bytes == 6_000 and seen == []
    work.defer(lambda data: seen.append(len(data)), b"x" * 6_000)  # 12,000 held: over
    assert seen == [6_000, 6_000]
    assert work.pending_bytes == 0


def test_a_failing_piece_is_counted_and_the_rest_still_run() -> None:
    failed: list[str] = []
    done: list[int] = []
    work = IdleWork()
    work.on_error = failed.append

    def broken() -> None:
        raise ValueError("a prompt must never reach a log")

    work.idle_driven = True
    work.defer(done.append, 1)
    work.defer(broken)
    work.defer(done.append, 2)
    work.run_all()
    assert done == [1, 2]
    assert failed == ["broken"]


def test_without_an_idle_selector_work_runs_on_the_next_turn_or_at_once() -> None:
    work = IdleWork()
    done: list[str] = []
    work.defer(done.append, "no loop")  # no running loop: at once
    assert done == ["no loop"]

    async def main() -> None:
        work.defer(done.append, "loop")
        assert done == ["no loop"]
        await asyncio.sleep(0)
        assert done == ["no loop", "loop"]

    asyncio.run(main())


class _QuietSelector(selectors.DefaultSelector):
    """A real selector with nothing registered; records the timeouts it was asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def select(self, timeout: float | None = None) -> list[Any]:
        self.waits.append(timeout)
        return super().select(timeout)


def test_work_gives_the_cpu_back_between_slices() -> None:
    # Each piece is longer than a slice: one runs, then the selector waits a pause (during
    # which the other programs on the device run) before the loop asks again.
    work = IdleWork()
    inner = _QuietSelector()
    sel = IdleSelector(work, inner)
    for _ in range(3):
        work.defer(time.sleep, 0.002)
    assert sel.select(None) == []
    assert work.pending == 2
    assert inner.waits[-1] == PAUSE
    assert sel.select(None) == []
    assert work.pending == 1
    sel.close()
