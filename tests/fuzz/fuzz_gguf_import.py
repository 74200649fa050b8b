"""A GGUF file from arbitrary bytes -> import_gguf: a model directory or InvalidCheckpoint,
never another exception."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from medrt.errors import InvalidCheckpoint
    from medrt.models.gguf_import import import_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.common import run

WORK = Path(tempfile.mkdtemp(prefix="medrt_fuzz_gguf_"))


def seed(corpus: Path) -> None:
    from helpers.tiny_models import build_tiny_model
    from test_gguf_import import write_gguf

    for arch in ("llama", "qwen2"):
        model = build_tiny_model(arch, "float32", False, WORK / arch)
        write_gguf(model, corpus / f"tiny-{arch}.gguf")


def one_input(data: bytes) -> None:
    path, out = WORK / "case.gguf", WORK / "out"
    path.write_bytes(data)
    shutil.rmtree(out, ignore_errors=True)
    try:
        import_gguf(path, out)
    except InvalidCheckpoint:
        pass


if __name__ == "__main__":
    run("gguf", seed, one_input)
