"""Generate the checked-in protobuf and gRPC modules in collector/api from the .proto.

Run ``python -m collector.codegen`` after editing ``collector/proto/lantern/v1/lantern.proto``;
a test regenerates into a temporary directory and fails when the checked-in files are stale.
Needs ``grpcio-tools`` (a development tool, never a runtime dependency).
"""

from __future__ import annotations

import importlib
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"
PROTO = PROTO_ROOT / "lantern" / "v1" / "lantern.proto"
API_DIR = HERE / "api"
GENERATED = ("lantern_pb2.py", "lantern_pb2.pyi", "lantern_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into ``out_dir`` (flat, relative imports) and return them."""
    protoc = importlib.import_module("grpc_tools.protoc")  # a dev tool, untyped

    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(str(protoc.__file__)).resolve().parent / "_proto")
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO.relative_to(PROTO_ROOT)),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (Path(tmp) / "lantern" / "v1" / name).read_text()
            # The package is collector.api, not lantern.v1 (``lantern`` is our CLI package).
            text = re.sub(
                r"^from lantern\.v1 import lantern_pb2",
                "from . import lantern_pb2",
                text,
                flags=re.M,
            )
            path = out_dir / name
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else API_DIR):
        print(p)
