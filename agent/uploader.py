"""The uploader: spool batches to the collector, acknowledged before they leave the spool.

Each round leases one batch, submits it with a heartbeat, and acks the spool only when the
collector acknowledged the batch (invariant 4). A failed submit releases the batch; the round
after a named transient status (``agent.transport.TRANSIENT``) waits an exponential backoff with
full jitter, at least the collector's ``retry-after-ms``. Any other status stops uploading
visibly (status and log) and keeps the spool. Sending is paced to
``collector.max_events_per_second`` so a fleet back from an outage does not flatten the collector.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.bundles import BundleClient, poll_safely
from agent.counters import Counters
from agent.exceptions import AgentError, CollectorError
from agent.options import Option, Options
from agent.spool import Spool
from agent.transport import AgentInfo, Heartbeat, Submission, Transport

log = logging.getLogger("lantern.agent.uploader")
IDLE_SECONDS = 1.0  # poll the spool this often when it has nothing unsent


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be more than 0"


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "collector.batch_size",
            int,
            500,
            "Most events per upload batch.",
            check=lambda v: None if 1 <= v <= 10_000 else "must be between 1 and 10000",
        )
    )
    options.declare(
        Option(
            "collector.max_events_per_second",
            int,
            2000,
            "Upload rate cap, so a fleet draining its backlog after an outage does not "
            "overwhelm the collector.",
            check=lambda v: None if v >= 1 else "must be at least 1",
        )
    )
    options.declare(
        Option(
            "collector.retry_initial_seconds",
            float,
            1.0,
            "First retry delay after a transient failure; it doubles per failure (with full "
            "jitter) up to collector.retry_max_seconds.",
            check=_positive,
        )
    )
    options.declare(
        Option(
            "collector.retry_max_seconds",
            float,
            300.0,
            "Longest retry delay after transient failures.",
            check=_positive,
        )
    )
    options.declare(
        Option(
            "collector.drain_seconds",
            float,
            5.0,
            "On shutdown, keep uploading what the spool holds for at most this many seconds "
            "(the rest is sent on the next start).",
            check=lambda v: None if v >= 0 else "must not be negative",
        )
    )


class Link(Protocol):
    """Gives the uploader a ready transport (enrolling or renewing first when needed)."""

    def transport(self) -> Transport: ...

    def close(self) -> None: ...

    def problems(self) -> list[str]: ...


@dataclass
class StaticLink:
    """A link to one fixed transport (the in-process fake in unit tests)."""

    fixed: Transport

    def transport(self) -> Transport:
        return self.fixed

    def close(self) -> None:
        self.fixed.close()

    def problems(self) -> list[str]:
        return []


class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**failures))."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        return min(self.cap, self.base * 2.0 ** min(self.failures, 62))

    def next(self, retry_after: float | None = None) -> float:
        delay = self._rng.uniform(0, self.ceiling())
        self.failures += 1
        return max(delay, retry_after or 0.0)

    def reset(self) -> None:
        self.failures = 0


class Pacer:
    """At most ``rate`` events per second on average: each batch pushes the next slot on."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = float("-inf")

    def delay(self, now: float) -> float:
        return max(0.0, self._next - now)

    def spent(self, events: int, now: float) -> None:
        self._next = max(self._next, now) + events / self.rate


@dataclass(frozen=True, slots=True)
class UploadStatus:
    state: str  # "idle" | "sending" | "retrying" | "stopped"
    problem: str | None
    events_sent: int
    last_ack: float | None  # wall clock
    failures: int  # consecutive transient failures


def spool_heartbeat(
    info: AgentInfo, spool: Spool, counters: Counters, health: Callable[[], str] = lambda: "ok"
) -> Callable[[], Heartbeat]:
    def beat() -> Heartbeat:
        stats = spool.stats()
        return Heartbeat(
            agent=info,
            sent_at=time.time(),
            counters=counters.snapshot(),
            health=health(),
            spool_rows=stats.rows,
            spool_dropped=stats.dropped,
        )

    return beat


