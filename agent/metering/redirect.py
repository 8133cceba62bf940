"""The transparent proxy's REDIRECT rules, present only while the proxy is there to take them.

Rules an admin adds by hand stay when the proxy is not running (restarting after a crash,
metering turned off, the agent stopped): every HTTPS connection on the machine is then sent
to a closed port and fails. With ``metering.redirect: true`` the supervisor owns the rules
instead: it adds them once the proxy accepts connections and removes them the moment it exits
or is stopped, so programs reach their servers directly (unmetered) in between.

The rules live in a chain of their own, ``LANTERN-METER`` in the ``nat`` table, for iptables
and ip6tables; OUTPUT jumps to it. It redirects TCP port 443 to the proxy's port, except the
proxy's own connections (its uid), exactly as the README's hand-written rules do::

    -A OUTPUT -j LANTERN-METER
    -A LANTERN-METER -p tcp --dport 443 -m owner ! --uid-owner UID -j REDIRECT --to-ports PORT

Needs root (CAP_NET_ADMIN). ``-w`` waits for the xtables lock that other tools may hold.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence

from agent.metering.exceptions import RedirectError

log = logging.getLogger("lantern.metering.redirect")

CHAIN = "LANTERN-METER"
Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)


class RedirectRules:
    """Adds and removes the chain and OUTPUT's jump to it, for each of ``tools``."""

    def __init__(
        self,
        port: int,
        exempt_uid: int,
        tools: Sequence[str] = ("iptables", "ip6tables"),
        run: Runner = _run,
    ) -> None:
        self.port = port
        self.exempt_uid = exempt_uid
        self.tools = tuple(tools)
        self._run = run

    def rule(self) -> list[str]:
        return [
            *("-p", "tcp", "--dport", "443", "-m", "owner"),
            *("!", "--uid-owner", str(self.exempt_uid)),
            *("-j", "REDIRECT", "--to-ports", str(self.port)),
        ]

    def install(self) -> None:
        """The chain holding exactly the rule, and OUTPUT's jump to it (once)."""
        for tool in self.tools:
            if not self._ok(tool, "-N", CHAIN):  # it may be there from an earlier run
                self._must(tool, "-F", CHAIN)
            self._must(tool, "-A", CHAIN, *self.rule())
            if not self._ok(tool, "-C", "OUTPUT", "-j", CHAIN):
                self._must(tool, "-I", "OUTPUT", "1", "-j", CHAIN)
        log.info("redirecting outgoing HTTPS to the metering proxy (port %d)", self.port)

    def remove(self) -> None:
        """No jump, no chain; quiet when there is nothing to remove."""
        for tool in self.tools:
            while self._ok(tool, "-C", "OUTPUT", "-j", CHAIN):
                self._must(tool, "-D", "OUTPUT", "-j", CHAIN)
            if self._ok(tool, "-F", CHAIN):
                self._ok(tool, "-X", CHAIN)

    def installed(self) -> bool:
        """OUTPUT jumps to the chain in every table this manages."""
        return all(self._ok(tool, "-C", "OUTPUT", "-j", CHAIN) for tool in self.tools)

    def _ok(self, tool: str, *args: str) -> bool:
        return self._run([tool, "-w", "-t", "nat", *args]).returncode == 0

    def _must(self, tool: str, *args: str) -> None:
        done = self._run([tool, "-w", "-t", "nat", *args])
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise RedirectError(
                f"{tool} -t nat {' '.join(args)} failed: {reason[-1] if reason else 'no reason'}"
            )


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def clear_left_behind() -> None:
    """Remove the chain and OUTPUT's jump that an agent killed outright left behind, when this
    agent runs with ``metering.redirect`` but without metering (nothing else would remove
    them, and they send all HTTPS to a port nobody listens on). Errors are logged only."""
    tools = [t for t in ("iptables", "ip6tables") if shutil.which(t) is not None]
    try:
        RedirectRules(0, 0, tools).remove()
    except (RedirectError, OSError, subprocess.SubprocessError) as exc:
        log.error("metering redirect: cannot remove rules left behind: %s", exc)
