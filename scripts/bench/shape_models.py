"""Random-weight models with DeepSeek-R1-Distill-Qwen-1.5B and -7B shapes, written with numpy.

    python scripts/bench/shape_models.py --shape 1.5b \\
        --formats f16,int4-g64,paper,gguf-q4_0 --work-dir /work/peers/shapes

No framework builds the model: every tensor is drawn from a seeded generator (one stream per
tensor name, so a tensor does not depend on which formats are built) and streamed to disk in
chunks, so memory holds one chunk or one tensor, never the model (a 7B f32 model does not fit
in RAM). The formats, each into `--work-dir`:

- `f16`: a Hugging Face Qwen2ForCausalLM directory (config.json, sharded safetensors and
  model.safetensors.index.json), every weight ~N(0, 0.02) in f16, norms 1.
- `int4-g64` and `paper`: medrt-quant directories (docs/quantized-format.md) under the recipes
  of medrt_train: `int4-g64` is the built-in `int4` recipe (every linear int4, groups of 64),
  `paper` the built-in `paper` recipe (attention int8 per row, MLP nf4; embeddings and LM head
  f16, norms f32); `int4-g64-int8-head` is `int4-g64` with an int8 LM head (the CLI's
  `--lm-head int8`); `paper-int8-io` the `paper` recipe with int8 embeddings and LM head (the
  CLI's `--embeddings int8 --lm-head int8`; the paper's 64.7% cut quantizes those too);
  `int4-g64-int4-head` and `paper-int4-head` the same with an int4 g64 LM head (`--lm-head
  int4-g64`, the fewest bytes per token), `int4-g64-int6-head` and `paper-int6-head` with an
  int6 g64 one (`--lm-head int6-g64`: 6.25 bits, below llama.cpp's Q6_K output). Codes are
  random; scales and zeros are drawn from
  those that round-to-nearest quantization (medrt_train.quant.types.fit_params) gives for
  groups of N(0, 0.02) weights, so every value lies where a quantized model's would. int8 codes are
  rounded normals (RTN codes of Gaussian weights), 4-bit codes uniform.
- `gguf-q4_0`: a GGUF file for llama.cpp with the types llama-quantize picks for Q4_0
  (src/llama-quant.cpp, no imatrix): every linear and token_embd Q4_0, output Q6_K (Q8_0
  when the hidden size is not a multiple of 256, llama-quantize's own fallback), norms and
  biases f32. Q4_0 scales are those of a block of N(0, 0.02) (`d = max / -8`); Q6_K scales
  follow quantize_row_q6_K_ref with each sub-block scale at its first guess (`max / -32`).
  `gguf-q4_0-pure` is llama-quantize's `--pure` Q4_0: the output projection Q4_0 too.
  There is no vocabulary: tokenizer.ggml.model is "none" with qwen2.vocab_size, which
  llama.cpp loads with dummy tokens (llama-bench feeds random token ids).

The Hugging Face directories carry a minimal byte-level tokenizer (3 special tokens and 256
bytes) so that medrt.LLM can open them; the benchmarks feed token ids. Each output is written
under a temporary name and renamed when complete; an existing output is kept unless --force.
Optional load checks run medrt-bench (-p 0 -n 1) on the medrt directories and llama-bench
(-p 0 -n 1) on the GGUF: one token each, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "training", REPO / "python"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from medrt_train.quant.types import (
    WeightType,
    fit_params,
    tensor_specs,
)

SIGMA = 0.02  # std of the float weights (transformers' initializer_range)
CHUNK_ELEMS = 1 << 24  # elements generated per chunk of a float tensor (64 MiB of f32)
POOL = 1 << 14  # reference groups whose RTN parameters the random tensors draw from

# DeepSeek-R1-Distill-Qwen-1.5B is prepare.py's QWEN_SHAPES; -7B is its config.json.
_QWEN2_COMMON = {
    "max_position_embeddings": 131072,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
SHAPES: dict[str, dict] = {
    "1.5b": {**_QWEN2_COMMON, "hidden_size": 1536, "intermediate_size": 8960,
             "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "vocab_size": 151936, "max_window_layers": 21},
    "7b": {**_QWEN2_COMMON, "hidden_size": 3584, "intermediate_size": 18944,
           "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "vocab_size": 152064, "max_window_layers": 28},
}
FORMATS = ("f16", "int4-g64", "int4-g64-int8-head", "int4-g64-int6-head", "int4-g64-int4-head",
           "paper", "paper-int8-io", "paper-int6-head", "paper-int4-head", "gguf-q4_0",
           "gguf-q4_0-pure")
GGUF_FORMATS = ("gguf-q4_0", "gguf-q4_0-pure")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
              np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8"}


def _log(msg: str) -> None:
    print(f"[shapes] {msg}", file=sys.stderr, flush=True)


def _rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one tensor: depends on the seed and the name only."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# ---------------------------------------------------------------- model layout

@dataclass(frozen=True)
class Module:
    """One module owning a weight: Hugging Face name, kind (linear | embedding | lm_head |
    other), weight shape, whether it has a bias, and its GGUF tensor name."""

    name: str
    kind: str
    shape: tuple[int, ...]
    bias: bool
    gguf: str


def modules(shape: dict) -> list[Module]:
    """The modules of Qwen2ForCausalLM in its named_modules order (untied LM head)."""
    h, inter, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    out = [Module("model.embed_tokens", "embedding", (vocab, h), False, "token_embd")]
    for i in range(shape["num_hidden_layers"]):
        p, g = f"model.layers.{i}", f"blk.{i}"
        out += [
            Module(f"{p}.self_attn.q_proj", "linear", (h, h), True, f"{g}.attn_q"),
            Module(f"{p}.self_attn.k_proj", "linear", (kv, h), True, f"{g}.attn_k"),
            Module(f"{p}.self_attn.v_proj", "linear", (kv, h), True, f"{g}.attn_v"),
            Module(f"{p}.self_attn.o_proj", "linear", (h, h), False, f"{g}.attn_output"),
            Module(f"{p}.mlp.gate_proj", "linear", (inter, h), False, f"{g}.ffn_gate"),
            Module(f"{p}.mlp.up_proj", "linear", (inter, h), False, f"{g}.ffn_up"),
            Module(f"{p}.mlp.down_proj", "linear", (h, inter), False, f"{g}.ffn_down"),
            Module(f"{p}.input_layernorm", "other", (h,), False, f"{g}.attn_norm"),
            Module(f"{p}.post_attention_layernorm", "other", (h,), False, f"{g}.ffn_norm"),
        ]
    out += [Module("model.norm", "other", (h,), False, "output_norm"),
            Module("lm_head", "lm_head", (vocab, h), False, "output")]
    return out


def hf_config(shape: dict, dtype: str, seed: int) -> dict:
    """config.json of the model, as DeepSeek-R1-Distill-Qwen's (special ids: our tokenizer)."""
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "hidden_act": "silu",
        "initializer_range": SIGMA,
        **shape,
        "rope_scaling": None,
        "sliding_window": 4096,
        "use_sliding_window": False,
        "use_cache": True,
        "use_mrope": False,
        "torch_dtype": dtype,
        "medrt_random_weights": {"seed": seed, "std": SIGMA,
                                 "by": "scripts/bench/shape_models.py"},
    }
    return config


