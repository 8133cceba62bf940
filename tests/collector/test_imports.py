"""The agent imports from the collector only the wire messages, conversion and bundle checks."""

from __future__ import annotations

import subprocess
import sys

from collector.server import RETRY_AFTER


def test_agent_side_modules_pull_in_no_collector_dependency() -> None:
    code = (
        "import sys, collector.api.lantern_pb2, collector.bundle_verify, collector.convert\n"
        "bad = sorted(m for m in ('grpc', 'sqlite_utils', 'collector.store', 'collector.server')"
        " if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lantern_cli_does_not_import_grpc_until_serve() -> None:
    code = "import sys, collector.cli; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert RETRY_AFTER == "retry-after-ms"
