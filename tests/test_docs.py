"""The README documents every command, option and output field; a test fails when one is not."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from agent.cli import sighting_json
from agent.records import Observation
from agent.scan import Sighting
from lantern.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def commands(group: click.Group, prefix: str = "lantern") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    ctx = click.Context(group)
    # through the group's API, not ``group.commands``: ``lantern`` imports its commands lazily
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        path = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            out += commands(cmd, path)
        else:
            out.append((path, cmd))
    return out


@pytest.mark.parametrize(("path", "cmd"), commands(main), ids=str)
def test_every_command_and_option_is_in_the_readme(path: str, cmd: click.Command) -> None:
    assert f"`{path}`" in README or f"{path} " in README, f"{path} is not documented"
    for param in cmd.params:
        if isinstance(param, click.Option):
            for opt in [*param.opts, *param.secondary_opts]:
                assert opt in README, f"{path}: option {opt} is not documented"


def test_every_scan_json_field_is_in_the_readme() -> None:
    obs = Observation(1.0, "192.0.2.1", 1, "192.0.2.2", 443, "tls", "a.example")
    for key in sighting_json(Sighting("f", obs, None)):
        assert f'"{key}"' in README, f"scan --json field {key} is not documented"


@pytest.mark.parametrize("proto", ["dns", "tls", "quic", "gquic", "http", "ip"])
def test_every_proto_value_is_in_the_readme(proto: str) -> None:
    assert f"| `{proto}` |" in README


def test_readme_shows_what_the_run_command_prints() -> None:
    import re

    from click.testing import CliRunner

    sample = Path(__file__).resolve().parent.parent / "lantern" / "samples" / "ai-sample.pcapng"
    result = CliRunner().invoke(main, ["scan", str(sample)])
    assert result.exit_code == 0

    def norm(text: str) -> str:
        return re.sub(r"in \d+ ms", "in N ms", text).strip()

    assert norm(result.stdout) in norm(README)


def test_every_config_key_is_in_the_readme() -> None:
    from agent.cli_agent import all_options

    for opt in all_options().declared():
        assert f"| `{opt.key}` |" in README, f"config key {opt.key} is not documented"


def test_every_collector_config_key_is_in_the_readme() -> None:
    from collector.config import OPTIONS

    for opt in OPTIONS:
        assert f"| `{opt.key}` |" in README, f"collector config key {opt.key} is not documented"
