"""The ``medrt-bench`` command: runs the C++ benchmark binary (pp512, tg128, batched decode)
that the wheel installs inside the package, so that it is on PATH like ``medrt``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def binary() -> Path:
    """Where the wheel puts the benchmark binary (CMake installs it to medrt/bin)."""
    return Path(__file__).resolve().parent / "bin" / "medrt-bench"


def main() -> int:
    exe = binary()
    if not os.access(exe, os.X_OK):
        print(f"medrt-bench: {exe} is not in this install. In a source checkout build it with\n"
              "  cmake -S . -B build/bench -G Ninja -DMEDRT_BUILD_BENCH=ON && "
              "cmake --build build/bench --target medrt-bench\n"
              "and run build/bench/cpp/medrt-bench -m MODEL_DIR.", file=sys.stderr)
        return 2
    os.execv(exe, [str(exe), *sys.argv[1:]])
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
