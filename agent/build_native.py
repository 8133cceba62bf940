"""Compile, remove or report the mypyc build of the packet hot path (see agent/native.py).

python -m agent.build_native [build [--force] | clean | status]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent.native import build, clean, status


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "build":
        return build(force="--force" in argv)
    if cmd == "clean":
        return clean()
    if cmd == "status":
        print(status())
        return 0
    print("usage: python -m agent.build_native [build [--force] | clean | status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
