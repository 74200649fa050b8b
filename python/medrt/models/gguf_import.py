"""GGUF (llama.cpp) -> Hugging Face model directory, without torch.

Reads the file with the `gguf` package. Q4_0, Q4_1 and Q8_0 tensors are kept at their own
precision as medrt-quant tensors (gguf_blocks.py; docs/quantized-format.md), bit for bit;
every other tensor is dequantized with ``gguf.quants.dequantize`` (or, when a float dtype is
asked for, every tensor). The importer undoes llama.cpp's row permutation of Llama's q/k
projections (its converter interleaves each head's two rotary halves for the GPT-J style rope
it runs), renames tensors to the Hugging Face layout, and writes config.json (with a
`quantization` section when blocks are kept), generation_config.json, the tokenizer files and
safetensors shards of at most ``SHARD_BYTES`` each.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import TensorSpec, serialize_file
from tqdm import tqdm

from medrt.errors import InvalidCheckpoint
from medrt.generation_defaults import check_value
from medrt.hf_tokenizer import panics_as_invalid
from medrt.models.gguf_blocks import GROUP, KEPT, split_blocks
from medrt.models.gguf_metadata import check_tensor_data, read_metadata
from medrt.models.gguf_tokenizer import eos_token_ids, write_tokenizer_files

log = logging.getLogger(__name__)

DTYPES = ("auto", "f16", "bf16", "f32")
SHARD_BYTES = 4 << 30

_ARCHS = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
_TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# numpy dtype of an output array -> safetensors dtype name (bf16 is carried as uint16 bits).
_ST_DTYPE = {"float32": "float32", "float16": "float16", "uint16": "bfloat16", "uint8": "uint8",
             "int8": "int8"}
_FLOAT_GGUF = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
               gguf.GGMLQuantizationType.BF16)


def hf_name(gguf_name: str) -> str:
    """The Hugging Face tensor name for a llama.cpp tensor name; InvalidCheckpoint if unknown."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise InvalidCheckpoint(f"GGUF tensor '{gguf_name}' has no Hugging Face equivalent")


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation: per head, rows (pair i, half h) -> (half h, i)."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation (what its converter applies to a Hugging Face Llama)."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _require(meta: Mapping[str, Any], key: str) -> Any:
    value = meta.get(key)
    if value is None:
        raise InvalidCheckpoint(f"GGUF metadata key '{key}' is missing")
    return value


def _f32(value: Any) -> float:
    # GGUF stores these as f32: write the shortest decimal that reads back as the same f32
    # (1e-06, not 9.999999974752427e-07), as the original config.json had it.
    return float(str(np.float32(value)))


