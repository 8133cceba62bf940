"""`lantern agent sessions|status|config-keys|run` and `lantern me`, text and --json."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agent.cli_agent import agent, all_options, me
from agent.collected import privacy_notice
from agent.config import load_config
from agent.exceptions import ConfigError
from agent.localapi import LocalApiServer, SpoolApiHandler, user_name
from agent.spool import Spool, SpoolStats
from agent.state import (
    SYSTEM_RUNTIME,
    SYSTEM_STATE,
    AgentStatus,
    StateDir,
    StatusError,
    read_status,
    write_status,
)
from tests.agent.test_spool import make_session

ME = user_name(os.geteuid())


def invoke(cmd: Any, *args: str) -> Result:
    return CliRunner().invoke(cmd, list(args), catch_exceptions=False)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    sd = StateDir.at(tmp_path / "state")
    sd.create()
    return sd


@pytest.fixture
def filled(state: StateDir) -> StateDir:
    with Spool(state.spool) as sp:
        sp.put_session(make_session(id="mine-sent", user=ME, tool="ChatGPT"))
        batch = sp.next_batch()
        assert batch is not None
        sp.ack(batch.id)
        sp.put_session(make_session(id="mine-new", user=ME, tool="Cursor", bytes_up=None))
        sp.put_session(make_session(id="bobs", user="bob", tool="Claude"))
    return state


def agent_status(**overrides: Any) -> AgentStatus:
    base: dict[str, Any] = {
        "pid": os.getpid(),
        "started": time.time() - 3700,
        "updated": time.time(),
        "health": "ok",
        "problems": (),
        "counters": {"tls.sni": 12, "dns.malformed": 1},
        "spool": SpoolStats(rows=3, unsent=2, dropped=5, dropped_unsent=1, file_bytes=40960),
    }
    base.update(overrides)
    return AgentStatus(**base)


@pytest.fixture
def running(filled: StateDir) -> Iterator[StateDir]:
    with (
        Spool(filled.spool) as sp,
        LocalApiServer(filled.socket, SpoolApiHandler(sp, lambda: agent_status().to_json())),
    ):
        yield filled


# ---------------------------------------------------------------------- config-keys, state


def test_config_keys_lists_every_declared_option() -> None:
    result = invoke(agent, "config-keys")
    assert result.exit_code == 0
    for opt in all_options().declared():
        assert f"{opt.key}  (" in result.output
        assert opt.help[:40] in result.output
    assert "spool.max_rows  (int, default: 200000)" in result.output
    assert "state.dir  (path, default: none)" in result.output


def test_spool_max_rows_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("state:\n  dir: /srv/lantern\nspool:\n  max_rows: 5\n")
    with pytest.raises(ConfigError, match=r"agent.yaml:4: key 'spool.max_rows': must be at least"):
        load_config(config, all_options())
    config.write_text("state:\n  dir: /srv/lantern\n")
    sd = StateDir.from_options(load_config(config, all_options()))
    assert sd == StateDir(Path("/srv/lantern"), Path("/srv/lantern"))
    assert sd.spool == Path("/srv/lantern/spool.db")
    assert sd.socket == Path("/srv/lantern/agent.sock")


def test_default_state_dir_for_root_and_for_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert StateDir.default() == StateDir(SYSTEM_STATE, SYSTEM_RUNTIME)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert StateDir.default() == StateDir.at(tmp_path / "lantern")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert StateDir.default().state == tmp_path / ".local" / "state" / "lantern"


def test_state_dirs_are_created_private_and_public(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "lib", tmp_path / "run")
    sd.create()
    assert stat.S_IMODE(sd.state.stat().st_mode) == 0o700
    assert stat.S_IMODE(sd.runtime.stat().st_mode) == 0o755


def test_status_file_round_trips_and_is_world_readable(state: StateDir) -> None:
    st = agent_status(problems=("capture: no permission",))
    write_status(state.status_file, st)
    assert read_status(state.status_file) == st
    assert stat.S_IMODE(state.status_file.stat().st_mode) == 0o644
    assert [p.name for p in state.runtime.iterdir()] == ["status.json"]  # no temp file left


def test_a_bad_status_file_is_a_status_error(state: StateDir) -> None:
    with pytest.raises(StatusError, match="no status file"):
        read_status(state.status_file)
    state.status_file.write_text("{")
    with pytest.raises(StatusError, match="not valid JSON"):
        read_status(state.status_file)
    state.status_file.write_text('{"pid": 1}')
    with pytest.raises(StatusError, match="not an agent status"):
        read_status(state.status_file)


# ---------------------------------------------------------------------- sessions


def test_sessions_lists_every_user(filled: StateDir) -> None:
    result = invoke(agent, "sessions", "--state-dir", str(filled.state))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["USER", "TOOL", "PROCESS"]
    body = "\n".join(lines[1:])
    assert f"{ME}" in body and "bob" in body
    assert "Claude" in body and "Cursor" in body and "ChatGPT" in body
    assert "3 session(s) in" in result.output
    sent_col = {line.split()[1]: line.split()[-1] for line in lines[1:4]}
    assert sent_col == {"ChatGPT": "yes", "Cursor": "yet", "Claude": "yet"}  # "not yet"


def test_sessions_json(filled: StateDir) -> None:
    result = invoke(agent, "sessions", "--json", "--state-dir", str(filled.state))
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["spool"] == str(filled.spool)
    got = {s["id"]: (s["user"], s["sent"]) for s in data["sessions"]}
    assert got == {"mine-sent": (ME, True), "mine-new": (ME, False), "bobs": ("bob", False)}


def test_sessions_without_a_spool_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(agent, ["sessions", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"lantern: no spool at {tmp_path / 'spool.db'}"
        + ("" if os.geteuid() == 0 else " (the spool is readable by root only)")
    ]


# ---------------------------------------------------------------------- status


def test_status_from_the_running_agent(running: StateDir) -> None:
    result = invoke(agent, "status", "--state-dir", str(running.state))
    assert result.exit_code == 0, result.output
    assert f"agent: running (pid {os.getpid()}, up 1h 1m), health ok" in result.output
    assert "spool: 3 sessions, 2 unsent, 5 dropped (1 never sent), 41.0 kB" in result.output
    assert "tls.sni" in result.output and "12" in result.output

    result = invoke(agent, "status", "--json", "--state-dir", str(running.state))
    data = json.loads(result.output)
    assert (data["running"], data["source"]) == (True, "agent")
    assert data["status"]["counters"] == {"tls.sni": 12, "dns.malformed": 1}
    assert data["status"]["spool"]["dropped"] == 5


def test_status_from_the_status_file_when_the_api_is_down(state: StateDir) -> None:
    write_status(state.status_file, agent_status(health="degraded", problems=("slow disk",)))
    result = invoke(agent, "status", "--state-dir", str(state.state))
    assert result.exit_code == 0
    assert "health degraded" in result.output and "problem: slow disk" in result.output
    data = json.loads(invoke(agent, "status", "--json", "--state-dir", str(state.state)).output)
    assert (data["running"], data["source"]) == (True, "status_file")


def test_status_of_a_stopped_agent_shows_the_last_status(state: StateDir) -> None:
    write_status(state.status_file, agent_status(updated=time.time() - 3600))
    result = CliRunner().invoke(agent, ["status", "--state-dir", str(state.state)])
    assert result.exit_code == 3
    assert result.output.startswith("agent: not running; last status written")
    result = CliRunner().invoke(agent, ["status", "--json", "--state-dir", str(state.state)])
    assert result.exit_code == 3
    assert json.loads(result.output)["running"] is False


def test_status_with_nothing_is_a_clean_error(state: StateDir) -> None:
    result = CliRunner().invoke(agent, ["status", "--state-dir", str(state.state)])
    assert result.exit_code == 2
    assert result.output.startswith("lantern: no agent is running: no agent is listening on")
    assert "no status file at" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------- me


def test_me_asks_the_running_agent(running: StateDir) -> None:
    result = invoke(me, "--state-dir", str(running.state))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"What Lantern has recorded about {ME} on this computer (the running agent)"
    )
    assert "ChatGPT" in result.output and "Cursor" in result.output
    assert "Claude" not in result.output and "bob" not in result.output
    assert "1 of 2 session(s) sent to the collector" in result.output
    assert result.output.rstrip().endswith(privacy_notice().splitlines()[-1])

    data = json.loads(invoke(me, "--json", "--state-dir", str(running.state)).output)
    assert (data["source"], data["user"]) == ("agent", ME)
    assert {s["id"]: s["sent"] for s in data["sessions"]} == {"mine-sent": True, "mine-new": False}
    assert [t["tool"] for t in data["tools"]] == ["ChatGPT", "Cursor"]
    assert data["privacy_notice"] == privacy_notice()


def test_me_reads_the_spool_when_no_agent_runs(filled: StateDir) -> None:
    result = invoke(me, "--state-dir", str(filled.state))
    assert result.exit_code == 0, result.output
    assert "(the spool (agent not running))" in result.output
    assert "Claude" not in result.output
    data = json.loads(invoke(me, "--json", "--state-dir", str(filled.state)).output)
    assert data["source"] == "spool"
    assert sorted(s["id"] for s in data["sessions"]) == ["mine-new", "mine-sent"]


def test_me_with_nothing_recorded(state: StateDir) -> None:
    Spool(state.spool).close()
    result = invoke(me, "--state-dir", str(state.state))
    assert result.exit_code == 0
    assert "No AI tool use recorded." in result.output
    assert "Lantern never records:" in result.output


def test_me_without_agent_or_spool_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(me, ["--json", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == (
        f"lantern: no agent is running (no agent is listening on {tmp_path / 'agent.sock'}) "
        f"and no spool at {tmp_path / 'spool.db'}\n"
    )


# ---------------------------------------------------------------------- run


def test_run_calls_the_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Path | None, Path | None]] = []
    fake = types.ModuleType("agent.service")
    fake.run_agent = lambda config, pcap: calls.append((config, pcap))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.service", fake)
    config = tmp_path / "agent.yaml"
    result = invoke(agent, "run", "--config", str(config), "--pcap", str(tmp_path / "x.pcap"))
    assert result.exit_code == 0
    assert calls == [(config, tmp_path / "x.pcap")]


def test_run_turns_agent_errors_into_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(config: Path | None, pcap: Path | None) -> None:
        raise ConfigError("agent.yaml:3: key 'x': unknown key")

    fake = types.ModuleType("agent.service")
    fake.run_agent = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.service", fake)
    result = CliRunner().invoke(agent, ["run"])
    assert result.exit_code == 2
    assert result.output == "lantern: agent.yaml:3: key 'x': unknown key\n"
