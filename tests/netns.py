"""Network namespaces with a veth pair for integration tests: two hosts on this machine only.

Everything the tests send stays inside namespaces they create (addresses 10.231.x.y / fd31::),
and every namespace and test user is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def need_root_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to create network namespaces")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class NetnsPair:
    """``agent`` is the workstation; ``peer`` hosts the DNS and TLS servers."""

    agent: str
    peer: str
    agent_if: str
    peer_if: str
    agent_ip: str = "10.231.0.1"
    peer_ip: str = "10.231.0.2"
    agent_ip6: str = "fd31::1"
    peer_ip6: str = "fd31::2"

    def exec_args(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    need_root_netns()
    tag = uuid.uuid4().hex[:6]
    pair = NetnsPair(f"lt-a-{tag}", f"lt-p-{tag}", f"lta{tag}", f"ltp{tag}")
    try:
        sh("ip", "netns", "add", pair.agent)
        sh("ip", "netns", "add", pair.peer)
        sh("ip", "link", "add", pair.agent_if, "type", "veth", "peer", "name", pair.peer_if)
        sh("ip", "link", "set", pair.agent_if, "netns", pair.agent)
        sh("ip", "link", "set", pair.peer_if, "netns", pair.peer)
        for ns, ifname, ip4, ip6 in (
            (pair.agent, pair.agent_if, pair.agent_ip, pair.agent_ip6),
            (pair.peer, pair.peer_if, pair.peer_ip, pair.peer_ip6),
        ):
            sh("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", ifname)
            sh("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # a default route so the agent's "interfaces with a default route" finds the veth
        sh("ip", "-n", pair.agent, "route", "add", "default", "via", pair.peer_ip)
        yield pair
    finally:
        sh("ip", "netns", "del", pair.agent, check=False)
        sh("ip", "netns", "del", pair.peer, check=False)


@contextmanager
def os_users(*names: str) -> Iterator[list[str]]:
    """Throwaway OS users (root only); removed afterwards."""
    need_root_netns()
    made = []
    try:
        for name in names:
            sh("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
            made.append(name)
        yield made
    finally:
        for name in made:
            sh("userdel", name, check=False)
