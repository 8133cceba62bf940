"""The metering process ends with the agent, even when the agent is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.metering.proxykit import make_server_pki, remove_workdir, shared_workdir

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux")

ROOT = Path(__file__).resolve().parents[2]
# An "agent": the real supervisor and mitmdump (running_meter), killed with SIGKILL by the test.
AGENT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.metering.proxykit import running_meter
with running_meter(None, Path({ca!r}), Path({work!r})) as m:
    print(m.supervisor._proc.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose (its parent, init, reaps it)
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def test_a_killed_agent_takes_its_metering_process_with_it() -> None:
    work = shared_workdir()
    try:
        (work / "upstream").mkdir()
        ca, _, _ = make_server_pki(work / "upstream", ["api.openai.com"])
        with subprocess.Popen(
            [sys.executable, "-c", AGENT.format(root=str(ROOT), ca=str(ca), work=str(work))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as agent:
            _kill_and_watch(agent)
    finally:
        remove_workdir(work)


def _kill_and_watch(agent: subprocess.Popen[str]) -> None:
    try:
        line = agent.stdout.readline() if agent.stdout else ""
        assert line.strip().isdigit(), agent.stderr.read() if agent.stderr else line
        meter_pid = int(line)
        assert _alive(meter_pid)
        agent.send_signal(signal.SIGKILL)  # no chance to stop its child
        agent.wait(10)
        deadline = time.monotonic() + 15
        while _alive(meter_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(meter_pid), "mitmdump outlived the agent that started it"
    finally:
        if agent.poll() is None:
            agent.kill()
