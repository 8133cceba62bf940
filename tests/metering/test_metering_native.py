"""The compiled metering parsers (`agent.native`: jsonscan, sse, events, streams, eventstream)
give the same Usage as their Python sources, for every recorded body, whole and byte by byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_metering_properties import ALL_CASES

from agent import native

ROOT = Path(__file__).resolve().parents[2]

USAGES = """
import json
from dataclasses import astuple
from agent import native
from test_metering_properties import ALL_CASES, full, one_byte_at_a_time

out = {"state": native.state(), "usages": {}}
for name, case in sorted(ALL_CASES.items()):
    out["usages"][name] = [repr(astuple(full(case))), repr(astuple(one_byte_at_a_time(case)))]
print(json.dumps(out))
"""


def _usages(pure: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "metering")])
    if pure:
        env[native.PURE_ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", USAGES],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_compiled_and_python_parsers_give_the_same_usage() -> None:
    pure, built = _usages(pure=True), _usages(pure=False)
    assert pure["state"] == ("disabled" if native.state() != "pure" else "pure")
    assert built["state"] == native.state()
    assert sorted(pure["usages"]) == sorted(ALL_CASES)  # type: ignore[call-overload]
    assert built["usages"] == pure["usages"]
