"""The mypyc build of the packet hot path: same results as the Python, never run when stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from agent import native

ROOT = Path(__file__).resolve().parents[2]
LANTERN = str(Path(sys.executable).with_name("lantern"))


def _scan(files: list[Path], pure: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    return subprocess.run(
        [LANTERN, "scan", "--all", "--json", "--no-progress", "--jobs", "1", *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_this_run_uses_the_compiled_decoders_where_they_can_be_built() -> None:
    """`./dev test` builds them; without this, the suite could test only the Python ones."""
    missing = native.compiler_missing()
    if missing:
        pytest.skip(f"no compiled build possible here: {missing}")
    assert native.state() == "compiled", native.status()
    import agent.pipeline

    assert not agent.pipeline.__file__.endswith(".py")


def test_compiled_and_python_decoders_give_the_same_scan(pcap_dir: Path) -> None:
    if native.state() != "compiled":
        pytest.skip(f"no compiled build to compare with ({native.describe()})")
    files = sorted(pcap_dir.glob("*.pcap*"))
    assert len(files) > 30
    compiled, python = _scan(files, pure=False), _scan(files, pure=True)
    assert compiled.returncode == python.returncode
    assert compiled.stderr == python.stderr
    assert compiled.stdout.count("\n") > 500
    assert compiled.stdout == python.stdout


def test_version_says_which_decoders_run() -> None:
    for pure, expect in ((True, f"Python, {native.PURE_ENV} is set"), (False, native.describe())):
        env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
        if pure:
            env[native.PURE_ENV] = "1"
        out = subprocess.run(
            [LANTERN, "--version"], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert out.startswith("lantern ")
        assert f"(packet decoders: {expect})" in out


# -- the guard, on a copy of the package whose "extensions" are files that would fail to load --


def _copy_with_fake_build(tmp_path: Path, manifest: str | None) -> Path:
    """The agent package's sources in ``tmp_path``, with an unloadable file where each
    extension goes: importing any of them succeeds only if the guard picked the source."""
    shutil.copytree(
        ROOT / "agent",
        tmp_path / "agent",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "native.manifest"),
    )
    suffix = next(s for s in EXTENSION_SUFFIXES if s.startswith(".cpython"))
    for module in [*native.MODULES, native.GROUP + "__mypyc"]:
        base = tmp_path.joinpath(*module.split("."))
        base.with_name(base.name + suffix).write_bytes(b"not an ELF file")
    if manifest is not None:
        (tmp_path / "agent" / "native.manifest").write_text(manifest)
    return tmp_path


def _import_in(root: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env.update(env_extra)
    env["PYTHONPATH"] = str(root)
    code = (
        "import agent.native as n, agent.pipeline as p, agent.decode.packet as d;"
        "print(n.state(), p.__file__, d.__file__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=False
    )


def _digest_of(root: Path) -> str:
    code = "import agent.native as n; print(n.sources_digest())"
    env = {**os.environ, "PYTHONPATH": str(root), native.PURE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_a_build_older_than_its_sources_is_not_run(tmp_path: Path) -> None:
    root = _copy_with_fake_build(tmp_path, manifest=None)
    (root / "agent" / "native.manifest").write_text(_digest_of(root) + "\n")
    # an edit after the build: one source no longer matches what was compiled
    packet = root / "agent" / "decode" / "packet.py"
    packet.write_text(packet.read_text() + "\n# edited after the build\n")
    proc = _import_in(root, {})
    assert proc.returncode == 0, proc.stderr
    state, pipeline_file, packet_file = proc.stdout.split()
    assert state == "stale"
    # all or nothing: the unchanged modules do not run compiled either
    assert pipeline_file.endswith("pipeline.py") and packet_file.endswith("packet.py")
    assert "older than their sources" in proc.stderr


def test_a_build_with_a_module_missing_is_not_run(tmp_path: Path) -> None:
    root = _copy_with_fake_build(tmp_path, manifest=None)
    (root / "agent" / "native.manifest").write_text(_digest_of(root) + "\n")
    for ext in (root / "agent").glob("pipeline.*.so"):
        ext.unlink()
    proc = _import_in(root, {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "stale"


def test_the_environment_switch_runs_the_python_even_with_a_current_build(
    tmp_path: Path,
) -> None:
    root = _copy_with_fake_build(tmp_path, manifest=None)
    (root / "agent" / "native.manifest").write_text(_digest_of(root) + "\n")
    proc = _import_in(root, {native.PURE_ENV: "1"})
    assert proc.returncode == 0, proc.stderr
    state, pipeline_file, _ = proc.stdout.split()
    assert (state, Path(pipeline_file).name) == ("disabled", "pipeline.py")
    assert proc.stderr == ""
    # and without it, the (fake) current build is what Python would load: the guard let it be
    proc = _import_in(root, {})
    assert proc.returncode != 0
    assert "pipeline" in proc.stderr or "packet" in proc.stderr


@pytest.mark.slow
def test_a_failed_compile_leaves_no_manifest_behind(tmp_path: Path) -> None:
    """Otherwise extensions from an earlier build would pass for the sources that failed."""
    missing = native.compiler_missing()
    if missing:
        pytest.skip(f"no compiled build possible here: {missing}")
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    for pkg in ("agent", "signatures", "lantern", "collector", "policies"):
        shutil.copytree(
            ROOT / pkg,
            root / pkg,
            ignore=shutil.ignore_patterns("*.so", "__pycache__", "native.manifest"),
        )
    manifest = root / "agent" / "native.manifest"
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env.update(PYTHONPATH=str(root), CC="false")  # every compiler call fails
    proc = subprocess.run(
        [sys.executable, "-m", "agent.build_native", "build"],
        cwd=root, env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "compiling failed" in proc.stderr
    assert not manifest.exists()
