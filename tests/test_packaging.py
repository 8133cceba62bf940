"""A built wheel carries every data file the code reads (catalog, shared infrastructure, sample
capture, proto), so an installed Lantern works outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a clean copy: a build directory left in the tree would lend the wheel files it lacks
    src = tmp_path_factory.mktemp("src") / "lantern"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
            ".hypothesis", "*.so", "native.manifest",
        ),
    )  # fmt: skip
    env = {**os.environ, "LANTERN_COMPILE": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(src)],
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("lantern-*.whl")
    return found


def test_the_wheel_holds_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    catalog = {p.name for p in (ROOT / "signatures" / "catalog").glob("*.yaml")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("signatures/catalog/")} == catalog
    for needed in (
        "signatures/shared_infra.yaml",
        "signatures/schema.md",
        "lantern/samples/ai-sample.pcapng",
        "collector/proto/lantern/v1/lantern.proto",
    ):
        assert needed in names


def test_an_installed_lantern_scans_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    sample = site / "lantern" / "samples" / "ai-sample.pcapng"
    code = (
        "import sys, agent; from lantern.cli import main;"
        f"assert agent.__file__.startswith({str(site)!r}), agent.__file__;"
        "sys.argv = ['lantern', 'scan', sys.argv[1]]; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(sample)],
        cwd=tmp_path,  # not the source tree
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "27 AI sightings of 11 service(s)" in proc.stdout
