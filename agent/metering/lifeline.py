"""The metering process ends with the agent that started it, even when the agent is killed.

The agent stops mitmdump when it stops; but an agent killed outright (SIGKILL, an OOM kill, a
crash) cannot, and the orphan would keep intercepting on the proxy port, which the next agent's
proxy then cannot bind. So the addon asks Linux for SIGTERM when its parent goes
(PR_SET_PDEATHSIG; the signal follows the thread that spawned it, and the supervisor spawns from
threads that live as long as it does), and checks once that the parent is still the agent, in
case the agent died before the request was made. Elsewhere (macOS, Windows) this is a no-op.

Runs inside the mitmproxy environment: standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def end_with_parent(agent_pid: int) -> bool:
    """Arrange SIGTERM for this process when ``agent_pid``, its parent, exits. Returns False
    when the parent is already gone (SIGTERM has then been sent to this process)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != agent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
        return False
    return True
