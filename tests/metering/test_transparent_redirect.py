"""``metering.redirect``: the supervisor owns the REDIRECT rules, in a real network namespace.

The same namespaces as test_transparent.py, but no rules added by hand: the metering stack runs
with ``metering.redirect: true`` (`netns_meter.py --redirect`). While the proxy listens, OUTPUT
jumps to the LANTERN-METER chain and catalog calls are intercepted. When the proxy dies, the
rules go at once, so HTTPS reaches its servers directly until the supervisor has restarted it
(5 s later here) and put them back; when the agent stops, they go for good. Root only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.metering.redirect import CHAIN
from tests.metering.proxykit import meter_user
from tests.metering.test_transparent import (
    HERE,
    PORT,
    client_calls,
    finish,
    namespaces,
    spawn,
    start_upstream,
    subject,
)
from tests.netns import NetnsPair, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="transparent mode is Linux only"),
]


def _jumps(ns: NetnsPair, tool: str) -> bool:
    args = ns.exec_args(ns.agent, tool, "-w", "-t", "nat", "-C", "OUTPUT", "-j", CHAIN)
    return sh(*args, check=False).returncode == 0


def _chain(ns: NetnsPair, tool: str) -> list[str]:
    args = ns.exec_args(ns.agent, tool, "-w", "-t", "nat", "-S", CHAIN)
    done = sh(*args, check=False)
    return done.stdout.splitlines() if done.returncode == 0 else []


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def _call(ns: NetnsPair, user: str, work: Path, name: str, cafiles: list[Path]) -> dict[str, Any]:
    """One call of test_transparent's, by a client that knows nothing of a proxy."""
    (call,) = [c for c in client_calls() if c["name"] == name]
    config = work / "upstream" / f"client-{uuid.uuid4().hex[:6]}.json"
    config.write_text(
        json.dumps(
            {"user": user, "cafiles": [str(c) for c in cafiles], "answer": "-", "calls": [call]}
        )
    )
    script = str(HERE / "netns_client.py")
    args = ns.exec_args(ns.agent, sys.executable, script, str(config))
    proc, out = spawn(args, config.with_suffix(".log"))
    try:
        result: dict[str, Any] = json.loads(out.until("{", 60))
        out.until("done", 30)
    finally:
        finish(proc)
    return result


def test_the_rules_exist_exactly_while_the_proxy_listens() -> None:
    with namespaces("lt-rd") as n:
        ns, user, work = n.ns, n.user, n.work
        upstream = start_upstream(ns, work, n.etc, n.procs)
        assert not _jumps(ns, "iptables")  # nothing by hand
        meter, meter_out = spawn(
            ns.exec_args(
                ns.agent,
                *(sys.executable, str(HERE / "netns_meter.py"), str(work)),
                *(str(upstream.provider_ca), str(PORT), "--redirect"),
            ),
            work / "upstream" / "meter.log",
        )
        n.procs.append(meter_out)
        meter_out.until("ready", 90)
        pid = int(meter_out.until("pid", 10).split()[1])
        device_ca = work / "run" / "lantern-metering-ca.pem"
        trusted = [device_ca, upstream.site_ca]

        # The proxy listens: both families redirect, the proxy's own user exempt.
        uid = sh("id", "-u", meter_user()).stdout.strip()
        _until(lambda: _jumps(ns, "iptables") and _jumps(ns, "ip6tables"), 30, "rules added")
        for tool in ("iptables", "ip6tables"):
            (rule,) = [r for r in _chain(ns, tool) if r.startswith(f"-A {CHAIN}")]
            assert f"--uid-owner {uid}" in rule and f"--to-ports {PORT}" in rule, rule
        chat = _call(ns, user, work, "chat", trusted)
        assert chat["status"] == 200 and chat["issuer"] == subject(device_ca), chat
        meter_out.until("records 1", 30)

        # The proxy dies: the rules go before it is back, and HTTPS goes direct.
        os.kill(pid, signal.SIGKILL)
        gone = lambda: not (_jumps(ns, "iptables") or _jumps(ns, "ip6tables"))  # noqa: E731
        _until(gone, 5, "rules removed")
        assert _chain(ns, "iptables") == [] and _chain(ns, "ip6tables") == []
        site = _call(ns, user, work, "site", trusted)
        assert site["status"] == 200 and site["issuer"] == subject(upstream.site_ca), site
        direct = _call(ns, user, work, "chat", [*trusted, upstream.provider_ca])
        assert direct["issuer"] == subject(upstream.provider_ca), direct  # not intercepted

        # Restarted: the rules are back, and calls are metered again.
        _until(lambda: _jumps(ns, "iptables"), 60, "rules added after the restart")
        again = _call(ns, user, work, "chat", trusted)
        assert again["issuer"] == subject(device_ca), again

        # The agent stops: no rule, no chain.
        finish(meter)
        for tool in ("iptables", "ip6tables"):
            assert not _jumps(ns, tool) and _chain(ns, tool) == []


def test_an_agent_without_metering_removes_rules_a_killed_agent_left() -> None:
    """A killed agent's rules send all HTTPS to a port nobody listens on; an agent started
    with ``metering.redirect`` but metering off (nothing else would) removes them."""
    lantern = str(Path(sys.executable).with_name("lantern"))
    with namespaces("lt-rl") as n:
        ns = n.ns
        for tool in ("iptables", "ip6tables"):
            for rule in (
                ["-N", CHAIN],
                [
                    "-A",
                    CHAIN,
                    "-p",
                    "tcp",
                    "--dport",
                    "443",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "8118",
                ],
                ["-I", "OUTPUT", "1", "-j", CHAIN],
            ):
                sh(*ns.exec_args(ns.agent, tool, "-w", "-t", "nat", *rule))
            assert _jumps(ns, tool)
        config = n.work / "agent.yaml"
        config.write_text(
            json.dumps(
                {
                    "state": {"dir": str(n.work / "state"), "runtime_dir": str(n.work / "run")},
                    "capture": {"interfaces": ["lo"]},
                    "metering": {"redirect": True},  # metering.enabled stays false
                }
            )
        )
        log = n.work / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(
                ns.exec_args(ns.agent, lantern, "agent", "run", "--config", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            gone = lambda: not (_jumps(ns, "iptables") or _jumps(ns, "ip6tables"))  # noqa: E731
            _until(gone, 30, "the left-behind rules are removed")
            assert _chain(ns, "iptables") == [] and _chain(ns, "ip6tables") == []
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        assert agent.returncode == 0, log.read_text()
