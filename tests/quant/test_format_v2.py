"""Format version 2 (docs/quantized-format.md): int8 with group scales (GGUF Q8_0) and int4
with mins (GGUF Q4_1), their math on hand-made bytes, a directory of each through the
validator and the dequantizing loader, and what a reader refuses."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers.quant_dirs import edit_quant_section, edited_copy, tiny_tied_llama
from medrt_train.quant.format import dequantized_state, validate
from medrt_train.quant.loader import load_dequantized
from medrt_train.quant.quantize import quantize_model
from medrt_train.quant.recipes import Recipe
from medrt_train.quant.types import (
    QuantFormatError,
    dequantize,
    pack_nibbles,
    parse_type,
    quantize_rtn,
    tensor_specs,
)

TOKENS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
UP = "model.layers.0.mlp.up_proj"


def _matrix(rows: int = 8, cols: int = 128) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)


def test_types_name_their_version_and_tensors() -> None:
    assert str(parse_type("int8", 32)) == "int8-g32" and parse_type("int8-g32").format_version == 2
    assert parse_type("int8").format_version == 1
    q41 = parse_type("int4-g32-mins")
    assert q41 == parse_type("int4", 32, mins=True) and str(q41) == "int4-g32-mins"
    assert q41.to_json() == {"type": "int4", "group_size": 32, "offset": "mins"}
    assert tensor_specs(q41, 4, 64) == {"qweight": ((4, 32), "U8"), "scales": ((4, 2), "F16"),
                                        "mins": ((4, 2), "F16")}
    assert tensor_specs(parse_type("int8-g32"), 4, 64)["scales"] == ((4, 2), "F16")


def test_int8_grouped_math_on_hand_made_bytes() -> None:
    codes = np.arange(-32, 32, dtype=np.int8).reshape(1, 64)
    scales = np.array([[0.5, -0.25]], dtype=np.float16)
    w = dequantize(parse_type("int8-g32"), {"qweight": codes, "scales": scales})
    assert w[0, 0] == -16.0 and w[0, 31] == -0.5 and w[0, 32] == -0.0 and w[0, 63] == -7.75


def test_int4_mins_math_on_hand_made_bytes() -> None:
    codes = np.tile(np.arange(16, dtype=np.uint8), 2).reshape(1, 32)
    tensors = {"qweight": pack_nibbles(codes), "scales": np.array([[0.125]], np.float16),
               "mins": np.array([[-1.0]], np.float16)}
    w = dequantize(parse_type("int4-g32-mins"), tensors)
    np.testing.assert_array_equal(w[0], codes[0] * np.float32(0.125) - 1)
    assert w[0, 15] == 0.875 and w[0, 16] == -1.0


@pytest.mark.parametrize("spec", ["int8-g32", "int8-g128", "int4-g32-mins", "int4-g64-mins"])
def test_rtn_error_within_half_a_step(spec: str) -> None:
    wt = parse_type(spec)
    w = _matrix()
    t = quantize_rtn(wt, w)
    err = np.abs(dequantize(wt, t) - w).reshape(8, -1, wt.group_size)
    step = t["scales"].astype(np.float32)[:, :, None]
    # Half a step, plus the f16 rounding of the scale (and of the min) times the code range.
    slack = 127 if wt.name == "int8" else 15 + np.abs(t["mins"][:, :, None] / step).max()
    assert (err <= step * (0.5 + slack * 2.0**-11)).all(), spec
    assert err.max() > 0.2 * step.max()  # and it does quantize


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return tiny_tied_llama(tmp_path_factory.mktemp("v2") / "src")


def test_grouped_int8_directory_is_version_2(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    quantize_model(src, out, Recipe("q8", default=parse_type("int8-g32")), "rtn",
                   log=lambda _: None)
    section = json.loads((out / "config.json").read_text())["quantization"]
    assert section["version"] == 2
    assert section["modules"][UP] == {"type": "int8", "group_size": 32, "shape": [128, 64]}
    assert validate(out)[UP] == parse_type("int8-g32")
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ref = _logits(original)
    assert (_logits(load_dequantized(out)) - ref).abs().max() < 0.02 * ref.abs().max()

    edit_quant_section(out, lambda q: q.update(version=1))
    with pytest.raises(QuantFormatError,
                       match="module .*: int8 with a group size needs quantization.version 2"):
        validate(out)


@pytest.fixture(scope="module")
def int4_dir(src: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "int4"
    quantize_model(src, out, Recipe("q4", default=parse_type("int4-g32")), "rtn",
                   log=lambda _: None)
    return out


def _with_mins(int4_dir: Path, tmp_path: Path, version: int = 2, rename: bool = True) -> Path:
    """int4_dir with UP's zeros stored as mins (min = -zero * scale, in f16)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "mins"
    shutil.copytree(int4_dir, out)
    tensors = load_file(out / "model.safetensors")
    zeros = tensors.pop(f"{UP}.zeros")
    scales = tensors[f"{UP}.scales"].astype(np.float32)
    name = f"{UP}.mins" if rename else f"{UP}.zeros"
    tensors[name] = (-zeros.astype(np.float32) * scales).astype(np.float16)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})

    def edit(q: dict) -> None:
        q["version"] = version
        q["modules"][UP]["offset"] = "mins"
    edit_quant_section(out, edit)
    return out


