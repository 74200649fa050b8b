"""A broken checkpoint is refused at load with InvalidCheckpoint naming what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny_models import TinyModels
from medrt import _core
from medrt.errors import InvalidCheckpoint
from safetensors.numpy import load_file, save_file


@pytest.fixture
def copy_of(tiny_models: TinyModels, tmp_path: Path) -> Callable[[str], Path]:
    """copy_of(name) -> a private copy of a tiny f32 model that the test may break."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_models.path(name, "float32"), dst)
        return dst

    return make


def _edit_tensors(model_dir: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _load_error(model_dir: Path) -> str:
    with pytest.raises(InvalidCheckpoint) as info:
        _core.Model(str(model_dir))
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("llama", "model.layers.1.mlp.down_proj.weight"),
        ("llama", "model.norm.weight"),
        ("llama_untied", "lm_head.weight"),
        ("qwen2", "model.layers.0.self_attn.k_proj.bias"),
        ("llama_bias", "model.layers.1.self_attn.o_proj.bias"),
    ],
)
def test_missing_tensor_is_named(copy_of: Callable[[str], Path], name: str, tensor: str) -> None:
    model_dir = copy_of(name)
    _edit_tensors(model_dir, lambda t: t.pop(tensor))
    message = _load_error(model_dir)
    assert tensor in message
    assert "model.safetensors" in message or str(model_dir) in message


def test_wrong_shape_is_named(copy_of: Callable[[str], Path]) -> None:
    model_dir = copy_of("llama")
    tensor = "model.layers.0.self_attn.k_proj.weight"  # [kv_heads * head_dim, hidden] = [32, 64]

    def transpose(t: dict[str, np.ndarray]) -> None:
        t[tensor] = np.ascontiguousarray(t[tensor].T)

    _edit_tensors(model_dir, transpose)
    message = _load_error(model_dir)
    assert tensor in message
    assert "64" in message and "32" in message


def test_integer_weight_is_refused(copy_of: Callable[[str], Path]) -> None:
    model_dir = copy_of("qwen2")
    tensor = "model.layers.1.mlp.gate_proj.weight"

    def to_int(t: dict[str, np.ndarray]) -> None:
        t[tensor] = t[tensor].astype(np.int32)

    _edit_tensors(model_dir, to_int)
    assert tensor in _load_error(model_dir)


def test_unsupported_architecture_is_named(copy_of: Callable[[str], Path]) -> None:
    model_dir = copy_of("llama")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["model_type"] = "mistral"
    (model_dir / "config.json").write_text(json.dumps(config))
    assert "MistralForCausalLM" in _load_error(model_dir)


def test_intact_copy_loads(copy_of: Callable[[str], Path]) -> None:
    """The breakages above are the only reason those loads fail."""
    model_dir = copy_of("qwen2")
    _edit_tensors(model_dir, lambda t: None)
    model = _core.Model(str(model_dir))
    assert model.prefill_logits([5, 6, 7]).shape == (3, model.config["vocab_size"])
