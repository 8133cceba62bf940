"""TEST-ONLY: the metering stack in transparent mode, run inside the test's workstation namespace.

    ip netns exec NS python tests/metering/netns_meter.py WORK UPSTREAM_CA PORT [--redirect]

Runs `running_meter` (the real supervisor, mitmdump as the unprivileged metering user, the
agent's receiver and spool) with ``metering.mode: transparent`` on PORT, with no upstream
redirection: upstream connections go to each client's original destination, which in the test's
namespaces is the peer namespace. ``--redirect`` sets ``metering.redirect`` (the supervisor
adds and removes the REDIRECT rules; the proxy is restarted 5 s after it dies, not 1 s).
Prints ``ready`` and the proxy's command line, ``pid`` and the proxy's pid, then
``records N`` whenever the spool has N usage records, and stops when stdin closes, printing the
agent's counters as ``counters {...}``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.metering.proxykit import running_meter


def main() -> None:
    work, upstream_ca, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    redirect = "--redirect" in sys.argv[4:]
    with running_meter(
        None,
        upstream_ca,
        work,
        mode="transparent",
        listen_port=port,
        redirect=redirect,
        min_backoff=5.0 if redirect else 1.0,
    ) as m:
        print("ready", json.dumps(m.supervisor.command()), flush=True)
        print("pid", m.supervisor.health().pid, flush=True)
        stop = threading.Event()

        def report() -> None:
            seen = 0
            while not stop.wait(0.05):
                n = m.counters.snapshot().get("metering.usage.records", 0)
                if n != seen:
                    seen = n
                    print("records", n, flush=True)

        watcher = threading.Thread(target=report, daemon=True)
        watcher.start()
        sys.stdin.read()  # until the test closes our stdin
        m.supervisor.stop()  # flushes the addon's channel before the receiver stops
        stop.set()
        watcher.join()
    print("counters", json.dumps(m.counters.snapshot()), flush=True)


if __name__ == "__main__":
    main()
