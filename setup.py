"""Builds the C extensions of the packet hot path with mypyc; everything else is pyproject.toml.

LANTERN_COMPILE: "auto" (default) compiles when a C compiler, the Python headers and mypyc are
there, "1" insists, "0" never (the same modules then run as Python). See agent/native.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

_spec = importlib.util.spec_from_file_location(
    "_lantern_native", Path(__file__).parent / "agent" / "native.py"
)
assert _spec is not None and _spec.loader is not None
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)


# the digest of the sources mypyc compiled, read when it read them
_compiled_digest: list[str] = []


class _BuildExt(build_ext):  # type: ignore[misc]
    """Records the compiled sources' digest (agent/native.py) once the extensions are built,
    and only then: a failed build must not make older extensions look current."""

    def run(self) -> None:
        super().run()
        if not _compiled_digest:
            return
        # in place beside the sources, or into the build tree a wheel is made from (never the
        # source tree then: extensions built in place earlier would pass for this build)
        base = native.ROOT if self.inplace else Path(self.build_lib)
        target = base / native.MANIFEST.relative_to(native.ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_compiled_digest[0] + "\n")


def _extensions() -> list[object]:
    mode = os.environ.get("LANTERN_COMPILE", "auto")
    if mode == "0":
        return []
    missing = native.compiler_missing()
    if missing:
        if mode == "1":
            sys.exit(f"LANTERN_COMPILE=1 but {missing}")
        print(f"lantern: not compiling the decoders ({missing})", file=sys.stderr)
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 - only when compiling

    paths = [str(native.source_path(m).relative_to(native.ROOT)) for m in native.MODULES]
    _compiled_digest.append(native.sources_digest())
    exts: list[object] = mypycify(paths, opt_level="3", group_name=native.GROUP)
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
