"""The agent's self-limits: CPU and memory budget, self-measurement, priority, load shedding.

Budget defaults are no looser than osquery's watchdog: 10% of one core sustained, and 200 MB
of resident memory above what the process used when it started.

Shedding policy. The Watchdog samples its own process every ``interval`` seconds and judges
CPU over the last ``window`` samples (sustained use, not one spike). Each sample over the
CPU or memory budget raises the shed level by one (0..7); each sample under both lowers it
by one. At level L the capture loop drops the frames of L in 8 flows, chosen by a hash of
the address and port pair (the same in both directions), so whole connections are skipped
instead of every connection losing random segments (which would break TLS reassembly and
spend the work anyway). DNS (port 53, 5353) is never shed: it is cheap, and it feeds the
IP-to-name cache that names later connections. Level 7 still keeps 1 flow in 8, so a host
under sustained pressure is sampled rather than blind. Every shed frame is counted as
``capture.shed``; the level itself is in ``health().shedding``.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from agent.counters import Counters
from agent.options import Option, Options

SHED_LEVELS = 8
_DNS_PORTS = frozenset({53, 5353})
_VLAN_TYPES = frozenset({0x8100, 0x88A8, 0x9100})
_LINKTYPE_ETHERNET = 1


@dataclass(frozen=True, slots=True)
class Budget:
    """What the agent may use. ``window`` samples of ``interval`` seconds make 'sustained'."""

    cpu_percent: float = 10.0  # of one core
    memory_mb: int = 200  # resident, above the resident size at start
    interval: float = 5.0
    window: int = 3


@dataclass(frozen=True, slots=True)
class Health:
    cpu_percent: float  # of one core, over the window
    rss_mb: float
    rss_over_start_mb: float
    over_cpu: bool
    over_memory: bool
    shedding: bool


@dataclass(frozen=True, slots=True)
class PriorityResult:
    """What ``lower_priority`` could set; ``problems`` says what it could not, and why."""

    nice: int | None
    ionice: str | None
    problems: tuple[str, ...]


class ProcessProbe(Protocol):
    """The part of psutil.Process the watchdog reads; tests pass a stand-in."""

    def cpu_times(self) -> Any: ...

    def memory_info(self) -> Any: ...


class LoadShedder:
    """Decides per frame whether to keep it at the current shed level (see module doc)."""

    def __init__(self) -> None:
        self.level = 0

    def raise_level(self) -> None:
        self.level = min(self.level + 1, SHED_LEVELS - 1)

    def lower_level(self) -> None:
        self.level = max(self.level - 1, 0)

    def admit(self, frame: bytes, linktype: int) -> bool:
        level = self.level
        if level == 0:
            return True
        key = flow_key(frame, linktype)
        if key is None:
            return True  # not TCP/UDP over IP: the kernel filter let it through for a reason
        ports, bucket = key
        if ports & _DNS_PORTS:
            return True
        return bucket % SHED_LEVELS >= level


def flow_key(frame: bytes, linktype: int) -> tuple[frozenset[int], int] | None:
    """(the two ports, a hash equal for both directions of the flow), or None if not IP."""
    off = 0
    try:
        if linktype == _LINKTYPE_ETHERNET:
            etype = (frame[12] << 8) | frame[13]
            off = 14
            if etype in _VLAN_TYPES:
                etype = (frame[16] << 8) | frame[17]
                off = 18
            if etype not in (0x0800, 0x86DD):
                return None
        version = frame[off] >> 4
        if version == 4:
            if (frame[off + 6] & 0x1F) or frame[off + 7]:
                return None  # a non-first fragment: no ports; keep it with its datagram
            proto = frame[off + 9]
            a, b = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
            l4 = off + (frame[off] & 0x0F) * 4
        elif version == 6:
            proto = frame[off + 6]
            a, b = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
            l4 = off + 40
        else:
            return None
        if proto not in (6, 17):
            return None
        sport = (frame[l4] << 8) | frame[l4 + 1]
        dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
    except IndexError:
        return None
    return frozenset((sport, dport)), zlib.crc32(a) ^ zlib.crc32(b) ^ sport ^ dport


class Watchdog:
    """Samples this process's CPU and memory and drives the LoadShedder."""

    def __init__(
        self,
        budget: Budget,
        counters: Counters,
        *,
        process: ProcessProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.counters = counters
        self.shedder = LoadShedder()
        self._proc: ProcessProbe = process if process is not None else psutil.Process()
        self._clock = clock
        self._start_rss = self._proc.memory_info().rss
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(budget.window, 1) + 1)
        self._samples.append((clock(), self._cpu_seconds()))
        self._health = Health(0.0, self._start_rss / 1e6, 0.0, False, False, False)
        self._next = self._samples[0][0] + budget.interval

    def _cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> Health:
        """Measure now, update the shed level, and return the new health."""
        now = self._clock()
        self._samples.append((now, self._cpu_seconds()))
        self._next = now + self.budget.interval
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        cpu = 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        rss = self._proc.memory_info().rss
        over_start = (rss - self._start_rss) / 1e6
        over_cpu = cpu > self.budget.cpu_percent
        over_memory = over_start > self.budget.memory_mb
        if over_cpu or over_memory:
            self.shedder.raise_level()
            self.counters.inc("watchdog.over_cpu" if over_cpu else "watchdog.over_memory")
        else:
            self.shedder.lower_level()
        self._health = Health(
            cpu_percent=round(cpu, 2),
            rss_mb=round(rss / 1e6, 2),
            rss_over_start_mb=round(over_start, 2),
            over_cpu=over_cpu,
            over_memory=over_memory,
            shedding=self.shedder.level > 0,
        )
        return self._health

    def maybe_sample(self) -> None:
        """Sample if ``interval`` has passed; cheap enough to call from the capture loop."""
        if self._clock() >= self._next:
            self.sample()

    def health(self) -> Health:
        return self._health

    def should_shed(self) -> bool:
        return self.shedder.level > 0

    def lower_priority(self, nice: int = 10) -> PriorityResult:
        """See the module function; applies to this process."""
        return lower_priority(nice)

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval`` until ``stop`` is set (the service runs this in a thread)."""
        while not stop.wait(self.budget.interval):
            self.sample()


def lower_priority(nice: int = 10, process: Any = None) -> PriorityResult:
    """Make the agent yield to the user's work: CPU nice ``nice`` and I/O best-effort 7.

    Best-effort 7 rather than the idle class: idle I/O can wait forever behind a busy disk,
    and the spool must still get its writes through.
    """
    proc = process if process is not None else psutil.Process()
    problems: list[str] = []
    got_nice: int | None = None
    got_io: str | None = None
    try:
        if proc.nice() < nice:
            proc.nice(nice)
        got_nice = int(proc.nice())
    except (psutil.Error, OSError) as exc:
        problems.append(f"nice {nice}: {exc}")
    try:
        proc.ionice(psutil.IOPRIO_CLASS_BE, 7)
        got_io = "best-effort 7"
    except (psutil.Error, OSError, AttributeError, ValueError) as exc:
        problems.append(f"ionice best-effort 7: {exc}")
    return PriorityResult(got_nice, got_io, tuple(problems))


def budget_from(options: Options) -> Budget:
    return Budget(cpu_percent=options["limits.cpu_percent"], memory_mb=options["limits.memory_mb"])


def declare_options(options: Options) -> None:
    """The self-limit configuration keys."""
    options.declare(
        Option(
            "limits.cpu_percent",
            float,
            10.0,
            "CPU budget in percent of one core, sustained over three samples; above it the "
            "agent sheds load (capture.shed).",
            check=lambda v: None if 0.5 <= v <= 100.0 else "must be between 0.5 and 100",
        )
    )
    options.declare(
        Option(
            "limits.memory_mb",
            int,
            200,
            "Resident memory budget in MB above the size at start; above it the agent sheds.",
            check=lambda v: None if 16 <= v <= 65536 else "must be between 16 and 65536",
        )
    )
    options.declare(
        Option(
            "limits.nice",
            int,
            10,
            "CPU niceness the agent sets on itself at start (0 leaves it unchanged).",
            check=lambda v: None if 0 <= v <= 19 else "must be between 0 and 19",
        )
    )
