"""Self-limits: CPU/memory arithmetic with stand-ins, the shed policy, and a real busy loop."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import psutil
import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.options import Options
from agent.watchdog import (
    SHED_LEVELS,
    Budget,
    Health,
    LoadShedder,
    Watchdog,
    budget_from,
    declare_options,
    flow_key,
    lower_priority,
)

MB = 1_000_000


class FakeProcess:
    def __init__(self, rss: int = 50 * MB) -> None:
        self.cpu = 0.0
        self.rss = rss

    def cpu_times(self) -> SimpleNamespace:
        return SimpleNamespace(user=self.cpu * 0.75, system=self.cpu * 0.25)

    def memory_info(self) -> SimpleNamespace:
        return SimpleNamespace(rss=self.rss)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_watchdog(**budget: float) -> tuple[Watchdog, FakeProcess, FakeClock, Counters]:
    proc, clock, counters = FakeProcess(), FakeClock(), Counters()
    dog = Watchdog(Budget(**budget), counters, process=proc, clock=clock)  # type: ignore[arg-type]
    return dog, proc, clock, counters


def tick(proc: FakeProcess, clock: FakeClock, cpu_seconds: float, wall: float = 5.0) -> None:
    proc.cpu += cpu_seconds
    clock.now += wall


def test_cpu_is_cpu_time_over_wall_time() -> None:
    dog, proc, clock, _ = make_watchdog()
    tick(proc, clock, 0.25)  # 0.25 s of CPU in 5 s = 5 %
    h = dog.sample()
    assert h == Health(5.0, 50.0, 0.0, False, False, False)
    assert not dog.should_shed()


def test_cpu_is_judged_over_the_window_not_one_spike() -> None:
    dog, proc, clock, _ = make_watchdog(window=3)
    for _ in range(3):
        tick(proc, clock, 0.1)  # 2 %
        dog.sample()
    tick(proc, clock, 1.5)  # one 30 % interval: window (0.1+0.1+1.5)/15 s = 11.3 %
    assert dog.sample().cpu_percent == pytest.approx(11.33, abs=0.01)
    tick(proc, clock, 0.1)
    assert dog.sample().cpu_percent == pytest.approx(11.33, abs=0.01)
    tick(proc, clock, 0.1)
    tick(proc, clock, 0.1)
    dog.sample()
    assert dog.health().cpu_percent < 10


def test_over_cpu_raises_shed_level_then_recovers() -> None:
    dog, proc, clock, counters = make_watchdog()
    for expected in range(1, SHED_LEVELS + 2):
        tick(proc, clock, 2.5)  # 50 %
        h = dog.sample()
        assert h.over_cpu and h.shedding
        assert dog.shedder.level == min(expected, SHED_LEVELS - 1)
    assert counters.get("watchdog.over_cpu") == SHED_LEVELS + 1
    for _ in range(30):
        tick(proc, clock, 0.0)
        dog.sample()
    assert dog.shedder.level == 0
    assert not dog.should_shed()
    assert not dog.health().shedding


def test_memory_is_measured_above_start() -> None:
    dog, proc, clock, counters = make_watchdog(memory_mb=200)
    proc.rss += 150 * MB
    tick(proc, clock, 0.0)
    h = dog.sample()
    assert (h.rss_mb, h.rss_over_start_mb, h.over_memory) == (200.0, 150.0, False)
    proc.rss += 60 * MB
    tick(proc, clock, 0.0)
    h = dog.sample()
    assert h.over_memory and h.shedding and not h.over_cpu
    assert counters.get("watchdog.over_memory") == 1


def test_maybe_sample_waits_for_the_interval() -> None:
    dog, proc, clock, _ = make_watchdog(interval=5.0)
    tick(proc, clock, 4.0, wall=4.0)
    dog.maybe_sample()
    assert dog.health().cpu_percent == 0.0  # not yet
    tick(proc, clock, 1.0, wall=1.0)
    dog.maybe_sample()
    assert dog.health().cpu_percent == 100.0


def test_a_real_busy_loop_is_over_budget() -> None:
    dog = Watchdog(Budget(cpu_percent=10.0, interval=0.1), Counters())
    end = time.monotonic() + 0.6
    n = 0
    while time.monotonic() < end:
        n += 1
    h = dog.sample()
    assert h.over_cpu, h
    assert h.cpu_percent > 20  # well over the 10% budget, even on a busy shared machine
    assert dog.should_shed()


def test_an_idle_process_is_under_budget() -> None:
    dog = Watchdog(Budget(cpu_percent=10.0, interval=0.1), Counters())
    time.sleep(0.5)
    h = dog.sample()
    assert not h.over_cpu and h.cpu_percent < 10


ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp_frame(sport: int, dport: int, a: str = "10.200.0.1", b: str = "10.200.0.2") -> bytes:
    return bytes(ETH / IP(src=a, dst=b) / TCP(sport=sport, dport=dport) / Raw(b"x" * 10))


def test_flow_key_is_the_same_both_ways_and_parses_vlan_and_raw() -> None:
    fwd = flow_key(tcp_frame(40000, 443), 1)
    back = flow_key(tcp_frame(443, 40000, "10.200.0.2", "10.200.0.1"), 1)
    assert fwd is not None and fwd == back
    tagged = bytes(ETH / Dot1Q(vlan=5) / IP(src="10.200.0.1", dst="10.200.0.2") / TCP())
    assert flow_key(tagged, 1) is not None
    raw = bytes(IP(src="10.200.0.1", dst="10.200.0.2") / UDP(sport=1, dport=53))
    assert flow_key(raw, 101) == (frozenset({1, 53}), flow_key(raw, 101)[1])  # type: ignore[index]
    assert flow_key(b"\x00" * 10, 1) is None


def test_shedder_keeps_dns_and_drops_the_right_share_of_flows() -> None:
    shed = LoadShedder()
    frames = [tcp_frame(30000 + i, 443) for i in range(4000)]
    assert all(shed.admit(f, 1) for f in frames)
    dns = bytes(ETH / IP() / UDP(sport=40000, dport=53) / DNS(qd=DNSQR(qname="a.example")))
    for level in range(1, SHED_LEVELS):
        shed.level = level
        kept = sum(shed.admit(f, 1) for f in frames)
        assert kept / len(frames) == pytest.approx((SHED_LEVELS - level) / SHED_LEVELS, abs=0.05)
        assert shed.admit(dns, 1)
    # a flow is kept or shed as a whole: the decision is the same for every segment
    shed.level = 4
    assert len({shed.admit(tcp_frame(31234, 443), 1) for _ in range(10)}) == 1


def test_lower_priority_sets_nice_and_ionice_in_a_child() -> None:
    child = psutil.Popen(["sleep", "5"])
    try:
        result = lower_priority(10, process=psutil.Process(child.pid))
        assert result.nice == 10 and child.nice() == 10
        assert result.ionice == "best-effort 7"
        assert tuple(child.ionice()) == (psutil.IOPRIO_CLASS_BE, 7)
        assert result.problems == ()
    finally:
        child.kill()
        child.wait()


def test_lower_priority_reports_what_it_could_not_set() -> None:
    class Stubborn:
        def nice(self, value: int | None = None) -> int:
            if value is not None:
                raise psutil.AccessDenied(os.getpid())
            return 0

        def ionice(self, *args: int) -> None:
            raise psutil.AccessDenied(os.getpid())

    result = lower_priority(10, process=Stubborn())
    assert result.nice is None and result.ionice is None
    assert len(result.problems) == 2 and result.problems[0].startswith("nice 10")


def test_options_are_declared_and_checked() -> None:
    options = Options()
    declare_options(options)
    assert budget_from(options) == Budget(cpu_percent=10.0, memory_mb=200)
    options.set("limits.cpu_percent", 25, "agent.yaml:3")
    assert options["limits.cpu_percent"] == 25.0
    with pytest.raises(ConfigError, match=r"agent.yaml:4: key 'limits.nice': must be between"):
        options.set("limits.nice", 40, "agent.yaml:4")
    with pytest.raises(ConfigError, match=r"limits\.memory_mb"):
        options.set("limits.memory_mb", "lots", "agent.yaml:5")
