"""The metering process's own virtual environment: mitmproxy plus Lantern, apart from the agent's.

mitmproxy pins its dependencies tightly (cryptography < 44.1, h11 <= 0.14, ...), and genai-prices
needs h11 >= 0.16, so the proxy cannot share the agent's environment. This module builds a second
one: ``mitmproxy==MITMPROXY_VERSION``, the Lantern core dependencies that fit its pins, and Lantern
itself without dependencies (editable, so a checkout's code is what runs). Idempotent: a stamp
file records what was installed, and a matching stamp means nothing is done.

    python -m agent.metering.venv [PATH]      # default: .venv-meter next to pyproject.toml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

MITMPROXY_VERSION = "11.0.2"  # the newest release that runs on Python 3.11
# Lantern's core requirements (pyproject.toml) that mitmproxy does not already bring;
# cryptography comes in at mitmproxy's pin, which lies inside Lantern's range.
CORE_REQUIREMENTS = ("pyyaml>=6.0,<7", "click>=8.1,<9", "idna>=3.6,<4")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = PROJECT_ROOT / ".venv-meter"
STAMP = "lantern-meter.json"


class MeterVenvError(RuntimeError):
    """The metering environment could not be created (no network, pip failed)."""


def _stamp(project: Path, python: str) -> dict[str, str]:
    wanted = [f"mitmproxy=={MITMPROXY_VERSION}", *CORE_REQUIREMENTS]
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    return {"requirements": digest, "project": str(project.resolve()), "python": python}


def _runnable_by_all(path: Path) -> bool:
    """Every directory above ``path`` is searchable by others and the file is executable."""
    real = path.resolve()
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def base_python() -> str:
    """The interpreter to build the environment from.

    The metering process runs as an unprivileged user, which must be able to run the
    environment's interpreter and read its standard library: an interpreter under a private
    home directory (pyenv as root) will not do, so a system Python 3.11+ is preferred then.
    """
    base = Path(getattr(sys, "_base_executable", sys.executable))
    if _runnable_by_all(base):
        return str(base.resolve())
    for name in ("python3.11", "python3"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found and _runnable_by_all(Path(found)):
            return str(Path(found).resolve())
    return str(base.resolve())


def mitmdump_path(venv: Path) -> Path:
    return venv / ("Scripts/mitmdump.exe" if os.name == "nt" else "bin/mitmdump")


def python_path(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def is_ready(venv: Path, project: Path = PROJECT_ROOT, python: str | None = None) -> bool:
    """The environment exists and was built for these requirements and this checkout."""
    try:
        found = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return found == _stamp(project, python or base_python()) and mitmdump_path(venv).exists()


def ensure_meter_venv(
    venv: Path = DEFAULT_PATH,
    *,
    project: Path = PROJECT_ROOT,
    python: str | None = None,
    quiet: bool = True,
) -> Path:
    """Create or update the environment at ``venv``; returns its ``mitmdump``.

    Takes about a minute on a cold pip cache. Raises `MeterVenvError` when a step fails.
    """
    python = python or base_python()
    if is_ready(venv, project, python):
        return mitmdump_path(venv)
    pip_flags = ["--disable-pip-version-check", *(["-q"] if quiet else [])]
    steps = [[python, "-m", "venv", "--clear", str(venv)]]
    py = str(python_path(venv))
    steps += [
        [
            py,
            "-m",
            "pip",
            "install",
            *pip_flags,
            f"mitmproxy=={MITMPROXY_VERSION}",
            *CORE_REQUIREMENTS,
        ],
        [py, "-m", "pip", "install", *pip_flags, "--no-deps", "-e", str(project)],
    ]
    # Lantern is installed editable: the proxy runs the checkout's modules, and with them the
    # compiled ones `./dev build` (agent.build_native) made there. Compiling again for this
    # environment would only redo that, in a throwaway build environment.
    env = {**os.environ, "LANTERN_COMPILE": "0"}
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise MeterVenvError(f"{' '.join(cmd[:5])} ... failed: " + " | ".join(tail))
    (venv / STAMP).write_text(json.dumps(_stamp(project, python)))
    return mitmdump_path(venv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    try:
        print(ensure_meter_venv(args.path.absolute(), quiet=False))
    except MeterVenvError as exc:
        print(f"meter venv: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
