"""The packet hot path compiled to C with mypyc, and the guard that never runs a stale build.

The decoders and extractors below (and the metering proxy's body framers) are plain, fully
typed Python. mypyc turns each into a C extension that runs the same code without the
interpreter's per-operation cost (attribute access, calls between these modules and byte
arithmetic become C), which makes a scan about 1.5 times faster and a streamed event about 30%
cheaper to meter. Nothing depends on it: without a C compiler the same modules run as Python.

The extensions sit next to their sources (``packet.py`` beside ``packet.cpython-311-*.so``),
where Python prefers the extension. So that an edited source is never shadowed by an old
build, the build writes a digest of the sources it compiled (``native.manifest``), and
``activate`` (run when the ``agent`` package is imported) loads the Python sources instead of
every extension when the digest differs, with one warning. ``LANTERN_PURE_PYTHON=1`` does the
same on purpose.

    python -m agent.build_native build     compile when the sources changed (./dev does it)
    python -m agent.build_native status    say which is in use

This module is never compiled itself, and imports nothing from Lantern: setup.py loads it by
path.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Compiled together as one group, so calls between them are direct C calls. A module that
# imports one of these is not compiled itself unless listed here.
MODULES = (
    "agent.capture.pcapfile",
    "agent.decode.fragments",
    "agent.decode.packet",
    "agent.decode.tcp",
    "agent.extract.dns",
    "agent.extract.dnscache",
    "agent.extract.gquic",
    "agent.extract.http",
    "agent.extract.quic",
    "agent.extract.quic_crypto",
    "agent.extract.quic_frames",
    "agent.extract.tls",
    "agent.flows.dnsflow",
    "agent.flows.tcpflow",
    "agent.pipeline",
    "agent.metering.events",
    "agent.metering.eventstream",
    "agent.metering.jsonscan",
    "agent.metering.sse",
    "agent.metering.streams",
)
GROUP = "agent.compiled"  # the shared library mypyc builds: agent/compiled__mypyc.*.so
ROOT = Path(__file__).resolve().parent.parent  # the directory that holds the agent package
MANIFEST = Path(__file__).with_name("native.manifest")
PURE_ENV = "LANTERN_PURE_PYTHON"


class _State:
    # "compiled", "pure" (no build present), "disabled" (PURE_ENV), "stale" (sources changed)
    value = "pure"


def state() -> str:
    """Which decoders this process runs, as ``activate`` decided."""
    return _State.value


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def sources_digest() -> str:
    """SHA-256 over the compiled modules' names and sources, and the interpreter's ABI tag."""
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    for module in MODULES:
        h.update(b"\0" + module.encode() + b"\0")
        h.update(source_path(module).read_bytes())
    return h.hexdigest()


def extension_paths(module: str) -> list[Path]:
    base = source_path(module).with_suffix("")
    return [
        p
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (p := base.with_name(base.name + suffix)).exists()
    ]


def group_library_paths() -> list[Path]:
    package, name = GROUP.rsplit(".", 1)
    return sorted(ROOT.joinpath(*package.split(".")).glob(name + "__mypyc.*"))


def _built() -> tuple[bool, bool]:
    """(some extension exists, every module and the shared library have one)."""
    found = [bool(extension_paths(m)) for m in MODULES] + [bool(group_library_paths())]
    return any(found), all(found)


class _SourceFinder:
    """Finds the listed modules' Python sources ahead of the extensions beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = frozenset(modules)

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self._modules:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name))


def activate() -> str:
    """Decide, before any compiled module is imported, whether the extensions may be used.

    All or nothing: compiled modules call each other directly in C, so one stale module
    among fresh ones could still run old code through its neighbours.
    """
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return _State.value
    some, every = _built()
    if not some:
        _State.value = "pure"
        return _State.value
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _State.value = "disabled"
    elif not every or _manifest() != sources_digest():
        _State.value = "stale"
        sys.stderr.write(
            "lantern: the compiled decoders are older than their sources; running the Python "
            "ones (slower). Rebuild: python -m agent.build_native build\n"
        )
    else:
        _State.value = "compiled"
        return _State.value
    sys.meta_path.insert(0, _SourceFinder(MODULES))
    return _State.value


def _manifest() -> str:
    try:
        return MANIFEST.read_text().strip()
    except OSError:
        return ""


def compiler_missing() -> str | None:
    """Why extensions cannot be built here, or None when they can."""
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"Python headers not found ({include}); install python3-dev"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"C compiler {cc} not found; install gcc"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc not installed; pip install mypy (the build dependency group)"
    return None


def build(force: bool = False) -> int:
    """Compile the modules when their sources changed since the last build. Exit status."""
    _, every = _built()
    digest = sources_digest()
    if every and _manifest() == digest and not force:
        return 0  # quiet: ./dev runs this before every command
    missing = compiler_missing()
    if missing:
        print(f"native: not compiling ({missing}); the Python decoders will run", file=sys.stderr)
        return 0
    print("native: compiling the decoders with mypyc (about a minute; once per change)")
    MANIFEST.unlink(missing_ok=True)  # a failed build must not look current
    env = {**os.environ, "LANTERN_COMPILE": "1"}
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", str(os.cpu_count())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print("native: compiling failed; see above", file=sys.stderr)
        return 1
    # setup.py's build_ext wrote the manifest, after the build succeeded
    print("native: compiled " + ", ".join(m.rsplit(".", 1)[1] for m in MODULES))
    return 0


def clean() -> int:
    """Remove the extensions and the manifest (the Python sources run again)."""
    removed = 0
    for module in MODULES:
        for p in extension_paths(module):
            p.unlink()
            removed += 1
    for p in group_library_paths():
        p.unlink()
        removed += 1
    MANIFEST.unlink(missing_ok=True)
    print(f"native: removed {removed} compiled file(s)")
    return 0


def describe() -> str:
    """What this process runs, in a few words for ``lantern --version``."""
    return {
        "compiled": "compiled",
        "pure": "Python, no compiled build",
        "disabled": f"Python, {PURE_ENV} is set",
        "stale": "Python, the compiled build is stale",
    }[_State.value]


def status() -> str:
    some, every = _built()
    if not some:
        return "pure Python (no compiled decoders built)"
    if every and _manifest() == sources_digest():
        return "compiled decoders, up to date" + (
            f" (not used: {PURE_ENV} is set)" if _State.value == "disabled" else ""
        )
    return "compiled decoders present but stale: the Python ones run"
