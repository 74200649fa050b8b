"""The engine's loader refuses a medrt-quant directory it cannot run at load, naming the module,
through medrt.LLM (the C++ LinearLoader: cpp/src/model/linear_loader.cpp), with the same rules
as the Python validator: both are run on each broken directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import medrt
import pytest
from medrt.errors import InvalidCheckpoint
from medrt.models import import_gguf
from medrt_train.quant.format import validate
from medrt_train.quant.types import QuantFormatError
from safetensors.numpy import load_file, save_file
from test_gguf_import import write_gguf

UP = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def q4(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 as a Q4_1 GGUF imported at its own precision (format version 2)."""
    root = tmp_path_factory.mktemp("q4")
    return import_gguf(write_gguf(tiny_qwen2, root / "m.gguf", gguf.GGMLQuantizationType.Q4_1),
                       root / "q4")


def _edit_section(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        edit(config["quantization"])
        (d / "config.json").write_text(json.dumps(config))
    return run


def _edit_tensors(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        tensors = load_file(d / "model.safetensors")
        edit(tensors)
        save_file(tensors, d / "model.safetensors")
    return run


def _set_entry(**entry: object) -> Callable[[Path], None]:
    return _edit_section(lambda q: q["modules"].__setitem__(UP, dict(entry)))


CASES = {
    "missing scales": (_edit_tensors(lambda t: t.pop(f"{UP}.scales")),
                       f"{UP}.scales is missing"),
    "wrong group size": (_set_entry(type="int4", group_size=64, shape=[128, 64], offset="mins"),
                         f"{UP}.scales is F16[128, 2], expected F16[128, 1]"),
    "group size not dividing in": (
        _set_entry(type="int4", group_size=128, shape=[128, 64], offset="mins"),
        "group size 128 does not divide the input dimension 64"),
    "unknown type": (_set_entry(type="q4_k", shape=[128, 64]), "unknown weight type 'q4_k'"),
    "version 99": (_edit_section(lambda q: q.update(version=99)), "version is 99"),
    "unclaimed tensor": (_edit_tensors(lambda t: t.update({f"{UP}.g_idx": t[f"{UP}.mins"]})),
                         f"{UP}.g_idx"),
    "packed length": (
        _edit_tensors(lambda t: t.update({f"{UP}.qweight": t[f"{UP}.qweight"][:, :31].copy()})),
        f"{UP}.qweight is U8[128, 31], expected U8[128, 32]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_and_validator_refuse_naming_the_module(q4: Path, tmp_path: Path,
                                                       case: str) -> None:
    edit, message = CASES[case]
    bad = tmp_path / "bad"
    shutil.copytree(q4, bad)
    edit(bad)
    with pytest.raises(InvalidCheckpoint) as engine_error:
        medrt.LLM(bad)
    assert message in str(engine_error.value)
    if case not in ("version 99", "unclaimed tensor"):
        assert f"module {UP}" in str(engine_error.value)
    with pytest.raises(QuantFormatError, match=UP if case != "version 99" else "version is 99"):
        validate(bad)
