"""The checked-in generated modules match the .proto (``python -m collector.codegen``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.codegen import API_DIR, GENERATED, generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        assert (API_DIR / name).read_text() == fresh, (
            f"collector/api/{name} is stale: run `python -m collector.codegen`"
        )