# ---------------------------------------------------------------- float tensors

def _normal_chunks(rng: np.random.Generator, n: int, dtype: type, std: float = SIGMA
                   ) -> Iterator[np.ndarray]:
    while n > 0:
        k = min(n, CHUNK_ELEMS)
        x = rng.standard_normal(k, dtype=np.float32)
        x *= np.float32(std)
        yield x.astype(dtype)
        n -= k


def float_tensor(seed: int, name: str, shape: tuple[int, ...], dtype: type
                 ) -> Callable[[], Iterator[np.ndarray]]:
    """Chunks of a float tensor: norms are ones, everything else ~N(0, SIGMA)."""
    n = int(np.prod(shape))
    if name.endswith("norm.weight"):
        return lambda: iter([np.ones(n, dtype=dtype)])
    return lambda: _normal_chunks(_rng(seed, name), n, dtype)


# ---------------------------------------------------------------- quantized tensors

class ParamPool:
    """RTN parameters of POOL reference groups of N(0, SIGMA) weights, per weight type (and,
    for per-row int8, per row length), from medrt_train's own fit_params."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._pools: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}

    def get(self, wt: WeightType, in_features: int) -> tuple[np.ndarray, ...]:
        k = wt.group_size or in_features
        key = (str(wt), k)
        if key not in self._pools:
            rng = _rng(self.seed, f"pool/{key}")
            n = POOL if wt.group_size else 256  # whole rows: fewer, they vary little
            w = rng.standard_normal((n, k), dtype=np.float32) * np.float32(SIGMA)
            self._pools[key] = fit_params(wt, w)
        return self._pools[key]


def quant_tensors(seed: int, module: str, wt: WeightType, out_f: int, in_f: int,
                  pool: ParamPool) -> dict[str, Callable[[], Iterator[np.ndarray]]]:
    """suffix -> chunk producer of the stored tensors of a random `wt` weight [out, in]."""
    params = pool.get(wt, in_f)
    groups = in_f // wt.group_size if wt.group_size else 1

    def picked(i: int) -> Iterator[np.ndarray]:
        # Scale i of each group (and its zero) come from one reference group.
        idx = _rng(seed, f"{module}.params").integers(0, len(params[0]), (out_f, groups))
        arr = params[i][idx]
        yield arr.reshape(-1) if wt.name == "int8" and not wt.group_size else arr

    rows = max(1, CHUNK_ELEMS // in_f)

    def codes() -> Iterator[np.ndarray]:
        rng = _rng(seed, f"{module}.qweight")
        if wt.name == "int8":
            # RTN codes of Gaussian weights: rounded normals of std SIGMA / scale.
            step = np.float32(SIGMA) / next(picked(0)).reshape(out_f, groups, 1).astype(
                np.float32)
            for r in range(0, out_f, rows):
                s = step[r:r + rows]
                x = rng.standard_normal((len(s), groups, in_f // groups), dtype=np.float32)
                x *= s
                yield np.clip(np.rint(x), -127, 127).astype(np.int8).reshape(len(s), in_f)
        else:  # 4- and 6-bit: uniform codes, as many bytes per row as the format packs
            row_bytes = tensor_specs(wt, 1, in_f)["qweight"][0][1]
            for r in range(0, out_f, rows):
                n = min(rows, out_f - r) * row_bytes
                yield np.frombuffer(rng.bytes(n), dtype=np.uint8)

    out = {"qweight": codes, "scales": lambda: picked(0)}
    if wt.name == "int4":
        out["mins" if wt.mins else "zeros"] = lambda: picked(1)
    return out


# ---------------------------------------------------------------- safetensors, streamed

@dataclass
class Tensor:
    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        width = {"F16": 2, "F32": 4, "I8": 1, "U8": 1}[self.dtype]
        return int(np.prod(self.shape)) * width


def write_safetensors_dir(out: Path, tensors: list[Tensor], shard_bytes: int) -> int:
    """Write tensors (in order) into shards of at most shard_bytes (a larger tensor gets a
    shard of its own), named as Hugging Face names them, with the index when there are
    several. Returns the bytes of tensor data."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        total += _write_safetensors(out / fname, shard)
        weight_map.update({t.name: fname for t in shard})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def _write_safetensors(path: Path, tensors: list[Tensor]) -> int:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors:
            written = 0
            for chunk in t.chunks():
                if _ST_DTYPES[chunk.dtype] != t.dtype:
                    raise AssertionError(f"{t.name}: chunk {chunk.dtype}, expected {t.dtype}")
                chunk = np.ascontiguousarray(chunk)
                f.write(memoryview(chunk).cast("B"))
                written += chunk.nbytes
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
    return offset


