"""GGUF import at the file's own precision: Q4_0, Q4_1 and Q8_0 blocks become medrt-quant
tensors bit for bit (checked against the `gguf` package's own dequantization, through
medrt_train's reference dequantizer), other types are dequantized with a warning, and a
truncated block is refused with the tensor's name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from helpers.tiny_models import build_tiny_model
from medrt.errors import InvalidCheckpoint
from medrt.models.gguf_blocks import KEPT, split_blocks
from medrt.models.gguf_import import hf_name, import_gguf, unpermute_rope_rows
from medrt_train.quant.format import dequantized_state, validate
from medrt_train.quant.loader import load_dequantized
from medrt_train.quant.types import dequantize, parse_type
from safetensors.numpy import load_file
from test_gguf_import import IDS, write_gguf
from transformers import AutoModelForCausalLM

Q = gguf.GGMLQuantizationType
MEDRT_TYPE = {Q.Q4_0: "int4-g32", Q.Q4_1: "int4-g32-mins", Q.Q8_0: "int8-g32"}


def _random_blocks(qtype: Q, rows: int, blocks: int, seed: int) -> np.ndarray:
    """Arbitrary block bytes of `qtype` with finite f16 scales (and mins) of either sign."""
    rng = np.random.default_rng(seed)
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    n_f16 = 2 if qtype == Q.Q4_1 else 1
    halves = rng.standard_normal((rows, blocks, n_f16)).astype(np.float16) * np.float16(0.05)
    raw[:, :, : 2 * n_f16] = halves.view(np.uint8).reshape(rows, blocks, 2 * n_f16)
    return raw.reshape(rows, blocks * size)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_blocks_split_bit_exact(qtype: Q) -> None:
    rows, blocks = 5, 6
    raw = _random_blocks(qtype, rows, blocks, seed=int(qtype))
    tensors = split_blocks("blk.0.ffn_up.weight", raw, qtype, rows, blocks * 32)
    got = dequantize(parse_type(MEDRT_TYPE[qtype]), tensors)
    want = gguf.quants.dequantize(raw, qtype).reshape(rows, blocks * 32)
    assert got.dtype == np.float32 and want.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # The codes are the block's bytes as they are: nothing was recomputed.
    start = {Q.Q4_0: 2, Q.Q4_1: 4, Q.Q8_0: 2}[qtype]
    codes = raw.reshape(rows, blocks, -1)[:, :, start:].reshape(rows, -1)
    assert np.array_equal(tensors["qweight"].view(np.uint8), codes)


def test_a_truncated_block_is_named() -> None:
    raw = _random_blocks(Q.Q4_1, 2, 2, seed=1).reshape(-1)[:-7]
    with pytest.raises(InvalidCheckpoint, match=r"GGUF tensor 'blk.3.attn_q.weight': Q4_1 data "
                                                r"is 73 bytes, expected 80"):
        split_blocks("blk.3.attn_q.weight", raw, Q.Q4_1, 2, 64)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plain_rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    root = tmp_path_factory.mktemp("gguf_q")
    return build_tiny_model("llama", "float32", False, root / "llama", **plain_rope)


def _reference_state(path: Path) -> dict[str, np.ndarray]:
    """Every GGUF tensor dequantized by the gguf package, under its Hugging Face name, with
    llama.cpp's q/k row permutation undone (4 heads, 2 KV heads: the tiny model's)."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        name = hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            [int(d) for d in reversed(t.shape)])
        if ".q_proj." in name:
            w = unpermute_rope_rows(w, 4)
        elif ".k_proj." in name:
            w = unpermute_rope_rows(w, 2)
        out[name] = w.astype(np.float32)
    return out


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_import_keeps_blocks_bit_exact(llama: Path, tmp_path: Path, qtype: Q) -> None:
    path = write_gguf(llama, tmp_path / "m.gguf", qtype)
    out = import_gguf(path, tmp_path / "out")
    section = json.loads((out / "config.json").read_text())["quantization"]
    assert section["version"] == KEPT[qtype].version
    assert section["method"]["name"] == "gguf" and section["method"]["source"] == "m.gguf"
    types = validate(out)  # the reference validator accepts it
    assert types["model.layers.1.mlp.down_proj"] == parse_type(MEDRT_TYPE[qtype])
    assert types["model.embed_tokens"] == parse_type(MEDRT_TYPE[qtype])
    assert types["model.norm"] == parse_type("f32")
    stored = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" not in stored
    assert stored["model.layers.0.self_attn.q_proj.qweight"].dtype == (
        np.int8 if qtype == Q.Q8_0 else np.uint8)

    got, want = dequantized_state(out), _reference_state(path)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert np.array_equal(got[name].view(np.uint32), w.view(np.uint32)), name


def test_kept_model_computes_what_the_dequantized_import_computes(llama: Path,
                                                                   tmp_path: Path) -> None:
    path = write_gguf(llama, tmp_path / "m.gguf", Q.Q4_1)
    kept = import_gguf(path, tmp_path / "kept")
    f32 = import_gguf(path, tmp_path / "f32", dtype="f32")
    assert "quantization" not in json.loads((f32 / "config.json").read_text())
    ids = torch.tensor([IDS])
    with torch.no_grad():
        a = load_dequantized(kept)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(f32, dtype=torch.float32)(ids).logits
    assert torch.equal(a, b)
    size = sum(f.stat().st_size for f in kept.glob("*.safetensors"))
    assert size < 0.4 * sum(f.stat().st_size for f in f32.glob("*.safetensors"))


def test_other_types_are_dequantized_with_a_warning(llama: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def qtype_for(name: str) -> Q:
        return Q.Q5_0 if ".mlp." in name else Q.Q8_0
    path = write_gguf(llama, tmp_path / "m.gguf", qtype_for=qtype_for)
    with caplog.at_level(logging.WARNING, logger="medrt.models.gguf_import"):
        out = import_gguf(path, tmp_path / "out")
    assert "6 Q5_0 tensors have no medrt type and are dequantized to f16" in caplog.text
    types = validate(out)
    assert types["model.layers.0.mlp.up_proj"] == parse_type("f16")
    assert types["model.layers.0.self_attn.o_proj"] == parse_type("int8-g32")
    want = _reference_state(path)["model.layers.0.mlp.up_proj.weight"]
    got = load_file(str(out / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert got.dtype == np.float16 and np.array_equal(got, want.astype(np.float16))


def test_a_truncated_file_is_refused_with_the_tensor_name(llama: Path, tmp_path: Path) -> None:
    path = write_gguf(llama, tmp_path / "m.gguf", Q.Q4_1)
    last = gguf.GGUFReader(path).tensors[-1]
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: last.data_offset + last.n_bytes - 5])
    with pytest.raises(InvalidCheckpoint, match=f"GGUF tensor '{last.name}': .* the file is "
                                                "truncated"):
        import_gguf(cut, tmp_path / "out")