class Uploader:
    """Moves spool batches to the collector. ``step`` is one round (tests drive it with a fake
    clock); ``start``/``stop`` run rounds on a thread."""

    def __init__(
        self,
        spool: Spool,
        link: Link,
        heartbeat: Callable[[], Heartbeat],
        *,
        counters: Counters | None = None,
        batch_size: int = 500,
        max_events_per_second: float = 2000,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_seconds: float = IDLE_SECONDS,
        bundles: BundleClient | None = None,
        bundle_interval: float = 900.0,
    ) -> None:
        self.spool = spool
        self.link = link
        self.heartbeat = heartbeat
        self.counters = counters if counters is not None else Counters()
        # one batch is never more than a second's worth, so the pace holds per batch too
        self.batch_size = max(1, min(batch_size, int(max_events_per_second)))
        self.pacer = Pacer(max_events_per_second)
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.state = "idle"
        self.problem: str | None = None
        self.last_outcome = "idle"  # of the last step: sent, idle, paced, retry, stopped
        self._events_sent = 0
        self._last_ack: float | None = None
        self._stop = threading.Event()
        self._drain_until: float | None = None
        self._thread: threading.Thread | None = None
        self.bundles = bundles
        self.bundle_interval = bundle_interval
        self._next_bundle_poll = float("-inf")

    @classmethod
    def from_options(
        cls,
        options: Options,
        spool: Spool,
        link: Link,
        heartbeat: Callable[[], Heartbeat],
        counters: Counters,
        bundles: BundleClient | None = None,
    ) -> Uploader:
        return cls(
            spool,
            link,
            heartbeat,
            counters=counters,
            batch_size=options["collector.batch_size"],
            max_events_per_second=options["collector.max_events_per_second"],
            backoff=Backoff(
                options["collector.retry_initial_seconds"], options["collector.retry_max_seconds"]
            ),
            bundles=bundles,
            bundle_interval=options["bundles.interval"],
        )

    # ------------------------------------------------------------------ one round

    def step(self) -> float:
        """Send at most one batch; return the seconds to wait before the next round."""
        if self.state == "stopped":
            return self._outcome("stopped", self.idle_seconds)
        wait = self.pacer.delay(self.clock())
        if wait > 0:
            return self._outcome("paced", wait)
        try:
            transport = self.link.transport()
        except CollectorError as exc:
            if exc.transient:
                return self._retry(exc)
            return self._halt(exc)
        except AgentError as exc:
            return self._halt(exc)
        if self.bundles is not None and self.clock() >= self._next_bundle_poll:
            self._next_bundle_poll = self.clock() + self.bundle_interval
            poll_safely(self.bundles, transport)
        batch = self.spool.next_batch(self.batch_size)
        if batch is None:
            self.state = "idle"
            return self._outcome("idle", self.idle_seconds)
        self.state = "sending"
        try:
            ack = transport.submit(Submission(batch.id, batch.events, self.heartbeat()))
        except CollectorError as exc:
            self.spool.release(batch.id)
            return self._retry(exc) if exc.transient else self._halt(exc)
        except BaseException:
            self.spool.release(batch.id)
            raise
        if ack.batch_id != batch.id:
            self.spool.release(batch.id)
            return self._halt(
                CollectorError("INTERNAL", f"acknowledged batch {ack.batch_id}, sent {batch.id}")
            )
        # Invariant 4: the spool forgets a version only after this acknowledgement.
        self.spool.ack(batch.id)
        n = len(batch.events)
        self._events_sent += n
        self._last_ack = time.time()
        self.counters.inc("upload.batches")
        self.counters.inc("upload.events", n)
        if ack.duplicates:
            self.counters.inc("upload.duplicates", ack.duplicates)
        if self.backoff.failures:
            log.info("collector reachable again after %d failure(s)", self.backoff.failures)
        self.backoff.reset()
        self.problem = None
        self.pacer.spent(n, self.clock())
        return self._outcome("sent", self.pacer.delay(self.clock()))

    def _outcome(self, outcome: str, delay: float) -> float:
        self.last_outcome = outcome
        return delay

    def _retry(self, exc: CollectorError) -> float:
        delay = self.backoff.next(exc.retry_after)
        self.state = "retrying"
        # RESOURCE_EXHAUSTED is the collector asking for patience (a rate limit), not an outage
        what = "collector busy" if exc.code == "RESOURCE_EXHAUSTED" else "collector unreachable"
        self.problem = f"{what} ({exc}); retrying in {delay:.1f}s"
        self.counters.inc("upload.retries")
        self.counters.inc(f"upload.errors.{exc.code.lower()}")
        log.warning("upload failed (%s); retry %d in %.1fs", exc, self.backoff.failures, delay)
        return self._outcome("retry", delay)

    def _halt(self, exc: AgentError) -> float:
        unsent = self.spool.stats().unsent
        if isinstance(exc, CollectorError) and exc.revoked:
            why = f"the collector refused this agent ({exc}); re-enrol it to resume"
        elif isinstance(exc, CollectorError):
            why = f"the collector rejected an upload ({exc})"
        else:
            why = str(exc)
        self.state = "stopped"
        self.problem = f"uploading stopped: {why}; the spool keeps all {unsent} unsent session(s)"
        self.counters.inc("upload.stopped")
        log.error("%s", self.problem)
        return self._outcome("stopped", self.idle_seconds)

    # ------------------------------------------------------------------ status

    def status(self) -> UploadStatus:
        return UploadStatus(
            self.state, self.problem, self._events_sent, self._last_ack, self.backoff.failures
        )

    def problems(self) -> list[str]:
        out = list(self.link.problems())
        if self.bundles is not None:
            out += self.bundles.problems()
        if self.problem is not None:
            out.append(self.problem)
        return out

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="uploader", daemon=True)
        self._thread.start()

    def run(self) -> None:
        while True:
            if self._stop.is_set() and not self._draining():
                return
            try:
                delay = self.step()
            except Exception as exc:  # a bug or a broken spool: stop visibly, never silently
                log.exception("uploader failed")
                self.state = "stopped"
                self.problem = f"uploading stopped: {type(exc).__name__}: {exc}"
                return
            if self._stop.is_set():
                if not self._draining() or self.last_outcome in ("idle", "stopped"):
                    return
                if self.clock() + delay >= (self._drain_until or 0.0):
                    return
                time.sleep(delay)
            elif delay > 0:
                self._stop.wait(delay)

    def _draining(self) -> bool:
        return self._drain_until is not None and self.clock() < self._drain_until

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop after the in-flight batch (acked or released); first drain up to the limit."""
        if drain_seconds > 0:
            self._drain_until = self.clock() + drain_seconds
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.link.close()
