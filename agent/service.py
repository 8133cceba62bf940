"""The running agent: capture → names → catalog → attribution → sessions → spool, in one place."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from agent.attribution import Attributor, build_attributor
from agent.attribution.sockets import Transport
from agent.bundles import BundleClient, all_of, catalog_applier, prices_applier
from agent.capture.pcapfile import PcapFileSource
from agent.capture.source import PacketSource
from agent.config import load_config
from agent.counters import Counters
from agent.enroll import agent_info, build_link
from agent.localapi import LocalApiServer, SpoolApiHandler
from agent.options import Option, Options
from agent.pipeline import NameExtractor
from agent.records import Attributed, Observation, Session
from agent.sessions import Sessionizer
from agent.spool import Spool
from agent.state import AgentStatus, StateDir, write_status
from agent.uploader import Uploader, spool_heartbeat
from agent.watchdog import Watchdog, budget_from
from signatures.exceptions import SignatureError
from signatures.loader import load_catalog
from signatures.matcher import Matcher
from signatures.model import Match

log = logging.getLogger("lantern.agent")

# How each kind of observation travels. An `ip` observation may be either (a TLS or QUIC hello
# without a readable name), so its socket is looked up as TCP first, then UDP.
_TRANSPORTS: dict[str, tuple[Transport, ...]] = {
    "tls": ("tcp",),
    "http": ("tcp",),
    "quic": ("udp",),
    "gquic": ("udp",),
    "dns": ("udp", "tcp"),
    "ip": ("tcp", "udp"),
}
HOUSEKEEPING_SECONDS = 1.0
STATUS_SECONDS = 5.0


def declare_options(options: Options) -> None:
    options.declare(
        Option(
            "catalog.extra_dirs",
            list,
            [],
            "Extra catalog directories (vendor YAML files) merged with the built-in catalog.",
        )
    )


class Agent:
    """Owns the pipeline and its housekeeping; ``run`` returns when the source ends or ``stop``
    is called, after closing every session into the spool."""

    def __init__(
        self,
        options: Options,
        source: PacketSource,
        attributor: Attributor,
        spool: Spool,
        *,
        counters: Counters,
        matcher: Matcher,
        watchdog: Watchdog | None = None,
        state: StateDir | None = None,
        bytes_source: Any = None,
        live: bool = False,
    ) -> None:
        self.options = options
        self.source = source
        self.attributor = attributor
        self.spool = spool
        self.counters = counters
        self.matcher = matcher
        self.watchdog = watchdog
        self.state = state
        self.extractor = NameExtractor(counters)
        self.started = time.time()
        self.sessionizer = Sessionizer.from_options(
            options, self._on_session, bytes_source=bytes_source, counters=counters
        )
        self.live = live
        # the organisation's prices from the policy bundle (provider/model -> PriceOverride),
        # and the metering receiver that prices usage records with them, when metering runs
        self.price_overrides: Mapping[str, Any] = {}
        self.usage_receiver: Any = None
        # the capture thread adds sightings while housekeeping closes sessions
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._next_housekeeping = 0.0
        self._next_status = 0.0
        self._last_ts = self.started
        self.uploader: Uploader | None = None  # set by build_agent when a collector is configured

    def _on_session(self, session: Session) -> None:
        # Evidence fails loud: if the spool cannot store, SpoolError stops the agent visibly.
        self.spool.put_session(session)
        self.counters.inc("sessions.written")

    def on_frame(self, ts: float, linktype: int, frame: bytes) -> None:
        self.counters.inc("capture.frames")
        self._last_ts = ts
        for obs in self.extractor.on_frame(ts, linktype, frame):
            match = self.matcher.match_name(obs.name)
            if match is None:
                # Invariant 2: a name that matches nothing is counted and forgotten.
                self.counters.inc("names.unmatched")
                continue
            self.counters.inc("names.ai")
            attributed = self._attribute(obs, match)
            with self._lock:
                self.sessionizer.on_attributed(attributed)

    def _attribute(self, obs: Observation, match: Match) -> Attributed:
        first, *rest = _TRANSPORTS[obs.proto]
        attributed = self.attributor.attribute(obs, match, first)
        for transport in rest:
            if attributed.process is not None:
                break
            other = self.attributor.attribute(obs, match, transport)
            if other.process is not None:
                attributed = other
        return attributed

    def housekeeping(self, now: float) -> None:
        """Once a second: close idle sessions, check the budget, publish the status.

        Live, this runs on its own thread on the wall clock, so sessions close and byte
        counters are read on a quiet host too; replaying a capture, it runs between frames on
        the capture's clock.
        """
        with self._lock:
            self.sessionizer.tick(time.time() if self.live else self._last_ts)
        if self.watchdog is not None:
            self.watchdog.maybe_sample()
        if now >= self._next_status:
            self._next_status = now + STATUS_SECONDS
            self.write_status()

    def status(self, health: str | None = None) -> AgentStatus:
        problems: list[str] = []
        state = "ok"
        if self.watchdog is not None:
            h = self.watchdog.health()
            if h.over_cpu:
                problems.append(f"over CPU budget: {h.cpu_percent:.1f}% of one core")
            if h.over_memory:
                problems.append(f"over memory budget: {h.rss_over_start_mb:.0f} MB above start")
            if h.shedding:
                problems.append("shedding load: some traffic is not inspected (counted)")
        if self.uploader is not None:
            problems.extend(self.uploader.problems())
        if problems:
            state = "degraded"
        return AgentStatus(
            pid=os.getpid(),
            started=self.started,
            updated=time.time(),
            health=health or state,
            problems=tuple(problems),
            counters=self.counters.snapshot(),
            spool=self.spool.stats(),
        )

    def write_status(self, health: str | None = None) -> None:
        if self.state is not None:
            write_status(self.state.status_file, self.status(health))

    def run(self) -> int:
        """Capture until the source ends (a pcap) or ``stop`` (a signal)."""
        keeper = None
        if self.live:
            keeper = threading.Thread(target=self._keep_house, name="housekeeping", daemon=True)
            keeper.start()
        try:
            for ts, linktype, frame in self.source.frames():
                self.on_frame(ts, linktype, frame)
                if not self.live:
                    now = time.monotonic()
                    if now >= self._next_housekeeping:
                        self._next_housekeeping = now + HOUSEKEEPING_SECONDS
                        self.housekeeping(now)
                if self._stopping.is_set():
                    break
        finally:
            self._stopping.set()
            if keeper is not None:
                keeper.join()
            with self._lock:
                self.sessionizer.close_all(time.time() if self.live else self._last_ts)
            self.write_status("stopping")
        return 0

    def _keep_house(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_SECONDS):
            self.housekeeping(time.monotonic())

    def set_prices(self, overrides: Mapping[str, Any]) -> None:
        """New organisation prices (a policy bundle): used from the next usage record on."""
        self.price_overrides = overrides
        receiver = self.usage_receiver
        if receiver is not None:
            from agent.metering.cost import Pricer  # noqa: PLC0415 - metering is optional

            receiver.pricer = Pricer(overrides)  # one attribute store: old or new, never half

    def stop(self) -> None:
        self._stopping.set()
        stop = getattr(self.source, "stop", None)
        if callable(stop):
            stop()


def all_options() -> Options:
    """Every option of every agent component, in one registry (`lantern agent config-keys`)."""
    from agent.cli_agent import all_options as cli_options  # noqa: PLC0415 - avoids a cycle

    return cli_options()


def build_agent(
    config_path: Path | None, pcap: Path | None = None, *, options: Options | None = None
) -> tuple[Agent, LocalApiServer | None]:
    """Assemble the agent from its config. Raises ConfigError/CaptureError/SpoolError."""
    options = load_config(config_path, options or all_options())
    counters = Counters()
    try:
        catalog = load_catalog([Path(d) for d in options["catalog.extra_dirs"]])
    except SignatureError as exc:
        from agent.exceptions import ConfigError  # noqa: PLC0415

        raise ConfigError(f"catalog.extra_dirs: {exc}") from exc
    matcher = Matcher(catalog.services)
    state = StateDir.from_options(options)
    state.create()
    spool = Spool(state.spool, max_rows=options["spool.max_rows"], counters=counters)
    attributor = build_attributor(options, matcher, counters)
    watchdog = Watchdog(budget_from(options), counters)
    source: PacketSource
    bytes_source = None
    if pcap is not None:
        source = PcapFileSource(pcap, counters)
    else:
        from agent.attribution.sockstats import TcpStats  # noqa: PLC0415 - Linux only
        from agent.capture.live import (  # noqa: PLC0415 - needs raw sockets
            LiveSource,
            check_capture_permission,
            interfaces_from,
        )

        check_capture_permission()
        watchdog.lower_priority(options["limits.nice"])
        source = LiveSource(
            interfaces_from(options),
            counters,
            snaplen=options["capture.snaplen"],
            admit=watchdog.shedder.admit,
        )
        stats = TcpStats.available() if options["mode"] == "endpoint" else None
        bytes_source = stats.tcp_bytes_many if stats is not None else None
    agent = Agent(
        options,
        source,
        attributor,
        spool,
        counters=counters,
        matcher=matcher,
        watchdog=watchdog,
        state=state,
        bytes_source=bytes_source,
        live=pcap is None,
    )
    if options["collector.address"]:
        agent.uploader = build_uploader(options, state, spool, counters, agent)
    api = None
    if pcap is None:
        handler = SpoolApiHandler(spool, lambda: agent.status().to_json())
        api = LocalApiServer(state.socket, handler, counters=counters)
    return agent, api


def build_uploader(
    options: Options, state: StateDir, spool: Spool, counters: Counters, agent: Agent
) -> Uploader:
    """The uploader thread's parts: identity and link, signed bundles, heartbeat."""

    def set_matcher(matcher: Matcher) -> None:
        agent.matcher = matcher  # one attribute store: the capture thread sees old or new

    extra = [Path(d) for d in options["catalog.extra_dirs"]]
    bundles = BundleClient.from_options(
        options,
        state.state,
        counters,
        all_of(catalog_applier(set_matcher, extra), prices_applier(agent.set_prices)),
    )
    if bundles is not None:
        bundles.reapply()
    beat = spool_heartbeat(agent_info(options), spool, counters, lambda: agent.status().health)
    link = build_link(options, state.state)
    return Uploader.from_options(options, spool, link, beat, counters, bundles)


