"""The transparent proxy's REDIRECT rules as the supervisor manages them
(`agent.metering.redirect`), against a model of iptables' nat table. Real iptables in a network
namespace: test_transparent_redirect.py."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.metering.exceptions import RedirectError
from agent.metering.redirect import CHAIN, RedirectRules


class FakeNat:
    """The nat table of iptables and ip6tables: chains of rules, as the commands change them."""

    def __init__(self, fail: str | None = None) -> None:
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self.commands: list[list[str]] = []
        self.fail = fail  # an option (-A, -I, ...) that fails with an error message

    def run(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.commands.append(cmd)
        tool, wait, t, table, op, chain, *rest = cmd
        assert (wait, t, table) == ("-w", "-t", "nat")
        chains = self.tables.setdefault(tool, {"OUTPUT": []})
        if op == self.fail:
            return subprocess.CompletedProcess(cmd, 4, "", f"{tool}: {op} refused\n")
        ok = True
        if op == "-N":
            ok = chain not in chains
            chains.setdefault(chain, [])
        elif op == "-F":
            ok = chain in chains
            if ok:
                chains[chain] = []
        elif op == "-X":
            ok = chain in chains and not chains[chain]
            if ok:
                del chains[chain]
        elif op == "-A":
            chains[chain].append(rest)
        elif op == "-I":
            chains[chain].insert(int(rest[0]) - 1, rest[1:])
        elif op == "-C":
            ok = rest in chains.get(chain, [])
        elif op == "-D":
            ok = rest in chains.get(chain, [])
            if ok:
                chains[chain].remove(rest)
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, "", "")


def _rules(nat: FakeNat) -> RedirectRules:
    return RedirectRules(8118, 65534, ("iptables", "ip6tables"), run=nat.run)


def test_install_makes_the_chain_and_one_jump_to_it_for_both_families() -> None:
    nat = FakeNat()
    rules = _rules(nat)
    rules.install()
    redirect = [
        *("-p", "tcp", "--dport", "443", "-m", "owner", "!", "--uid-owner", "65534"),
        *("-j", "REDIRECT", "--to-ports", "8118"),
    ]
    for tool in ("iptables", "ip6tables"):
        assert nat.tables[tool] == {"OUTPUT": [["-j", CHAIN]], CHAIN: [redirect]}
    assert rules.installed()


def test_install_again_leaves_one_rule_and_one_jump() -> None:
    nat = FakeNat()
    rules = _rules(nat)
    rules.install()
    rules.install()
    for tool in ("iptables", "ip6tables"):
        assert nat.tables[tool]["OUTPUT"] == [["-j", CHAIN]]
        assert len(nat.tables[tool][CHAIN]) == 1


def test_remove_takes_every_jump_and_the_chain_and_is_quiet_when_nothing_is_there() -> None:
    nat = FakeNat()
    rules = _rules(nat)
    rules.remove()  # nothing there yet: no error
    rules.install()
    nat.tables["iptables"]["OUTPUT"].append(["-j", CHAIN])  # a second jump, added by hand
    rules.remove()
    for tool in ("iptables", "ip6tables"):
        assert nat.tables[tool] == {"OUTPUT": []}
    assert not rules.installed()


def test_a_failing_command_says_which_and_why() -> None:
    nat = FakeNat(fail="-A")
    with pytest.raises(RedirectError, match=r"iptables -t nat -A LANTERN-METER .* -A refused"):
        _rules(nat).install()


def test_every_command_waits_for_the_xtables_lock() -> None:
    nat = FakeNat()
    rules = _rules(nat)
    rules.install()
    rules.remove()
    assert nat.commands and all(c[1:4] == ["-w", "-t", "nat"] for c in nat.commands)


def test_the_supervisor_refuses_redirect_outside_transparent_mode(tmp_path: Path) -> None:
    from agent.counters import Counters
    from agent.exceptions import ConfigError
    from agent.metering import supervisor as sup
    from tests.metering.proxykit import metering_options

    options = metering_options(tmp_path, {"metering.mode": "regular", "metering.redirect": True})
    with pytest.raises(ConfigError, match=r"only with metering\.mode transparent"):
        sup.MeteringSupervisor(options, Counters()).prepare()