# ---------------------------------------------------------------- tokenizer

def write_tokenizer(out: Path) -> None:
    """A minimal byte-level BPE tokenizer: the special tokens, then the 256 bytes, no merges.
    Every id it makes exists in the model's vocabulary; the rest of the vocabulary is unused."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
              "eos_token": SPECIAL_TOKENS[EOS_ID], "pad_token": SPECIAL_TOKENS[PAD_ID],
              "add_bos_token": False, "model_max_length": 131072}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------- the formats

def recipe_for(fmt: str):
    """The medrt_train recipe of a medrt-quant format name."""
    from medrt_train.quant.recipes import BUILTIN

    # paper-int8-io: `medrt-train quantize --recipe paper --embeddings int8 --lm-head int8`, the
    # paper's memory figure (5.25 of 14.9 GB) counts no f16 embedding or output projection.
    # int4-g64-int8-head: `--recipe int4 --lm-head int8`: the LM head, read whole for every
    # token, in 8 bits as llama-quantize's Q4_0 keeps it in Q6_K (the f16 one is 40% of the 1.5B
    # model's bytes per token).
    return {"int4-g64": BUILTIN["int4"], "paper": BUILTIN["paper"],
            "int4-g64-int8-head": BUILTIN["int4"].with_overrides(None, "int8"),
            "int4-g64-int6-head": BUILTIN["int4"].with_overrides(None, "int6-g64"),
            "int4-g64-int4-head": BUILTIN["int4"].with_overrides(None, "int4-g64"),
            "paper-int8-io": BUILTIN["paper"].with_overrides("int8", "int8"),
            "paper-int6-head": BUILTIN["paper"].with_overrides("int8", "int6-g64"),
            "paper-int4-head": BUILTIN["paper"].with_overrides("int8", "int4-g64")}[fmt]


def _dtype_name(wt: WeightType) -> tuple[type, str]:
    return {"f16": (np.float16, "F16"), "f32": (np.float32, "F32")}[wt.name]


def build_f16(shape: dict, out: Path, seed: int, shard_bytes: int) -> None:
    tensors = []
    for m in modules(shape):
        tensors.append(Tensor(f"{m.name}.weight", "F16", m.shape,
                              float_tensor(seed, f"{m.name}.weight", m.shape, np.float16)))
        if m.bias:
            tensors.append(Tensor(f"{m.name}.bias", "F16", m.shape[:1],
                                  float_tensor(seed, f"{m.name}.bias", m.shape[:1],
                                               np.float16)))
    write_safetensors_dir(out, tensors, shard_bytes)
    (out / "config.json").write_text(
        json.dumps(hf_config(shape, "float16", seed), indent=2) + "\n")
    write_tokenizer(out)


def build_quant(shape: dict, fmt: str, out: Path, seed: int, shard_bytes: int) -> None:
    from medrt_train.quant.format import FORMAT_NAME, format_version, module_type

    recipe = recipe_for(fmt)
    pool = ParamPool(seed)
    tensors: list[Tensor] = []
    entries: dict[str, dict] = {}
    for m in modules(shape):
        wt = recipe.type_for(m.name, m.kind)
        entry = wt.to_json()
        if wt.quantized:
            out_f, in_f = m.shape
            if wt.group_size and in_f % wt.group_size or wt.name != "int8" and in_f % 32:
                raise ValueError(f"{m.name}: input dimension {in_f} does not fit {wt}")
            entry["shape"] = [out_f, in_f]
            producers = quant_tensors(seed, m.name, wt, out_f, in_f, pool)
            for suffix, (tshape, dtype) in tensor_specs(wt, out_f, in_f).items():
                tensors.append(Tensor(f"{m.name}.{suffix}", dtype, tshape, producers[suffix]))
        else:
            np_dtype, st = _dtype_name(wt)
            tensors.append(Tensor(f"{m.name}.weight", st, m.shape,
                                  float_tensor(seed, f"{m.name}.weight", m.shape, np_dtype)))
        if m.bias:  # biases are never quantized; f32 as medrt-train quantize writes them
            tensors.append(Tensor(f"{m.name}.bias", "F32", m.shape[:1],
                                  float_tensor(seed, f"{m.name}.bias", m.shape[:1],
                                               np.float32)))
        entries[m.name] = entry
    write_safetensors_dir(out, tensors, shard_bytes)
    config = hf_config(shape, "float16", seed)
    version = format_version(module_type(e, m) for m, e in entries.items())
    config["quantization"] = {
        "format": FORMAT_NAME, "version": version, "recipe": recipe.name,
        "method": {"name": "rtn"}, "calibration": None, "modules": entries,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(out)


# GGUF blocks

def _q4_0_pool(seed: int) -> np.ndarray:
    """d of POOL Q4_0 blocks of N(0, SIGMA): llama.cpp's `max / -8` (max: the signed value of
    largest magnitude), as f16."""
    x = _rng(seed, "pool/q4_0").standard_normal((POOL, 32), dtype=np.float32) * SIGMA
    mx = x[np.arange(POOL), np.abs(x).argmax(axis=1)]
    return (mx / -8.0).astype(np.float16)


def _q6_k_pool(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales int8 [POOL, 16], d f16 [POOL]) of Q6_K super-blocks of N(0, SIGMA), as
    quantize_row_q6_K_ref makes them with each sub-block's scale at `max / -32`."""
    n = POOL // 4
    x = _rng(seed, "pool/q6_k").standard_normal((n, 16, 16), dtype=np.float32) * SIGMA
    flat = x.reshape(n * 16, 16)
    sub = flat[np.arange(n * 16), np.abs(flat).argmax(axis=1)].reshape(n, 16) / -32.0
    max_scale = sub[np.arange(n), np.abs(sub).argmax(axis=1)]
    iscale = -128.0 / max_scale
    sc = np.minimum(127, np.rint(iscale[:, None] * sub)).astype(np.int8)
    return sc, (1.0 / iscale).astype(np.float16)


