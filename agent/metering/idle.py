"""Work the metering proxy does when it has nothing else to do.

Metering a call (parsing bodies, scanning for data classes, building and sending the report)
costs the proxy's one thread about as much as relaying it. Done inside mitmproxy's hooks, it
delays every request, first byte and end of stream by that much. So the addon only queues it
(`IdleWork.defer`), and the event loop runs the queue when it would otherwise wait:
`IdleSelector` wraps the loop's selector, and before the loop blocks on it, runs queued work
one piece at a time for as long as no socket is ready, in slices with pauses between them.
Traffic always goes first; metering catches up in the gaps (a call's round trip to the provider
is full of them).

The queue is FIFO, so a call's pieces run in the order its bytes passed. Bounded: past
`MAX_PENDING` pieces or `MAX_PENDING_BYTES` of body bytes held (a proxy that is never idle,
a large upload arriving faster than it is relayed) the queue is run through at once, which is
what doing the work inline would have cost. Without an `IdleSelector` (hooks driven outside
the proxy, in tests) work runs on the loop's next turn, or at once when there is no loop.

    loop = asyncio.SelectorEventLoop(IdleSelector(WORK))   # agent.metering.proxy does this
    WORK.defer(meter.response_chunk, data)                  # the addon does this
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("lantern.metering.idle")

MAX_PENDING = 4096  # pieces; a piece is one chunk's parsing or one call's start or report
MAX_PENDING_BYTES = 4 << 20  # body bytes held by queued pieces (a fast upload never waits)
# At most SLICE seconds of metering at a stretch, then up to PAUSE waiting for sockets: the
# client, the server and the agent, which share the device's cores, get to run in between.
# Without the pause, on two cores, bench/proxy.py measured +4.4 ms p99 added instead of +2.45.
SLICE = 0.0003
PAUSE = 0.0003


class IdleWork:
    """A FIFO of deferred calls; see the module docstring."""

    def __init__(
        self, max_pending: int = MAX_PENDING, max_pending_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0  # of the bytes arguments of queued pieces
        self.on_error: Callable[[str], None] | None = None  # told the failed step's name
        self.idle_driven = False  # an IdleSelector runs this queue
        self._work: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._soon = False  # a run_all is scheduled on the loop (no IdleSelector)

    @property
    def pending(self) -> int:
        return len(self._work)

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        self._work.append((fn, args))
        for arg in args:
            if type(arg) is bytes:
                self.pending_bytes += len(arg)
        if len(self._work) > self.max_pending or self.pending_bytes > self.max_pending_bytes:
            self.run_all()  # never idle: catch up now rather than hold without bound
        elif not self.idle_driven and not self._soon:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.run_all()
                return
            self._soon = True
            loop.call_soon(self.run_all)

    def run_one(self) -> None:
        fn, args = self._work.popleft()
        for arg in args:
            if type(arg) is bytes:
                self.pending_bytes -= len(arg)
        try:
            fn(*args)
        except Exception:  # fails soft: that call's record is lost, the proxy goes on
            name = getattr(fn, "__name__", "step")
            log.error("metering work failed (%s)", name, exc_info=False)
            if self.on_error is not None:
                self.on_error(name)

    def run_all(self) -> None:
        self._soon = False
        while self._work:
            self.run_one()


class IdleSelector(selectors.BaseSelector):
    """The loop's selector, which runs `IdleWork` whenever the loop is about to wait."""

    def __init__(self, work: IdleWork, inner: selectors.BaseSelector | None = None) -> None:
        self._work = work
        self._inner = inner if inner is not None else selectors.DefaultSelector()
        work.idle_driven = True

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # timeout 0: the loop has callbacks ready, so it is not idle; leave the work queued.
        # Otherwise work until a socket is ready, the loop's next timer is due, or a slice is
        # used up; then wait a pause for sockets before the loop comes back for more.
        if self._work.pending and (timeout is None or timeout > 0):
            now = time.monotonic()
            deadline = None if timeout is None else now + timeout
            slice_end = now + SLICE
            while self._work.pending:
                ready = self._inner.select(0)
                if ready:
                    return ready
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return []
                if now >= slice_end:
                    return self._inner.select(
                        PAUSE if deadline is None else min(PAUSE, deadline - now)
                    )
                self._work.run_one()
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        return self._inner.select(timeout)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


WORK = IdleWork()  # the metering process's queue: the addon defers to it, the loop drains it
