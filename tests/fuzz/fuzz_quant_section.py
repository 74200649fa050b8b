"""config.json of a real medrt-quant directory, bytes mutated -> format.validate: the module
types or QuantFormatError naming what is wrong, never another exception."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from medrt_train.quant.format import validate
    from medrt_train.quant.types import QuantFormatError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.common import run

WORK = Path(tempfile.mkdtemp(prefix="medrt_fuzz_quant_"))


def _quantized_dir() -> Path:
    out = WORK / "quantized"
    if not out.is_dir():
        from helpers.tiny_models import build_tiny_model
        from medrt_train.quant.quantize import quantize_model
        from medrt_train.quant.recipes import load_recipe

        src = build_tiny_model("llama", "float32", False, WORK / "src")
        quantize_model(src, out, load_recipe("int4"), "rtn", log=lambda _: None)
    return out


def seed(corpus: Path) -> None:
    (corpus / "int4-rtn-config.json").write_bytes((_quantized_dir() / "config.json").read_bytes())


def one_input(data: bytes) -> None:
    d = _quantized_dir()
    (d / "config.json").write_bytes(data)
    try:
        validate(d)
    except QuantFormatError:
        pass


if __name__ == "__main__":
    run("quant", seed, one_input)