def q4_0_blocks(seed: int, name: str, out_f: int, in_f: int, dpool: np.ndarray) -> np.ndarray:
    """Raw Q4_0 bytes [out, in/32 * 18] of a random weight: d from the pool, random nibbles."""
    rng = _rng(seed, name)
    nb = out_f * (in_f // 32)
    blocks = np.empty((nb, 18), dtype=np.uint8)
    blocks[:, :2] = dpool[rng.integers(0, len(dpool), nb)].view(np.uint8).reshape(nb, 2)
    blocks[:, 2:] = np.frombuffer(rng.bytes(nb * 16), dtype=np.uint8).reshape(nb, 16)
    return blocks.reshape(out_f, -1)


def q6_k_blocks(seed: int, name: str, out_f: int, in_f: int,
                pool: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Raw Q6_K bytes [out, in/256 * 210]: ql[128], qh[64] random, scales[16], d."""
    rng = _rng(seed, name)
    nb = out_f * (in_f // 256)
    sc, d = pool
    idx = rng.integers(0, len(d), nb)
    blocks = np.empty((nb, 210), dtype=np.uint8)
    blocks[:, :192] = np.frombuffer(rng.bytes(nb * 192), dtype=np.uint8).reshape(nb, 192)
    blocks[:, 192:208] = sc[idx].view(np.uint8)
    blocks[:, 208:] = d[idx].view(np.uint8).reshape(nb, 2)
    return blocks.reshape(out_f, -1)


def q8_0_blocks(seed: int, name: str, out_f: int, in_f: int) -> np.ndarray:
    """Raw Q8_0 bytes [out, in/32 * 34]: d = absmax / 127 of N(0, SIGMA) blocks (from a pool),
    codes rounded normals."""
    rng = _rng(seed, name)
    nb = out_f * (in_f // 32)
    ref = _rng(seed, "pool/q8_0").standard_normal((POOL, 32), dtype=np.float32) * SIGMA
    dpool = (np.abs(ref).max(axis=1) / 127.0).astype(np.float16)
    d = dpool[rng.integers(0, POOL, nb)]
    q = rng.standard_normal((nb, 32), dtype=np.float32) * (SIGMA / d.astype(np.float32))[:, None]
    blocks = np.empty((nb, 34), dtype=np.uint8)
    blocks[:, :2] = d.view(np.uint8).reshape(nb, 2)
    blocks[:, 2:] = np.clip(np.rint(q), -127, 127).astype(np.int8).view(np.uint8)
    return blocks.reshape(out_f, -1)


def gguf_types(shape: dict, pure: bool = False) -> dict[str, str]:
    """GGUF type of each kind of tensor under llama-quantize Q4_0 (no imatrix; `pure`: its
    `--pure`, every quantizable tensor Q4_0)."""
    head = "Q4_0" if pure else "Q6_K" if shape["hidden_size"] % 256 == 0 else "Q8_0"
    return {"linear": "Q4_0", "embedding": "Q4_0", "lm_head": head,
            "other": "F32", "bias": "F32"}


def build_gguf(shape: dict, path: Path, seed: int, pure: bool = False) -> None:
    import gguf

    Q = gguf.GGMLQuantizationType
    types = gguf_types(shape, pure)
    h = shape["hidden_size"]
    w = gguf.GGUFWriter(path, "qwen2", use_temp_file=False)
    w.add_name(path.stem)
    w.add_context_length(shape["max_position_embeddings"])
    w.add_embedding_length(h)
    w.add_feed_forward_length(shape["intermediate_size"])
    w.add_block_count(shape["num_hidden_layers"])
    w.add_head_count(shape["num_attention_heads"])
    w.add_head_count_kv(shape["num_key_value_heads"])
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_layer_norm_rms_eps(shape["rms_norm_eps"])
    w.add_vocab_size(shape["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("none")

    # (gguf name, numpy shape [out, in] or [n], type, producer of the array)
    plan: list[tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]] = []
    q4 = _q4_0_pool(seed)
    q6 = _q6_k_pool(seed)
    for m in modules(shape):
        name = f"{m.gguf}.weight"
        qt = types[m.kind]
        if qt == "F32":
            plan.append((name, m.shape, qt, lambda n=name, s=m.shape: next(
                float_tensor(seed, n, s, np.float32)()).reshape(s)))
        elif qt == "Q4_0":
            plan.append((name, m.shape, qt,
                         lambda n=name, s=m.shape: q4_0_blocks(seed, n, *s, q4)))
        elif qt == "Q6_K":
            plan.append((name, m.shape, qt,
                         lambda n=name, s=m.shape: q6_k_blocks(seed, n, *s, q6)))
        else:
            plan.append((name, m.shape, qt, lambda n=name, s=m.shape: q8_0_blocks(seed, n, *s)))
        if m.bias:
            b = f"{m.gguf}.bias"
            plan.append((b, m.shape[:1], "F32", lambda n=b, s=m.shape[:1]: next(
                float_tensor(seed, n, s, np.float32)())))
    # Order as convert_hf_to_gguf writes a Qwen2: token_embd, the blocks, output_norm, output.
    for name, tshape, qt, _ in plan:
        if qt == "F32":
            w.add_tensor_info(name, tshape, np.dtype(np.float32), int(np.prod(tshape)) * 4)
        else:
            block, nbytes = gguf.GGML_QUANT_SIZES[Q[qt]]
            byte_shape = (*tshape[:-1], tshape[-1] // block * nbytes)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=Q[qt])
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, tshape, qt, make in plan:
        w.write_tensor_data(make())
    w.close()


# ---------------------------------------------------------------- driver

def output_path(work: Path, tag: str, fmt: str) -> Path:
    if fmt in GGUF_FORMATS:
        return work / f"qwen2-{tag}-random-{fmt.removeprefix('gguf-')}.gguf"
    return work / f"qwen2-{tag}-random-{fmt}"


def build(shape: dict, tag: str, formats: list[str], work: Path, *, seed: int = 0,
          shard_bytes: int = 2 << 30, force: bool = False) -> dict[str, Path]:
    """Build each format of `formats` for `shape` into `work`; returns format -> path."""
    work.mkdir(parents=True, exist_ok=True)
    done = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected some of {', '.join(FORMATS)}")
        out = output_path(work, tag, fmt)
        done[fmt] = out
        if out.exists() and not force:
            _log(f"{out} exists, kept (--force rebuilds)")
            continue
        tmp = out.with_name(out.name + ".tmp")
        _remove(tmp)
        _log(f"building {fmt} -> {out}")
        if fmt in GGUF_FORMATS:
            build_gguf(shape, tmp, seed, pure=fmt == "gguf-q4_0-pure")
        else:
            tmp.mkdir()
            if fmt == "f16":
                build_f16(shape, tmp, seed, shard_bytes)
            else:
                build_quant(shape, fmt, tmp, seed, shard_bytes)
        _remove(out)
        tmp.rename(out)
        _log(f"{out}: {_size(out) / 2**30:.2f} GiB")
    return done


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def check_loads(paths: dict[str, Path], medrt_bench: Path | None, llama_bin: Path | None,
                threads: int) -> None:
    """One token through medrt-bench / llama-bench per output: a load check, no benchmark."""
    for fmt, path in paths.items():
        if fmt in GGUF_FORMATS and llama_bin is not None:
            env = dict(os.environ, LD_LIBRARY_PATH=str(llama_bin))
            cmd = [str(llama_bin / "llama-bench"), "-m", str(path), "-p", "0", "-n", "1",
                   "-r", "1", "-t", str(threads)]
        elif fmt not in GGUF_FORMATS and medrt_bench is not None:
            env = None
            cmd = [str(medrt_bench), "-m", str(path), "-p", "0", "-n", "1", "--batched", "",
                   "--bandwidth-mib", "0", "-r", "1", "-t", str(threads)]
        else:
            continue
        _log("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help=f"comma-separated, some of {','.join(FORMATS)} (default: all)")
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gib", type=float, default=2.0,
                    help="largest safetensors shard, GiB (default 2)")
    ap.add_argument("--force", action="store_true", help="rebuild outputs that exist")
    ap.add_argument("--medrt-bench", type=Path,
                    help="after building, load each medrt directory with this medrt-bench "
                         "(-p 0 -n 1: one token, a load check)")
    ap.add_argument("--llama-bin", type=Path,
                    help="after building, load the GGUF with llama-bench from this directory "
                         "(-p 0 -n 1 -r 1)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    paths = build(SHAPES[args.shape], args.shape, formats, args.work_dir, seed=args.seed,
                  shard_bytes=int(args.shard_gib * 2**30), force=args.force)
    for fmt, path in paths.items():
        print(f"{fmt}\t{path}\t{_size(path)}")
    check_loads(paths, args.medrt_bench, args.llama_bin, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
