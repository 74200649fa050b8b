"""Format version 3 (docs/quantized-format.md): the int6 weight type, its packing on hand-made
bytes, round-to-nearest within half a step, the version rules, what a reader refuses, and
`medrt-train quantize --lm-head int6` on a tiny model."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers.quant_dirs import edited_copy, tiny_tied_llama
from medrt_train.quant.format import FORMAT_VERSION, FORMAT_VERSIONS, dequantized_state, validate
from medrt_train.quant.loader import load_dequantized
from medrt_train.quant.quantize import quantize_model
from medrt_train.quant.recipes import Recipe
from medrt_train.quant.types import (
    QuantFormatError,
    WeightType,
    dequantize,
    pack_int6,
    parse_type,
    quantize_rtn,
    stored_bytes,
    tensor_specs,
    unpack_int6,
)

TOKENS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
HEAD = "lm_head"


def _matrix(rows: int = 8, cols: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def test_int6_names_its_version_and_tensors() -> None:
    wt = parse_type("int6")
    assert wt == WeightType("int6", 64) == parse_type("int6-g64") == parse_type(" INT6 ", 64)
    assert str(wt) == "int6-g64" and wt.quantized and wt.format_version == 3
    assert wt.to_json() == {"type": "int6", "group_size": 64}
    assert (FORMAT_VERSION, FORMAT_VERSIONS) == (3, (1, 2, 3))
    for group in (32, 64, 128):
        assert parse_type(f"int6-g{group}") == parse_type("int6", group) == WeightType("int6",
                                                                                        group)
    assert tensor_specs(parse_type("int6-g32"), 4, 64) == {"qweight": ((4, 48), "U8"),
                                                           "scales": ((4, 2), "F16")}
    # 6.25 bits per weight at g64: 0.78 of an int8 head's bytes (1 byte + one f32 per row).
    out, cols = 49152, 1536
    assert stored_bytes(wt, out, cols) == out * (cols * 3 // 4 + cols // 64 * 2)
    assert stored_bytes(wt, out, cols) / stored_bytes(parse_type("int8"), out, cols) == \
        pytest.approx(0.78, abs=0.005)


@pytest.mark.parametrize("spec,message", [
    ("int6-g48", r"int6 group size 48 is not one of \(32, 64, 128\)"),
    ("int6-g16", r"int6 group size 16 is not one of \(32, 64, 128\)"),
    ("int6-mins", "only int4 stores mins, not int6"),
    ("int6-g64-mins", "only int4 stores mins, not int6"),
    ("int6-gx", "bad weight type"),
    ("int5", r"unknown weight type .*int6\[-g32\|-g64\|-g128\]"),
], ids=["int6-g48", "int6-g16", "int6-mins", "int6-g64-mins", "int6-gx", "int5"])
def test_bad_int6_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(QuantFormatError, match=message):
        parse_type(spec)


def test_int6_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 64, size=(7, 256), dtype=np.uint8)
    codes[0, :64] = np.arange(64)  # every code once
    packed = pack_int6(codes)
    assert packed.dtype == np.uint8 and packed.shape == (7, 192)
    np.testing.assert_array_equal(unpack_int6(packed), codes)
    # Wider integer codes (GPTQ keeps them in int16) pack the same.
    np.testing.assert_array_equal(pack_int6(codes.astype(np.int16)), packed)
    # Bytes 0..15 of every chunk are the 4-bit packing of the low nibbles; the high bits of
    # nibble byte j sit in one nibble of high byte 4 (j // 8) + j % 4 (the repacking property).
    chunks = packed.reshape(7, 8, 24)
    c = codes.reshape(7, 8, 32)
    for j in range(16):
        assert (chunks[:, :, j] == (c[:, :, j] & 15) | (c[:, :, j + 16] & 15) << 4).all()
        high = chunks[:, :, 16 + 4 * (j // 8) + j % 4] >> (4 * (j // 4 % 2)) & 15
        assert (high == (c[:, :, j] >> 4) | (c[:, :, j + 16] >> 4) << 2).all()


def test_int6_pack_refuses_bad_codes_and_lengths() -> None:
    with pytest.raises(QuantFormatError, match="0..63"):
        pack_int6(np.full((1, 32), 64, dtype=np.uint8))
    with pytest.raises(QuantFormatError, match="multiple of 32"):
        pack_int6(np.zeros((1, 48), dtype=np.uint8))
    with pytest.raises(QuantFormatError, match="chunks of 24 bytes"):
        unpack_int6(np.zeros((1, 32), dtype=np.uint8))


# One chunk of 32 inputs, hand-made: low nibbles 0..15 then 15..0 (as test_types.py's 4-bit
# case), and high bits chosen so that the four 2-bit fields of every high byte are a different
# permutation of 0..3: a field or byte in the wrong place changes the bytes.
HIGH = [0, 1, 2, 3, 2, 3, 0, 1, 3, 2, 1, 0, 1, 0, 3, 2,
        1, 2, 3, 0, 3, 0, 1, 2, 2, 1, 0, 3, 0, 3, 2, 1]
LOW = list(range(16)) + list(range(15, -1, -1))
CHUNK_CODES = [h << 4 | lo for h, lo in zip(HIGH, LOW)]
CHUNK_BYTES = [0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87,
               0x78, 0x69, 0x5A, 0x4B, 0x3C, 0x2D, 0x1E, 0x0F,
               # byte 16 + k, k = 4v + t: bits 0-1 c[8v+t] >> 4, bits 2-3 c[16+8v+t] >> 4,
               # bits 4-5 c[8v+4+t] >> 4, bits 6-7 c[16+8v+4+t] >> 4. Byte 16: c[0] = 0x00,
               # c[16] = 0x1F, c[4] = 0x24, c[20] = 0x3B -> 0 | 1 << 2 | 2 << 4 | 3 << 6 = 0xE4.
               0xE4, 0x39, 0x4E, 0x93, 0x1B, 0xC6, 0xB1, 0x6C]


def test_int6_packing_matches_the_spec_bit_positions() -> None:
    assert CHUNK_CODES[:4] == [0x00, 0x11, 0x22, 0x33] and CHUNK_CODES[16] == 0x1F
    codes = np.array([CHUNK_CODES], dtype=np.uint8)
    packed = pack_int6(codes)
    assert packed.shape == (1, 24)
    assert packed[0].tolist() == CHUNK_BYTES
    np.testing.assert_array_equal(unpack_int6(np.array([CHUNK_BYTES], np.uint8)), codes)
    # Two chunks: each packs on its own, in order.
    two = np.array([CHUNK_CODES + CHUNK_CODES[::-1]], dtype=np.uint8)
    np.testing.assert_array_equal(pack_int6(two)[0, :24], packed[0])
    np.testing.assert_array_equal(pack_int6(two)[0, 24:], pack_int6(two[:, 32:])[0])


def test_int6_math_on_hand_made_bytes() -> None:
    # w = (code - 32) * scale, the scale of each group of 32.
    tensors = {"qweight": np.array([CHUNK_BYTES * 2], np.uint8),
               "scales": np.array([[0.5, -0.25]], np.float16)}
    w = dequantize(parse_type("int6-g32"), tensors)
    codes = np.array(CHUNK_CODES * 2, np.float32)
    np.testing.assert_array_equal(w[0, :32], (codes[:32] - 32) * 0.5)
    np.testing.assert_array_equal(w[0, 32:], (codes[32:] - 32) * -0.25)
    assert w[0, 0] == -16.0 and w[0, 3] == 9.5 and w[0, 16] == -0.5 and w[0, 46] == -7.5


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int6_rtn_within_half_a_step(group: int) -> None:
    wt = parse_type(f"int6-g{group}")
    w = _matrix()
    w[3, :group] = 0.0  # a zero group
    t = quantize_rtn(wt, w)
    assert set(t) == {"qweight", "scales"}
    assert t["qweight"].dtype == np.uint8 and t["qweight"].shape == (8, 192)
    assert t["scales"].dtype == np.float16 and t["scales"].shape == (8, 256 // group)
    absmax = np.abs(w).reshape(8, -1, group).max(axis=2)
    want = np.where(absmax > 0, (absmax / np.float32(31)).astype(np.float16), np.float16(1))
    np.testing.assert_array_equal(t["scales"], want)
    codes = unpack_int6(t["qweight"])
    assert codes.min() >= 1 and codes.max() <= 63  # symmetric: RTN never needs code 0
    assert (codes[3, :group] == 32).all()
    step = np.repeat(t["scales"].astype(np.float32), group, axis=1)
    err = np.abs(dequantize(wt, t) - w)
    assert (err <= step / 2 * (1 + 1e-6)).all()
    assert (err / step).max() > 0.4  # and it does quantize
    # The codes are the spec's: clip(round(w / f32(scale)) + 32, 0, 63), half to even.
    np.testing.assert_array_equal(codes, np.clip(np.round(w / step) + 32, 0, 63))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return tiny_tied_llama(tmp_path_factory.mktemp("v3") / "src")


@pytest.fixture(scope="module")
def int6_dir(src: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v3") / "int6"
    recipe = Recipe("q4", default=parse_type("int4-g32"), lm_head=parse_type("int6"))
    quantize_model(src, out, recipe, "rtn", log=lambda _: None)
    return out


def test_an_int6_directory_is_version_3(src: Path, int6_dir: Path) -> None:
    config = json.loads((int6_dir / "config.json").read_text())
    section = config["quantization"]
    assert section["version"] == 3 and config["tie_word_embeddings"] is False
    assert section["modules"][HEAD] == {"type": "int6", "group_size": 64, "shape": [128, 64]}
    types = validate(int6_dir)
    assert types[HEAD] == parse_type("int6-g64")
    assert types["model.layers.0.mlp.up_proj"] == parse_type("int4-g32")
    # The head is the source's (tied) embedding within half a step.
    from safetensors.numpy import load_file

    source = load_file(src / "model.safetensors")["model.embed_tokens.weight"]
    stored = load_file(int6_dir / "model.safetensors")
    assert stored[f"{HEAD}.qweight"].shape == (128, 48)
    head = dequantized_state(int6_dir)[f"{HEAD}.weight"]
    step = np.repeat(stored[f"{HEAD}.scales"].astype(np.float32), 64, axis=1)
    assert (np.abs(head - source) <= step / 2 * (1 + 1e-6)).all()
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        ref = original(TOKENS).logits
        got = load_dequantized(int6_dir)(TOKENS).logits
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_a_directory_without_int6_keeps_its_lower_version(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    recipe = Recipe("q", default=parse_type("int4-g32"), lm_head=parse_type("int8-g32"))
    quantize_model(src, out, recipe, "rtn", log=lambda _: None)
    assert json.loads((out / "config.json").read_text())["quantization"]["version"] == 2


@pytest.mark.parametrize("version", [1, 2])
def test_int6_in_an_older_version_is_refused(int6_dir: Path, tmp_path: Path,
                                             version: int) -> None:
    out = edited_copy(int6_dir, tmp_path / "old", lambda q: q.update(version=version))
    with pytest.raises(QuantFormatError,
                       match=f"module {HEAD}: int6 needs quantization.version 3"):
        validate(out)


@pytest.mark.parametrize("entry,message", [
    ({"type": "int6", "shape": [128, 64]}, "int6 needs 'group_size'"),
    ({"type": "int6", "group_size": 48, "shape": [128, 64]}, "int6 group size 48 is not one of"),
    ({"type": "int6", "group_size": 64, "shape": [128, 64], "offset": "mins"},
     "only int4 stores mins"),
    ({"type": "int6", "group_size": 128, "shape": [128, 64]},
     "group size 128 does not divide the input dimension 64"),
], ids=["no group_size", "group 48", "mins", "group 128"])
def test_int6_entry_refusals_name_the_module(int6_dir: Path, tmp_path: Path, entry: dict,
                                             message: str) -> None:
    out = edited_copy(int6_dir, tmp_path / "bad", lambda q: q["modules"].update({HEAD: entry}))
    with pytest.raises(QuantFormatError, match=f"module {HEAD}: .*{message}"):
        validate(out)


def test_the_spec_form_of_an_int6_entry_is_read(int6_dir: Path, tmp_path: Path) -> None:
    out = edited_copy(int6_dir, tmp_path / "spec", lambda q: q["modules"].update(
        {HEAD: {"type": "int6-g64", "shape": [128, 64]}}))
    assert validate(out)[HEAD] == parse_type("int6-g64")


@pytest.mark.parametrize("suffix,shape,message", [
    ("qweight", (128, 32), r"qweight is U8\[128, 32\], expected U8\[128, 48\]"),
    ("qweight", (128, 64), r"qweight is U8\[128, 64\], expected U8\[128, 48\]"),
    ("scales", (128, 2), r"scales is F16\[128, 2\], expected F16\[128, 1\]"),
], ids=["qweight as int4", "qweight too long", "scales of group 32"])
def test_an_int6_tensor_of_the_wrong_length_is_refused(int6_dir: Path, tmp_path: Path,
                                                       suffix: str, shape: tuple,
                                                       message: str) -> None:
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "len"
    shutil.copytree(int6_dir, out)
    tensors = load_file(out / "model.safetensors")
    tensors[f"{HEAD}.{suffix}"] = np.zeros(shape, tensors[f"{HEAD}.{suffix}"].dtype)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantFormatError, match=rf"module {HEAD}: tensor {HEAD}\.{message}"):
        validate(out)


def test_an_int6_body_through_gptq(src: Path, tmp_path: Path) -> None:
    from medrt_train.quant.gptq import GPTQOptions

    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(5))
    info = {"data": "unit", "source": "random", "samples": 8, "seq_len": 32, "sha256": "x"}
    out, rtn = tmp_path / "gptq", tmp_path / "rtn"
    recipe = Recipe("q6", default=parse_type("int6-g32"))
    quantize_model(src, out, recipe, "gptq", calib, info, GPTQOptions(block_size=32),
                   log=lambda _: None)
    quantize_model(src, rtn, recipe, "rtn", log=lambda _: None)
    assert json.loads((out / "config.json").read_text())["quantization"]["version"] == 3
    assert validate(out)["model.layers.0.mlp.down_proj"] == parse_type("int6-g32")
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)

    def error(path: Path) -> float:
        with torch.no_grad():
            return float((load_dequantized(path)(calib).logits
                          - original(calib).logits).pow(2).mean())
    assert error(out) < 0.7 * error(rtn)


CALIB_TEXT = "\n\n".join([
    "The patient reports chest pain radiating to the left arm.",
    "Metformin is a first-line medication for type 2 diabetes.",
    "Hypertension is diagnosed when blood pressure stays above 140/90 mmHg.",
    "Vaccination prevents influenza and reduces hospital admissions.",
] * 4)


def test_quantize_cli_int4_recipe_with_an_int6_lm_head(tiny_llama: Path, tmp_path: Path,
                                                      capsys) -> None:
    from medrt.models.weight_info import weight_summary
    from medrt_train.cli import main
    from safetensors.numpy import load_file

    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama), str(out), "--recipe", "int4", "--lm-head", "int6",
                 "--calib-data", str(calib), "--calib-samples", "4", "--calib-seq-len", "16",
                 "--block-size", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "gptq"
    assert report["modules_by_type"]["int6-g64"] == 1
    assert report["modules_by_type"]["int4-g64"] == 14  # 2 layers x 7 linear layers

    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["version"] == 3 and config["tie_word_embeddings"] is False
    types = validate(out)
    assert types[HEAD] == parse_type("int6-g64")
    assert weight_summary(out).types["int6-g64"] == 1

    # The head (the source's tied embedding) comes back with a 6-bit rounding error: about
    # uniform within half a step, so its mean square is scale^2 / 12 (relative error ~2% on
    # Gaussian rows of 64), between int8's and int4's.
    source = load_file(tiny_llama / "model.safetensors")["model.embed_tokens.weight"]
    head = dequantized_state(out)[f"{HEAD}.weight"]
    stored = load_file(out / "model.safetensors")
    step = np.repeat(stored[f"{HEAD}.scales"].astype(np.float32), 64, axis=1)
    err = head - source
    assert (np.abs(err) <= step / 2 * (1 + 1e-6)).all()
    assert np.mean(err**2) == pytest.approx(np.mean(step**2) / 12, rel=0.1)
    rel = np.linalg.norm(err) / np.linalg.norm(source)

    def rtn_rel(spec: str) -> float:
        wt = parse_type(spec)
        return float(np.linalg.norm(dequantize(wt, quantize_rtn(wt, source)) - source)
                     / np.linalg.norm(source))
    assert 0.01 < rel < 0.04
    assert rtn_rel("int8") < rel < rtn_rel("int4-g64") / 3

    # --dry-run sizes the same recipe from config.json alone.
    assert main(["quantize", str(tiny_llama), "--recipe", "int4", "--lm-head", "int6",
                 "--dry-run"]) == 0
    assert "| int6-g64 |" in capsys.readouterr().out
