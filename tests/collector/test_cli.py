"""`lantern collector ...` through click's CliRunner, and `serve` as a real subprocess."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from collector.cli import collector
from collector.testing import enroll_agent, running_collector


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(collector, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_creates_the_pki_once(tmp_path: Path) -> None:
    code, out, _ = run("init", "--dir", str(tmp_path), "--hostname", "c.example.com")
    assert code == 0
    assert "server certificate names: c.example.com, localhost" in out
    assert stat.S_IMODE((tmp_path / "pki" / "ca.key").stat().st_mode) == 0o600
    assert (tmp_path / "collector.db").is_file()
    code, _, err = run("init", "--dir", str(tmp_path))
    assert code == 1
    assert "already initialised" in err


def test_token_create_list_revoke(tmp_path: Path) -> None:
    run("init", "--dir", str(tmp_path))
    code, out, _ = run("token", "create", "--dir", str(tmp_path), "--ttl", "2h", "--uses", "3")
    assert code == 0
    token = out.strip()
    assert token.startswith("lnt_")
    token_id = token.split("_")[1]
    code, out, _ = run("token", "list", "--dir", str(tmp_path), "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["id"], row["uses_left"], row["state"]) == (token_id, 3, "active")
    assert token not in out  # never shown again
    code, out, _ = run("token", "list", "--dir", str(tmp_path))
    assert out.splitlines()[0].split() == [
        "ID",
        "CREATED",
        "EXPIRES",
        "USES",
        "LEFT",
        "USED",
        "STATE",
    ]
    assert code == 0 and token_id in out and "active" in out
    assert run("token", "revoke", "--dir", str(tmp_path), token_id)[:2] == (
        0,
        f"revoked token {token_id}\n",
    )
    code, _, err = run("token", "revoke", "--dir", str(tmp_path), token_id)
    assert code == 1 and "no active token" in err
    assert "revoked" in run("token", "list", "--dir", str(tmp_path))[1]


def test_commands_refuse_a_directory_without_a_collector(tmp_path: Path) -> None:
    code, _, err = run("token", "list", "--dir", str(tmp_path))
    assert code == 1 and "no collector in" in err
    assert not (tmp_path / "collector.db").exists()


def test_bad_ttl_is_a_usage_error(tmp_path: Path) -> None:
    run("init", "--dir", str(tmp_path))
    code, _, err = run("token", "create", "--dir", str(tmp_path), "--ttl", "soon")
    assert code == 2 and "--ttl" in err and "duration" in err


def test_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen:\n  enroll_port: 99999\n")
    code, _, err = run("init", "--config", str(cfg))
    assert code == 2
    assert f"{cfg}:2: key 'listen.enroll_port'" in err


def test_agents_list_and_revoke(tmp_path: Path) -> None:
    with running_collector(tmp_path) as c:
        agent = enroll_agent(c, c.create_token("1h"), hostname="bob-pc")
        d = str(c.data_dir)
        code, out, _ = run("agents", "list", "--dir", d)
        assert code == 0 and agent.agent_id in out and "bob-pc" in out and "active" in out
        assert run("agents", "revoke", "--dir", d, agent.agent_id)[0] == 0
        (row,) = [
            json.loads(x) for x in run("agents", "list", "--dir", d, "--json")[1].splitlines()
        ]
        assert (row["id"], row["revoked"]) == (agent.agent_id, True)
        code, _, err = run("agents", "revoke", "--dir", d, "agt-nope")
        assert code == 1 and "no active agent" in err


def test_serve_initialises_an_empty_dir_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with running_collector(tmp_path) as c:
        assert (c.data_dir / "pki" / "ca.crt").is_file()
        pid = c.pid
        assert c.stop() == 0
    log = c.log()
    assert "Traceback" not in log
    assert pid > 0