def run_agent(config_path: Path | None, pcap: Path | None = None) -> int:
    """`lantern agent run`: run until SIGTERM/SIGINT (or the end of ``pcap``)."""
    agent, api = build_agent(config_path, pcap)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    metering = None
    try:
        if api is not None:
            api.start()
        if pcap is None and agent.options["metering.enabled"]:
            metering = start_metering(agent)
        elif pcap is None and agent.options["metering.redirect"] and os.geteuid() == 0:
            from agent.metering.redirect import clear_left_behind  # noqa: PLC0415 - optional

            clear_left_behind()
        if agent.uploader is not None:
            agent.uploader.start()
        return agent.run()
    finally:
        if metering is not None:
            supervisor, receiver = metering
            supervisor.stop()
            receiver.stop()
        if agent.uploader is not None:
            agent.uploader.stop(agent.options["collector.drain_seconds"])
            agent.write_status("stopping")  # with what the drain sent
        if api is not None:
            api.stop()
        close = getattr(agent.attributor, "close", None)
        if callable(close):
            close()
        agent.spool.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_metering(agent: Agent) -> tuple[Any, Any]:
    """Usage metering: the mitmproxy process (its own venv, an unprivileged user) and the
    socket its addon reports on. Records are priced here, then spooled beside sessions."""
    from agent.metering.cost import Pricer  # noqa: PLC0415
    from agent.metering.supervisor import MeteringSupervisor  # noqa: PLC0415 - optional
    from agent.metering.usage import UsageReceiver  # noqa: PLC0415

    supervisor = MeteringSupervisor(agent.options, agent.counters)
    supervisor.prepare()
    receiver = UsageReceiver(
        supervisor.paths.socket,
        supervisor.uid,
        agent.spool.put_usage,
        device=agent.options["device.name"],
        matcher=agent.matcher,
        counters=agent.counters,
        socket_owner=supervisor.owner,
        pricer=Pricer(agent.price_overrides),
    )
    agent.usage_receiver = receiver
    receiver.start()
    supervisor.start()
    return supervisor, receiver
