"""GGUF import: tiny random Llama / Qwen2 models written as GGUF the way llama.cpp's converter
writes them (q/k rows permuted for Llama, llama3 rope scaling as rope_freqs.weight, F32 or Q8_0
weights), imported back, and compared with the original Hugging Face model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import medrt
import numpy as np
import pytest
import torch
from helpers.tiny_models import build_tiny_model
from medrt.errors import InvalidCheckpoint
from medrt.models import gguf_import
from medrt.models.gguf_import import import_gguf, permute_rope_rows, unpermute_rope_rows
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

Q8_0 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32

# Hugging Face -> llama.cpp names, written out independently of the importer's own table.
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    parts = hf.split(".")  # model.layers.N.<rest>
    return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:])]}"


def _llama3_rope_factors(cfg: dict[str, Any], head_dim: int) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it from rope_parameters."""
    rp = cfg["rope_parameters"]
    factor, low, high = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    freqs = 1.0 / rp["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(model_dir: Path, path: Path, qtype: gguf.GGMLQuantizationType = F32,
               pre: str = "gpt2",
               qtype_for: Callable[[str], gguf.GGMLQuantizationType] | None = None) -> Path:
    """A GGUF of the Hugging Face model in model_dir, laid out as llama.cpp's converter does;
    2-d weights in `qtype`, or in `qtype_for(Hugging Face name)` when given."""
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = cfg["model_type"]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg["hidden_size"] // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab, specials = tok["model"]["vocab"], {t["content"] for t in tok["added_tokens"]}
    tokens = [f"[PAD{i}]" for i in range(cfg["vocab_size"])]
    types = [gguf.TokenType.USER_DEFINED] * cfg["vocab_size"]
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    w.add_chat_template(tok_cfg["chat_template"])

    if cfg["rope_parameters"].get("rope_type") == "llama3":
        w.add_rope_scaling_orig_ctx_len(cfg["rope_parameters"]["original_max_position_embeddings"])
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(cfg, head_dim))
    for name, t in load_file(str(model_dir / "model.safetensors")).items():
        t = t.astype(np.float32)
        if arch == "llama" and ".q_proj." in name:
            t = permute_rope_rows(t, n_heads)
        elif arch == "llama" and ".k_proj." in name:
            t = permute_rope_rows(t, n_kv)
        qt = qtype_for(name) if qtype_for else qtype
        if t.ndim == 2 and qt != F32:
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(t, qt), raw_dtype=qt)
        else:
            w.add_tensor(_gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf_hf")
    plain_rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    return {
        "llama": build_tiny_model("llama", "float32", False, root / "llama", **plain_rope),
        "llama3": build_tiny_model("llama", "float32", True, root / "llama3"),
        "qwen2": build_tiny_model("qwen2", "float32", False, root / "qwen2"),
    }


def _logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


IDS = [1, 5, 77, 300, 12, 9, 250, 41, 319, 3, 100, 64, 2, 7, 190, 33]


def test_permutation_round_trip() -> None:
    rng = np.random.default_rng(0)
    for n_heads, head_dim, cols in ((4, 16, 8), (2, 64, 3), (9, 64, 1)):
        w = rng.standard_normal((n_heads * head_dim, cols)).astype(np.float32)
        p = permute_rope_rows(w, n_heads)
        assert not np.array_equal(p, w)
        assert np.array_equal(unpermute_rope_rows(p, n_heads), w)
    # Within one head, llama.cpp interleaves the two rotary halves: row 2i is row i, 2i+1 is
    # row i + head_dim/2.
    w = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_rope_rows(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("name", ["llama", "llama3", "qwen2"])
def test_f32_import_is_exact(name: str, hf_models: dict[str, Path], tmp_path: Path) -> None:
    src = hf_models[name]
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf"), tmp_path / "out", dtype="f32")
    want = load_file(str(src / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32
        assert np.array_equal(got[k], want[k]), k
    cfg = json.loads((out / "config.json").read_text())
    ref = json.loads((src / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings", "rms_norm_eps"):
        assert cfg[key] == ref[key], key
    assert cfg["architectures"] == ref["architectures"]
    if name == "llama3":
        rp = ref["rope_parameters"]
        assert cfg["rope_scaling"] == {
            "rope_type": "llama3", "factor": rp["factor"], "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": rp["original_max_position_embeddings"]}
    assert torch.equal(_logits(out, IDS), _logits(src, IDS))


def test_q8_0_import_matches_dequantized_weights(hf_models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    src = hf_models["llama"]
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf", Q8_0), tmp_path / "out", dtype="f32")
    want = load_file(str(src / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    for k, w in want.items():
        expected = gguf.quants.dequantize(gguf.quants.quantize(w, Q8_0), Q8_0) if w.ndim == 2 else w
        assert np.array_equal(got[k], expected), k
        assert not np.array_equal(got[k], w) or w.ndim == 1
    diff = (_logits(out, IDS) - _logits(src, IDS)).abs().max().item()
    assert 0 < diff < 0.2  # 8-bit weights move the logits a little, never a lot


def test_default_dtype_is_f16_with_f32_norms(hf_models: dict[str, Path], tmp_path: Path) -> None:
    src = hf_models["qwen2"]
    # Q5_0 has no medrt type: the default dequantizes it to f16.
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf", gguf.GGMLQuantizationType.Q5_0),
                      tmp_path / "out")
    got = load_file(str(out / "model.safetensors"))
    assert got["model.layers.0.mlp.up_proj.weight"].dtype == np.float16
    assert got["model.layers.0.input_layernorm.weight"].dtype == np.float32
    assert got["model.layers.0.self_attn.q_proj.bias"].dtype == np.float32
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and "quantization" not in config


def test_bf16_output_rounds_to_nearest_even(hf_models: dict[str, Path], tmp_path: Path) -> None:
    src = hf_models["llama"]
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf"), tmp_path / "out", dtype="bf16")
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    conv = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(ref.state_dict().items(), conv.state_dict().items()):
        assert torch.equal(a, b), name


def test_sharded_output_loads(hf_models: dict[str, Path], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_import, "SHARD_BYTES", 40_000)
    src = hf_models["qwen2"]
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf"), tmp_path / "out", dtype="f32")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    for shard in shards:
        names = [k for k, v in index["weight_map"].items() if v == shard]
        data = sum(a.nbytes for a in load_file(str(out / shard)).values())
        assert len(names) == 1 or data <= 40_000, shard  # only a lone tensor may exceed it
    assert torch.equal(_logits(out, IDS), _logits(src, IDS))


def test_tokenizer_and_chat_template_survive(hf_models: dict[str, Path], tmp_path: Path) -> None:
    src = hf_models["qwen2"]
    out = import_gguf(write_gguf(src, tmp_path / "m.gguf"), tmp_path / "out", dtype="f32")
    ref, conv = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    texts = ["The patient reports chest pain radiating to the left arm.",
             "Metformin 500 mg twice daily", "Hello <|im_end|> world  \n\n 12345 ¿qué?"]
    for text in texts:
        assert conv.encode(text) == ref.encode(text), text
    chat = [{"role": "user", "content": "Is aspirin safe with warfarin?"}]
    assert conv.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == json.loads((src / "config.json").read_text())["eos_token_id"]


def _edited_gguf(src: Path, path: Path, arch: str | None = None,
                 extra_tensor: str | None = None, ints: dict[str, int] | None = None,
                 extra_merges: list[str] | None = None,
                 sampling: dict[str, float] | None = None) -> Path:
    """A GGUF with a different architecture name, an extra tensor, integer fields replaced,
    merges appended or general.sampling.* keys (top_k an int32, the others f32) added."""
    reader = gguf.GGUFReader(write_gguf(src, path.with_suffix(".orig.gguf")))
    w = gguf.GGUFWriter(str(path), arch or "llama")
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = f.contents()
        name = f.name.replace("llama.", f"{arch}.", 1) if arch else f.name
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if ints and name in ints:
            value = ints.pop(name)
        if extra_merges and name == "tokenizer.ggml.merges":
            value = list(value) + extra_merges
        w.add_key_value(name, value, vtype, sub_type=sub)
    for name, value in (ints or {}).items():
        w.add_uint32(name, value)
    for name, value in (sampling or {}).items():
        if name.endswith(".top_k"):
            w.add_int32(name, int(value))
        else:
            w.add_float32(name, value)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data))
    if extra_tensor:
        w.add_tensor(extra_tensor, np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_a_clear_error(hf_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    path = _edited_gguf(hf_models["llama"], tmp_path / "phi.gguf", arch="phi3")
    with pytest.raises(InvalidCheckpoint, match="architecture 'phi3' is not supported"):
        import_gguf(path, tmp_path / "out")


@pytest.mark.parametrize("key", ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
                                 "tokenizer.ggml.padding_token_id"])
def test_special_token_id_past_the_vocabulary(hf_models: dict[str, Path], tmp_path: Path,
                                              key: str) -> None:
    # The engine masks EOS by indexing the logits row: such an id must stop at import.
    vocab = json.loads((hf_models["llama"] / "config.json").read_text())["vocab_size"]
    path = _edited_gguf(hf_models["llama"], tmp_path / "t.gguf", ints={key: vocab + 7})
    with pytest.raises(InvalidCheckpoint, match=f"{vocab + 7} is outside the vocabulary"):
        import_gguf(path, tmp_path / "out")


def test_merge_of_a_token_outside_the_vocabulary(hf_models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    # tokenizers raises a bare Exception for it (found by fuzz_gguf_import): it must leave
    # the importer as an InvalidCheckpoint naming the file.
    path = _edited_gguf(hf_models["llama"], tmp_path / "m.gguf",
                        extra_merges=["\u0120zzqq \u0120xxyy"])
    with pytest.raises(InvalidCheckpoint, match=r"m\.gguf: the tokenizer failed while building "
                                                r"it from the GGUF's vocabulary"):
        import_gguf(path, tmp_path / "out")


def test_sampling_metadata_becomes_the_model_default(hf_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    # llama.cpp's converter writes generation_config's sampling as general.sampling.*.
    keys = {"general.sampling.temp": 0.6, "general.sampling.top_p": 0.95,
            "general.sampling.top_k": 20, "general.sampling.penalty_repeat": 1.05}
    path = _edited_gguf(hf_models["llama"], tmp_path / "s.gguf", sampling=keys)
    out = import_gguf(path, tmp_path / "out")
    gen = json.loads((out / "generation_config.json").read_text())
    assert {k: gen[k] for k in ("do_sample", "temperature", "top_p", "top_k",
                                "repetition_penalty")} == \
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
         "repetition_penalty": 1.05}
    with medrt.LLM(out) as llm:
        d = llm.get_default_sampling_params()
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.6, 0.95, 20, 1.05)
    plain = import_gguf(write_gguf(hf_models["llama"], tmp_path / "p.gguf"), tmp_path / "p")
    gen = json.loads((plain / "generation_config.json").read_text())
    assert "do_sample" not in gen and "temperature" not in gen
    bad = _edited_gguf(hf_models["llama"], tmp_path / "b.gguf",
                       sampling={"general.sampling.temp": -1.0})
    with pytest.raises(InvalidCheckpoint, match="general.sampling.temp"):
        import_gguf(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_unknown_tensor_is_named(hf_models: dict[str, Path], tmp_path: Path) -> None:
    path = _edited_gguf(hf_models["llama"], tmp_path / "x.gguf", extra_tensor="blk.0.attn_qkv.weight")
    with pytest.raises(InvalidCheckpoint, match="blk.0.attn_qkv.weight"):
        import_gguf(path, tmp_path / "out")


def test_refuses_a_non_empty_directory(hf_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's model")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        import_gguf(write_gguf(hf_models["qwen2"], tmp_path / "m.gguf"), out)
    assert (out / "model.safetensors").read_bytes() == b"someone else's model"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(InvalidCheckpoint, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")



def test_string_length_past_the_end_of_the_file(tmp_path: Path) -> None:
    # Found by tests/fuzz/fuzz_gguf_import.py: a key length of 2^60 made the reader allocate
    # for it (MemoryError) instead of reporting a broken file.
    bad = tmp_path / "long.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
                    + (1).to_bytes(8, "little") + (1 << 60).to_bytes(8, "little") + b"key")
    with pytest.raises(InvalidCheckpoint, match="runs past the end of the file"):
        import_gguf(bad, tmp_path / "out")


def test_file_cut_anywhere_is_invalid_checkpoint(hf_models: dict[str, Path],
                                                  tmp_path: Path) -> None:
    # Found by tests/fuzz/fuzz_gguf_import.py: a file cut inside the tensor descriptions made
    # gguf.GGUFReader raise IndexError. Any cut must read as a broken file.
    data = write_gguf(hf_models["qwen2"], tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    infos = data.index(b"blk.0.")  # the tensor descriptions follow the metadata
    cuts = [*range(8, len(data) - 1, max(1, len(data) // 50)), *range(infos - 12, infos + 120, 5)]
    for i, n in enumerate(cuts):
        cut.write_bytes(data[:n])
        with pytest.raises(InvalidCheckpoint):
            import_gguf(cut, tmp_path / f"out{i}")