def _llama3_rope_scaling(
    factors: np.ndarray, head_dim: int, theta: float, original_ctx: int
) -> dict[str, Any]:
    # llama.cpp stores Llama 3.x rope scaling only as the per-frequency divisors it computed
    # (rope_freqs.weight). Recover the rope_scaling parameters by checking the divisors against
    # the published Llama 3.1/3.2 low/high frequency factors.
    factor = float(factors.max())
    low, high = 1.0, 4.0
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_ctx / wavelen - low) / (high - low)
    expected = np.where(
        wavelen < original_ctx / high,
        1.0,
        np.where(wavelen > original_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    if expected.shape != factors.shape or not np.allclose(expected, factors, rtol=1e-3):
        raise InvalidCheckpoint(
            "GGUF rope_freqs.weight does not match Llama 3 rope scaling "
            f"(factor {factor}, low 1, high 4, original context {original_ctx})"
        )
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original_ctx,
    }


def hf_config(meta: Mapping[str, Any], reader: gguf.GGUFReader, dtype: str) -> dict[str, Any]:
    """config.json for the GGUF's architecture and hyper-parameters (dtype: f16|bf16|f32)."""
    arch = _require(meta, "general.architecture")
    if arch not in _ARCHS:
        raise InvalidCheckpoint(
            f"GGUF architecture '{arch}' is not supported (supported: {', '.join(_ARCHS)})"
        )
    cls, model_type = _ARCHS[arch]
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise InvalidCheckpoint("GGUF file has no token_embd.weight tensor")
    hidden = int(_require(meta, f"{arch}.embedding_length"))
    n_heads = int(_require(meta, f"{arch}.attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // n_heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise InvalidCheckpoint(
            f"GGUF rope.dimension_count {rope_dim} != head dim {head_dim}: partial rotary "
            "embeddings are not supported"
        )
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise InvalidCheckpoint(f"GGUF rope scaling type '{scaling}' is not supported")
    theta = _f32(meta.get(f"{arch}.rope.freq_base", 10000.0))
    ctx = int(_require(meta, f"{arch}.context_length"))
    cfg: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(_require(meta, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_require(meta, f"{arch}.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "max_position_embeddings": ctx,
        "rms_norm_eps": _f32(_require(meta, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": theta,
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": _TORCH_DTYPE[dtype],
    }
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
        cfg["mlp_bias"] = False
    else:
        cfg["use_sliding_window"] = False
    if "rope_freqs.weight" in tensors:
        factors = gguf.quants.dequantize(
            tensors["rope_freqs.weight"].data, tensors["rope_freqs.weight"].tensor_type
        )
        original = int(meta.get(f"{arch}.rope.scaling.original_context_length", 8192))
        cfg["rope_scaling"] = _llama3_rope_scaling(
            np.asarray(factors, np.float64).reshape(-1), head_dim, theta, original
        )
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if bos is not None:
        cfg["bos_token_id"] = _token_id(meta, "bos", cfg["vocab_size"])
    eos = eos_token_ids(meta)
    for i in eos:
        if not 0 <= i < cfg["vocab_size"]:
            raise InvalidCheckpoint(
                f"GGUF end-of-sequence token id {i} is outside the vocabulary "
                f"[0, {cfg['vocab_size']})"
            )
    if eos:
        cfg["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return cfg


def _token_id(meta: Mapping[str, Any], kind: str, vocab_size: int) -> int:
    # The engine indexes logits with special ids: one past the vocabulary is a broken file.
    key = f"tokenizer.ggml.{kind}_token_id"
    idx = int(meta[key])
    if not 0 <= idx < vocab_size:
        raise InvalidCheckpoint(f"GGUF {key} = {idx} is outside the vocabulary [0, {vocab_size})")
    return idx


# llama.cpp's converter stores the Hugging Face generation_config's sampling under
# general.sampling.*: they go back into generation_config.json, where medrt reads the model's
# sampling defaults (medrt.generation_defaults) and transformers reads them too.
_GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
                  "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
                  "general.sampling.penalty_repeat": "repetition_penalty"}


def generation_sampling(meta: Mapping[str, Any]) -> dict[str, Any]:
    """generation_config.json's sampling keys from the GGUF's general.sampling.* (do_sample
    true when any of temperature, top_k, top_p or min_p is given); a value medrt would refuse
    is an InvalidCheckpoint naming the GGUF key."""
    out: dict[str, Any] = {}
    for key, name in _GGUF_SAMPLING.items():
        value = meta.get(key)
        if value is None:
            continue
        try:
            value = int(value) if name == "top_k" else _f32(value)
        except (TypeError, ValueError) as e:
            raise InvalidCheckpoint(f"GGUF metadata '{key}' = {value!r}: {e}") from None
        check_value(name, value, f"GGUF metadata '{key}'")
        out[name] = value
    if out.keys() - {"repetition_penalty"}:
        out["do_sample"] = True
    return out


def _auto_dtype(reader: gguf.GGUFReader) -> str:
    # f16 holds dequantized GGUF blocks (f16 scales times small integers) more closely than
    # bf16 does; a model stored in bf16 keeps bf16, since its values may not fit f16's range.
    bf16 = any(t.tensor_type == gguf.GGMLQuantizationType.BF16 for t in reader.tensors)
    return "bf16" if bf16 else "f16"


def _to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f32":
        return np.ascontiguousarray(x, np.float32)
    if dtype == "f16":
        return np.ascontiguousarray(x, np.float16)
    # bf16 bits, rounded to nearest even (as torch rounds); NaN stays a quiet NaN.
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def _weights(reader: gguf.GGUFReader) -> list[Any]:
    """The GGUF tensors that become weights (rope_freqs.weight goes into config.json)."""
    return [t for t in reader.tensors if t.name != "rope_freqs.weight"]


def _kept(t: Any, keep: bool) -> bool:
    return keep and t.tensor_type in KEPT and len(t.shape) == 2


def _converted(
    reader: gguf.GGUFReader, cfg: dict[str, Any], dtype: str, keep: bool
) -> Iterator[tuple[int, str, np.ndarray]]:
    """(index of the GGUF tensor in _weights, Hugging Face name, array) of every output tensor:
    one per GGUF tensor, or a module's codes, scales and zeros/mins for a kept one."""
    permute = cfg["model_type"] == "llama"
    for i, t in enumerate(_weights(reader)):
        name = hf_name(t.name)
        shape = [int(d) for d in reversed(t.shape)]
        heads = None
        if permute and ".q_proj." in name:
            heads = cfg["num_attention_heads"]
        elif permute and ".k_proj." in name:
            heads = cfg["num_key_value_heads"]
        if _kept(t, keep):
            # Whole rows of codes and scales move together, so the permutation stays exact.
            module = name.removesuffix(".weight")
            for suffix, a in split_blocks(t.name, t.data, t.tensor_type, *shape).items():
                a = unpermute_rope_rows(a, heads) if heads else a
                yield i, f"{module}.{suffix}", np.ascontiguousarray(a)
            continue
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise InvalidCheckpoint(
                f"GGUF tensor '{t.name}': type {t.tensor_type.name} cannot be dequantized"
            ) from e
        w = w.reshape(shape)
        if heads:
            w = unpermute_rope_rows(w, heads)
        # Norm weights and biases are tiny; f32 keeps them exact whatever the weight dtype.
        yield i, name, _to_dtype(w, dtype if w.ndim > 1 else "f32")


def quantization_section(reader: gguf.GGUFReader, source: str, dtype: str) -> dict[str, Any]:
    """The medrt-quant section for an import that keeps Q4_0/Q4_1/Q8_0 blocks: every module
    with its type (docs/quantized-format.md); float weights in `dtype`, norms in f32."""
    modules: dict[str, dict[str, Any]] = {}
    version = 1
    for t in _weights(reader):
        name = hf_name(t.name)
        module, _, kind = name.rpartition(".")
        if kind == "bias":
            continue  # a bias belongs to its module
        if _kept(t, True):
            out_f, in_f = (int(d) for d in reversed(t.shape))
            modules[module] = KEPT[t.tensor_type].entry(out_f, in_f)
            version = max(version, KEPT[t.tensor_type].version)
        else:
            modules[module] = {"type": dtype if len(t.shape) > 1 else "f32"}
    types = Counter(t.tensor_type.name for t in _weights(reader))
    return {
        "format": "medrt-quant",
        "version": version,
        "recipe": "gguf",
        "method": {"name": "gguf", "source": source, "types": dict(sorted(types.items()))},
        "calibration": None,
        "modules": modules,
    }


def _save(tensors: dict[str, np.ndarray], path: Path) -> None:
    specs = {
        name: TensorSpec(
            dtype=_ST_DTYPE[a.dtype.name], shape=a.shape, data_ptr=a.ctypes.data,
            data_len=a.nbytes
        )
        for name, a in tensors.items()
    }
    serialize_file(specs, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors creates the file owner-only


def _output_bytes(t: Any, dtype: str, keep: bool) -> int:
    numel = int(np.prod([int(d) for d in t.shape]))
    if _kept(t, keep):  # the blocks' bytes, plus Q4_0's zeros (2 bytes a block)
        zeros = 2 if t.tensor_type == gguf.GGMLQuantizationType.Q4_0 else 0
        return numel // GROUP * (gguf.GGML_QUANT_SIZES[t.tensor_type][1] + zeros)
    return numel * (_ITEMSIZE[dtype] if len(t.shape) > 1 else 4)


def _plan_shards(reader: gguf.GGUFReader, dtype: str, keep: bool) -> list[int]:
    """Shard index of every GGUF weight (in file order) so that no shard exceeds SHARD_BYTES;
    the tensors of one kept module stay in one shard."""
    shard, used, plan = 0, 0, []
    for t in _weights(reader):
        size = _output_bytes(t, dtype, keep)
        if used and used + size > SHARD_BYTES:
            shard, used = shard + 1, 0
        used += size
        plan.append(shard)
    return plan


def import_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    progress: bool = False,
) -> Path:
    """Converts a Llama or Qwen2 GGUF file into a Hugging Face model directory.

    ``dtype`` "auto" keeps Q4_0, Q4_1 and Q8_0 tensors at their own precision (medrt-quant
    tensors, bit for bit; docs/quantized-format.md) and writes the other weights in bf16 when
    the GGUF stores bf16 tensors, f16 otherwise; tensors of other quantized types are
    dequantized to that dtype, with a logged warning that names them. "f16", "bf16" or "f32"
    dequantize every tensor to that dtype (f32: the exact dequantized values). Norm weights and
    biases are f32. ``progress`` shows a tqdm bar over the tensors on stderr. ``out_dir`` must
    be new or empty (FileExistsError otherwise), so that no file of another model is left
    beside the new one. Returns the directory.
    """
    if dtype not in DTYPES:
        raise InvalidCheckpoint(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory")
    meta = read_metadata(gguf_path)
    check_tensor_data(gguf_path)  # names a truncated tensor, which GGUFReader would not
    try:
        reader = gguf.GGUFReader(gguf_path)
    except (OSError, ValueError, IndexError, KeyError) as e:  # gguf's errors on a cut file
        raise InvalidCheckpoint(f"{gguf_path}: not a readable GGUF file: {e}") from e
    keep = dtype == "auto"
    if keep:
        dtype = _auto_dtype(reader)
    cfg = hf_config(meta, reader, dtype)
    sampling = generation_sampling(meta)  # checked before anything is written
    if keep and any(_kept(t, keep) for t in _weights(reader)):
        cfg["quantization"] = quantization_section(reader, gguf_path.name, dtype)
    if keep:
        lost = Counter(t.tensor_type.name for t in _weights(reader)
                       if not _kept(t, keep) and t.tensor_type not in _FLOAT_GGUF)
        if lost:
            log.warning("%s: %s tensors have no medrt type and are dequantized to %s",
                        gguf_path.name, ", ".join(f"{n} {k}" for k, n in sorted(lost.items())),
                        dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    # tokenizers raises a bare Exception for a vocabulary it cannot build (a merge naming a
    # token the vocabulary lacks): an InvalidCheckpoint naming the GGUF, like any bad field.
    with panics_as_invalid(gguf_path, "building it from the GGUF's vocabulary"):
        write_tokenizer_files(meta, out_dir, cfg["max_position_embeddings"])

    plan = _plan_shards(reader, dtype, keep)
    n_shards = plan[-1] + 1 if plan else 1
    files = (
        ["model.safetensors"]
        if n_shards == 1
        else [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    )
    bar = tqdm(total=len(plan), unit="tensor", desc="converting", disable=not progress)
    weight_map: dict[str, str] = {}
    pending: dict[str, np.ndarray] = {}
    total_size, last = 0, -1
    for i, name, w in _converted(reader, cfg, dtype, keep):
        if pending and plan[i] != plan[last]:
            _save(pending, out_dir / files[plan[last]])
            pending.clear()
        pending[name] = w
        weight_map[name] = files[plan[i]]
        total_size += w.nbytes
        if i != last:
            bar.update()
        last = i
    _save(pending, out_dir / files[-1])
    bar.close()
    if n_shards > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    _write_json(out_dir / "config.json", cfg)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg}
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        gen["pad_token_id"] = _token_id(meta, "padding", cfg["vocab_size"])
    gen.update(sampling)
    _write_json(out_dir / "generation_config.json", gen)
    return out_dir


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