def test_int4_with_mins_reads_as_code_times_scale_plus_min(int4_dir: Path,
                                                           tmp_path: Path) -> None:
    out = _with_mins(int4_dir, tmp_path)
    assert validate(out)[UP] == parse_type("int4-g32-mins")
    from safetensors.numpy import load_file

    t = load_file(out / "model.safetensors")
    got = dequantized_state(out)[f"{UP}.weight"]
    want = dequantize(parse_type("int4-g32-mins"),
                      {s: t[f"{UP}.{s}"] for s in ("qweight", "scales", "mins")})
    np.testing.assert_array_equal(got, want)
    # Same grid as the zeros it came from, up to the f16 rounding of the min.
    before = dequantized_state(int4_dir)[f"{UP}.weight"]
    scale = np.repeat(t[f"{UP}.scales"].astype(np.float32), 32, axis=1)
    assert (np.abs(got - before) <= scale * 2.0**-7).all()


@pytest.mark.parametrize("case,message", [
    ("version 1", "int4 with 'mins' needs quantization.version 2"),
    ("zeros kept", f"module {UP}: tensor {UP}.mins is missing"),
])
def test_mins_refusals(int4_dir: Path, tmp_path: Path, case: str, message: str) -> None:
    out = _with_mins(int4_dir, tmp_path, version=1 if case == "version 1" else 2,
                     rename=case != "zeros kept")
    with pytest.raises(QuantFormatError, match=message):
        validate(out)


@pytest.mark.parametrize("entry,message", [
    ({"type": "int4", "shape": [128, 64]}, "int4 needs 'group_size'"),
    ({"type": "int4", "group_size": 32, "shape": [128, 64], "offset": "max"},
     "'offset' must be"),
    ({"type": "int8", "group_size": 32, "shape": [128, 64], "offset": "mins"},
     "only int4 stores mins"),
    ({"type": "int4", "group_size": 48, "shape": [128, 64]}, "not one of"),
])
def test_entry_refusals_name_the_module(int4_dir: Path, tmp_path: Path, entry: dict,
                                        message: str) -> None:
    out = edited_copy(int4_dir, tmp_path / "bad", lambda q: q["modules"].update({UP: entry}))
    with pytest.raises(QuantFormatError, match=f"module {UP}: .*{message}"):
        validate(out)


def test_a_bias_of_the_wrong_length_is_refused(int4_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "bias"
    shutil.copytree(int4_dir, out)
    tensors = load_file(out / "model.safetensors")
    tensors[f"{UP}.bias"] = np.zeros(127, np.float32)
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(QuantFormatError, match=rf"module {UP}: tensor {UP}.bias is F32\[127\]"):
        validate(out)
