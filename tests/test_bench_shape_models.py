"""scripts/bench/shape_models.py on tiny shapes: every format it writes is what its readers
accept. The medrt-quant directories pass the validator and generate in the engine, the f16
directory is a well-formed sharded Hugging Face checkpoint, and the GGUF holds the tensors,
types and shapes llama.cpp's Qwen2 loader expects (checked with gguf's reader)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

import medrt
from medrt.sampling_params import SamplingParams
from medrt_train.quant.format import TensorIndex, dequantized_state, validate

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "shape_models.py"
_spec = importlib.util.spec_from_file_location("shape_models", _SCRIPT)
sm = importlib.util.module_from_spec(_spec)
sys.modules["shape_models"] = sm  # dataclasses look their module up
_spec.loader.exec_module(sm)

# hidden 256 keeps llama-quantize's Q6_K output (rows of whole 256-blocks); hidden 128 takes
# its Q8_0 fallback. Both have the real models' untied head, biases and grouped KV heads.
TINY = {
    "h256": dict(sm.SHAPES["1.5b"], hidden_size=256, intermediate_size=512,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=320),
    "h128": dict(sm.SHAPES["7b"], hidden_size=128, intermediate_size=256,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=300),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    shape = TINY[request.param]
    work = tmp_path_factory.mktemp(f"shapes-{request.param}")
    # Small shards, so that the tiny models are sharded as the real ones are.
    paths = sm.build(shape, request.param, list(sm.FORMATS), work, seed=3,
                     shard_bytes=150_000)
    return shape, paths


def test_f16_directory(built) -> None:
    shape, paths = built
    out = paths["f16"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(f.startswith("model-000") for f in files)
    tensors = TensorIndex(out)
    expected = {f"{m.name}.weight": m.shape for m in sm.modules(shape)}
    expected.update({f"{m.name}.bias": m.shape[:1] for m in sm.modules(shape) if m.bias})
    assert set(tensors.names()) == set(expected)
    for name, tshape in expected.items():
        assert tensors.meta(name) == (tuple(tshape), "F16"), name
    w = tensors.numpy("model.layers.1.mlp.down_proj.weight").astype(np.float32)
    assert abs(w.std() - sm.SIGMA) < 0.002
    assert np.all(tensors.numpy("model.norm.weight") == 1)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] == shape["hidden_size"]
    assert config["tie_word_embeddings"] is False


@pytest.mark.parametrize("fmt", ["int4-g64", "int4-g64-int8-head", "int4-g64-int6-head",
                                 "int4-g64-int4-head", "paper", "paper-int6-head",
                                 "paper-int4-head"])
def test_quant_directory_validates_and_generates(built, fmt: str) -> None:
    shape, paths = built
    out = paths[fmt]
    types = validate(out)
    recipe = sm.recipe_for(fmt)
    kinds = {m.name: m.kind for m in sm.modules(shape)}
    assert {m: str(t) for m, t in types.items()} == \
        {m: str(recipe.type_for(m, k)) for m, k in kinds.items()}
    if fmt.startswith("paper"):
        assert str(types["model.layers.0.self_attn.q_proj"]) == "int8"
        assert str(types["model.layers.0.mlp.up_proj"]) == "nf4"
    else:
        assert str(types["model.layers.0.mlp.up_proj"]) == "int4-g64"
    head = {"int4-g64-int8-head": "int8", "int4-g64-int6-head": "int6-g64",
            "int4-g64-int4-head": "int4-g64", "paper-int6-head": "int6-g64",
            "paper-int4-head": "int4-g64"}.get(fmt, "f16")
    embeddings = "int8" if fmt in ("paper-int6-head", "paper-int4-head") else "f16"
    assert str(types["model.embed_tokens"]) == embeddings and str(types["lm_head"]) == head
    assert str(types["model.norm"]) == "f32"

    # The dequantized weights sit where an RTN quantization of N(0, 0.02) puts them.
    state = dequantized_state(out)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        w = state[name]
        assert np.isfinite(w).all()
        assert 0.01 < w.std() < 0.05, (name, w.std())
        assert np.abs(w).max() < 0.2, name

    with medrt.LLM(str(out), num_threads=1, max_model_len=64) as llm:
        result = llm.generate({"prompt_token_ids": [1, 17, 250, 3, 99]},
                              SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    ids = result[0].outputs[0].token_ids
    assert len(ids) == 4 and all(0 <= t < shape["vocab_size"] for t in ids)


@pytest.mark.parametrize("fmt", ["gguf-q4_0", "gguf-q4_0-pure"])
def test_gguf_file(built, fmt: str) -> None:
    shape, paths = built
    reader = gguf.GGUFReader(paths[fmt])
    Q = gguf.GGMLQuantizationType
    field = reader.fields
    assert bytes(field["general.architecture"].parts[-1]).decode() == "qwen2"
    assert bytes(field["tokenizer.ggml.model"].parts[-1]).decode() == "none"
    assert int(field["qwen2.vocab_size"].parts[-1][0]) == shape["vocab_size"]
    assert int(field["qwen2.block_count"].parts[-1][0]) == shape["num_hidden_layers"]
    assert int(field["qwen2.attention.head_count_kv"].parts[-1][0]) == \
        shape["num_key_value_heads"]

    tensors = {t.name: t for t in reader.tensors}
    expected = {}
    head = Q.Q6_K if shape["hidden_size"] % 256 == 0 else Q.Q8_0
    if fmt == "gguf-q4_0-pure":
        head = Q.Q4_0
    for m in sm.modules(shape):
        qtype = {"linear": Q.Q4_0, "embedding": Q.Q4_0, "lm_head": head, "other": Q.F32}[m.kind]
        expected[f"{m.gguf}.weight"] = (qtype, m.shape)
        if m.bias:
            expected[f"{m.gguf}.bias"] = (Q.F32, m.shape[:1])
    assert set(tensors) == set(expected)
    for name, (qtype, tshape) in expected.items():
        t = tensors[name]
        assert t.tensor_type == qtype, name
        # GGUF lists dimensions fastest first: [in, out].
        assert [int(x) for x in t.shape] == list(reversed(tshape)), name
    for name in ("blk.0.attn_q.weight", "output.weight", "token_embd.weight"):
        t = tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(w).all()
        assert 0.01 < w.std() < 0.05, (name, w.std())
    assert np.all(tensors["output_norm.weight"].data == 1)


def test_outputs_are_kept_and_seeded(built, tmp_path: Path) -> None:
    shape, paths = built
    gguf_path = paths["gguf-q4_0"]
    tag = gguf_path.name.split("-")[1]
    # A second build into the same directory keeps what exists.
    mtime = gguf_path.stat().st_mtime_ns
    assert sm.build(shape, tag, ["gguf-q4_0"], gguf_path.parent, seed=3) == \
        {"gguf-q4_0": gguf_path}
    assert gguf_path.stat().st_mtime_ns == mtime
    # The same seed gives the same tensors, another seed others.
    ta = _tensors(sm.build(shape, tag, ["gguf-q4_0"], tmp_path / "a", seed=3)["gguf-q4_0"])
    tb = _tensors(gguf_path)
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    tc = _tensors(sm.build(shape, tag, ["gguf-q4_0"], tmp_path / "c", seed=4)["gguf-q4_0"])
    assert not np.array_equal(tc["blk.0.attn_q.weight"], tb["blk.0.attn_q.weight"])


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, _SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bytes_per_token_counts_every_weight_but_the_input_embedding(built) -> None:
    shape, paths = built
    svl = _load_script("shapes_vs_llama")
    h, v = shape["hidden_size"], shape["vocab_size"]
    # An int4 g64 weight stores 4.5 bits per value (codes, f16 scale and zero per 64) as Q4_0
    # does (18 bytes per 32), norms and biases are f32 in both: with every linear and the LM
    # head in 4 bits the two engines' files read the same bytes per token.
    assert svl.bytes_per_token(paths["int4-g64-int4-head"]) == \
        svl.bytes_per_token(paths["gguf-q4_0-pure"])
    # An int8 LM head (one byte a weight and an f32 scale a row) against a 4-bit one: the
    # difference is the head alone, whatever the embedding table's type.
    int8_head = v * h + v * 4
    int4_head = v * h // 2 + v * (h // 64) * 4
    assert svl.bytes_per_token(paths["int4-g64-int8-head"]) - \
        svl.bytes_per_token(paths["int4-g64-int4-head"]) == int8_head - int4_head
    # An int6 g64 head: 24 bytes per 32 codes and an f16 scale per 64.
    int6_head = v * h // 32 * 24 + v * (h // 64) * 2
    assert svl.bytes_per_token(paths["int4-g64-int6-head"]) - \
        svl.bytes_per_token(paths["int4-g64-int4-head"]) == int6_head - int4_head
    # The embedding table is left out: int8 embeddings (paper-int4-head) against f16 ones
    # (paper with an f16 head) differ by the head only.
    f16_head = v * h * 2
    assert svl.bytes_per_token(paths["paper"]) - svl.bytes_per_token(paths["paper-int4-head"]) \
        == f16_head - int4_head
