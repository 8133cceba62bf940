"""The metering process's entry point (`agent.metering.proxy`), run in the metering environment.

Proxying through it is what the canary, transparent, HTTP/2, WebSocket and upstream-trust tests
do; these tests pin down what the master is made of and how it refuses bad arguments.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from agent.metering.venv import python_path
from tests.metering.proxykit import meter_venv

ADDONS = """
import asyncio, json
from mitmproxy import options
from agent.metering.proxy import MeteringMaster

async def main():
    master = MeteringMaster(options.Options())
    print(json.dumps(sorted(type(a).__name__ for a in master.addons.chain)))

asyncio.run(main())
"""

# What a metering proxy needs. Not here, so not able to write or serve anything: flow files
# (Save, SaveHar), the flow printer (Dumper), the onboarding app, replay, rewriting, ...
NEEDED = [
    "Block",
    "Core",
    "DisableH2C",
    "ErrorCheck",
    "LanternMeter",
    "NextLayer",
    "Proxyserver",
    "RefuseUnknownOptions",
    "ScriptLoader",
    "TermLog",
    "TlsConfig",
]


def _proxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    python = python_path(meter_venv())
    cmd = [str(python), "-I", "-m", "agent.metering.proxy", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_the_master_has_only_the_addons_metering_needs(tmp_path: Path) -> None:
    python = python_path(meter_venv())
    done = subprocess.run(
        [str(python), "-I", "-c", ADDONS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == NEEDED


def test_an_unknown_option_is_refused_not_ignored(tmp_path: Path) -> None:
    # mitmdump would drop a misspelt --set silently; a metering proxy running without, say,
    # its upstream CA because of a typo should not start.
    done = _proxy(
        *("--listen-host", "127.0.0.1", "--listen-port", "0"),
        *("--set", f"confdir={tmp_path}", "--set", "nosuch=1"),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "unknown option(s): nosuch" in done.stdout  # the error log (mitmproxy's termlog)
    assert "exiting" in done.stderr


def test_a_bad_mode_is_refused(tmp_path: Path) -> None:
    done = _proxy("--mode", "bogus", "--set", f"confdir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert "bogus" in done.stderr and "Traceback" not in done.stderr


def test_a_script_declares_options_before_they_are_checked(tmp_path: Path) -> None:
    # The test redirect script declares test_upstream_port: setting it is not "unknown".
    script = tmp_path / "declares.py"
    script.write_text(
        "from mitmproxy import ctx\n"
        "class A:\n"
        "    def load(self, loader):\n"
        "        loader.add_option('probe_value', int, 0, 'a test option')\n"
        "    def running(self):\n"
        "        print('probe', ctx.options.probe_value, flush=True)\n"
        "        ctx.master.shutdown()\n"
        "addons = [A()]\n"
    )
    done = _proxy(
        *("--listen-host", "127.0.0.1", "--listen-port", "0"),
        *("-s", str(script), "--set", "probe_value=7", "--set", f"confdir={tmp_path}"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "probe 7" in done.stdout
