"""peft LoRA adapters as medrt reads them: adapter_config.json and adapter_model.safetensors,
checked against the base model before anything reaches the engine.

Supported: peft_type LORA with `r`, `lora_alpha`, `use_rslora` on any of the seven projections
(q, k, v, o, gate, up, down) of the base. Refused, with the reason: `modules_to_save` (full
copies of base modules, not a low-rank delta), DoRA, LoRA biases, per-module rank or alpha
patterns, and anything whose shapes do not match the base."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medrt.errors import InvalidCheckpoint
from medrt.lora.tensors import read_header, read_tensors

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])"
                     r"(?:\.default)?\.weight$")
_FLOAT_DTYPES = ("F32", "F16", "BF16")  # what peft saves; anything else is not an adapter


@dataclass
class LoraModule:
    """The delta of one base linear: y += scale * (x @ a.T) @ b.T."""

    name: str         # base module name, "model.layers.3.self_attn.q_proj"
    a: np.ndarray     # [r, in] float32
    b: np.ndarray     # [out, r] float32
    scale: float

    def delta(self) -> np.ndarray:
        """The dense [out, in] delta scale * b @ a (merged mode)."""
        return self.scale * (self.b @ self.a)


@dataclass
class LoraAdapter:
    path: Path
    rank: int
    alpha: float
    use_rslora: bool
    modules: dict[str, LoraModule] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank


def base_linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """{module name: (out, in)} of every linear of the base's safetensors files: 2-D
    `*.weight`, or medrt's quantized `*.qweight` (int8 [out, in]; 4-bit codes packed two per
    byte, [out, in/2]), so adapters check against quantized bases too."""
    shapes = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for name, info in read_header(f).items():
            if len(info["shape"]) != 2:
                continue
            out, cols = info["shape"]
            if name.endswith(".weight"):
                shapes[name[: -len(".weight")]] = (out, cols)
            elif name.endswith(".qweight"):
                shapes[name[: -len(".qweight")]] = (out, cols * 2 if info["dtype"] == "U8"
                                                    else cols)
    return shapes


def read_adapter(path: str | Path, base_shapes: dict[str, tuple[int, int]],
                 max_lora_rank: int | None = None) -> LoraAdapter:
    """Reads and checks the peft adapter at `path` against the base's linear shapes; every
    error is an InvalidCheckpoint that names the adapter and what was wrong."""
    path = Path(path).expanduser()
    cfg_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.is_file():
        raise InvalidCheckpoint(f"LoRA adapter {path}: no adapter_config.json")
    if not weights_file.is_file():
        if (path / "adapter_model.bin").is_file():
            raise InvalidCheckpoint(f"LoRA adapter {path}: adapter_model.bin (pickle) is not "
                                    "read; save the adapter with safe_serialization=True")
        raise InvalidCheckpoint(f"LoRA adapter {path}: no adapter_model.safetensors")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise InvalidCheckpoint(f"LoRA adapter {cfg_file}: not valid JSON: {e}") from e
    _check_config(path, cfg)
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))
    if not math.isfinite(alpha):
        raise InvalidCheckpoint(f"LoRA adapter {path}: lora_alpha must be finite, got {alpha}")
    if max_lora_rank is not None and rank > max_lora_rank:
        raise InvalidCheckpoint(f"LoRA adapter {path}: rank r={rank} is above max_lora_rank="
                                f"{max_lora_rank}; raise max_lora_rank or use a smaller rank")
    adapter = LoraAdapter(path, rank, alpha, bool(cfg.get("use_rslora", False)))
    tensors, dtypes = read_tensors(weights_file)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        if dtypes[name] not in _FLOAT_DTYPES:
            raise InvalidCheckpoint(f"LoRA adapter {weights_file}: tensor '{name}' is "
                                    f"{dtypes[name]}; LoRA weights are F32, F16 or BF16")
        if not np.isfinite(t).all():
            # An adapter that diverged in training: its NaN/Inf would turn every answer into
            # token 0 with a normal finish, so it is refused here.
            raise InvalidCheckpoint(f"LoRA adapter {weights_file}: tensor '{name}' holds NaN "
                                    "or infinite values")
        m = _TENSOR.match(name)
        if m is None:
            raise InvalidCheckpoint(f"LoRA adapter {weights_file}: tensor '{name}' is not a "
                                    "lora_A / lora_B weight (embedding LoRA and extra modules "
                                    "are not supported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = t
    if not pairs:
        raise InvalidCheckpoint(f"LoRA adapter {weights_file}: holds no LoRA weights")
    for module, ab in sorted(pairs.items()):
        adapter.modules[module] = _checked_module(path, module, ab, rank, adapter.scale,
                                                  base_shapes)
    return adapter


def _check_config(path: Path, cfg: dict) -> None:
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise InvalidCheckpoint(f"LoRA adapter {path}: peft_type {peft_type!r} is not LORA")
    if cfg.get("modules_to_save"):
        raise InvalidCheckpoint(f"LoRA adapter {path}: modules_to_save {cfg['modules_to_save']} "
                                "is not supported (full module copies are not a LoRA delta); "
                                "train without modules_to_save or merge the adapter offline")
    if cfg.get("use_dora"):
        raise InvalidCheckpoint(f"LoRA adapter {path}: DoRA (use_dora) is not supported")
    if cfg.get("bias", "none") != "none":
        raise InvalidCheckpoint(f"LoRA adapter {path}: bias={cfg['bias']!r} is not supported "
                                "(only bias='none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise InvalidCheckpoint(f"LoRA adapter {path}: {key} is not supported "
                                    "(one rank and alpha for all modules)")
    if cfg.get("fan_in_fan_out"):
        raise InvalidCheckpoint(f"LoRA adapter {path}: fan_in_fan_out is not supported")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        raise InvalidCheckpoint(f"LoRA adapter {path}: r must be a positive integer, "
                                f"got {cfg.get('r')!r}")
    alpha = cfg.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InvalidCheckpoint(f"LoRA adapter {path}: lora_alpha must be a number, "
                                f"got {alpha!r}")


def _checked_module(path: Path, module: str, ab: dict[str, np.ndarray], rank: int,
                    scale: float, base_shapes: dict[str, tuple[int, int]]) -> LoraModule:
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in PROJECTIONS:
        raise InvalidCheckpoint(f"LoRA adapter {path}: target module '{module}' is not one of "
                                f"the projections {', '.join(PROJECTIONS)}")
    if module not in base_shapes:
        raise InvalidCheckpoint(f"LoRA adapter {path}: target module '{module}' is not in the "
                                "base model (another architecture or size?)")
    if set(ab) != {"A", "B"}:
        raise InvalidCheckpoint(f"LoRA adapter {path}: module '{module}' lacks lora_"
                                f"{({'A', 'B'} - set(ab)).pop()}")
    a, b = ab["A"], ab["B"]
    out, inp = base_shapes[module]
    if a.shape != (rank, inp) or b.shape != (out, rank):
        raise InvalidCheckpoint(
            f"LoRA adapter {path}: module '{module}' has lora_A {list(a.shape)} and lora_B "
            f"{list(b.shape)}; the base weight [{out}, {inp}] with r={rank} needs lora_A "
            f"[{rank}, {inp}] and lora_B [{out}, {rank}]")
    return LoraModule(module, np.ascontiguousarray(a, np.float32),
                      np.ascontiguousarray(b, np.float32), scale)


def adapter_sha256(path: str | Path) -> str:
    """sha256 over an adapter directory's files (relative names and bytes, in name order): the
    identity of the adapter's weights in fingerprints and cache scopes."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
