"""Reading peft adapters (and refusing bad ones with errors that name what is wrong) and
merging them into the float weights, without the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers.lora_adapters import build_adapter, peft_model
from helpers.tiny_models import build_tiny_model
from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.lora import LoRARequest, read_adapter
from medrt.lora.adapter import base_linear_shapes
from medrt.lora.manager import LoraManager
from medrt.lora.merge import merge_into_dir
from medrt.lora.tensors import read_tensors


@pytest.fixture(scope="module")
def shapes(tiny_llama: Path) -> dict[str, tuple[int, int]]:
    return base_linear_shapes(tiny_llama)


def test_reads_every_projection_with_its_scale(tiny_llama: Path, tmp_path: Path,
                                               shapes: dict) -> None:
    path = build_adapter(tiny_llama, tmp_path / "a", r=4, alpha=8.0, use_rslora=True)
    adapter = read_adapter(path, shapes, max_lora_rank=64)
    assert adapter.rank == 4 and adapter.scale == pytest.approx(8.0 / math.sqrt(4))
    assert len(adapter.modules) == 7 * 2
    model = peft_model(tiny_llama, path)
    q = adapter.modules["model.layers.1.self_attn.q_proj"]
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    np.testing.assert_array_equal(q.a, layer.lora_A["default"].weight.detach().numpy())
    np.testing.assert_array_equal(q.b, layer.lora_B["default"].weight.detach().numpy())
    assert q.scale == pytest.approx(layer.scaling["default"])
    plain = read_adapter(build_adapter(tiny_llama, tmp_path / "b", r=2, alpha=6.0,
                                       targets=["v_proj"]), shapes)
    assert sorted(plain.modules) == ["model.layers.0.self_attn.v_proj",
                                     "model.layers.1.self_attn.v_proj"]
    assert plain.scale == pytest.approx(3.0)


def test_bad_adapters_name_what_is_wrong(tiny_llama: Path, tmp_path: Path,
                                        shapes: dict) -> None:
    big = build_adapter(tiny_llama, tmp_path / "big", r=16)
    with pytest.raises(InvalidCheckpoint, match=r"r=16 is above max_lora_rank=8"):
        read_adapter(big, shapes, max_lora_rank=8)

    saved = build_adapter(tiny_llama, tmp_path / "mts", modules_to_save=["lm_head"])
    with pytest.raises(InvalidCheckpoint, match="modules_to_save"):
        read_adapter(saved, shapes)

    # An adapter for a deeper model: its layer 2 is not in the 2-layer base.
    deep = tmp_path / "deep"
    build_adapter(tiny_llama, deep, r=2, targets=["q_proj"])
    tensors, _ = read_tensors(deep / "adapter_model.safetensors")
    from safetensors.numpy import save_file
    save_file({k.replace("layers.1.", "layers.2."): v for k, v in tensors.items()},
              str(deep / "adapter_model.safetensors"))
    with pytest.raises(InvalidCheckpoint, match=r"'model.layers.2.self_attn.q_proj' is not in "
                                                r"the base"):
        read_adapter(deep, shapes)

    # Trained on a model with a wider MLP: shapes do not match the base.
    wide = build_tiny_model("llama", "float32", True, tmp_path / "wide", with_tokenizer=False,
                            intermediate_size=96)
    other = build_adapter(wide, tmp_path / "wide_adapter", r=2, targets=["gate_proj"])
    with pytest.raises(InvalidCheckpoint, match=r"gate_proj' has lora_A \[2, 64\] and lora_B "
                                                r"\[96, 2\]; the base weight \[128, 64\]"):
        read_adapter(other, shapes)

    with pytest.raises(InvalidCheckpoint, match="no adapter_config.json"):
        read_adapter(tmp_path, shapes)
    cfg = json.loads((big / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(InvalidCheckpoint, match="DoRA"):
        read_adapter(big, shapes)


def test_damaged_adapters_are_refused_naming_the_tensor(tiny_llama: Path, tmp_path: Path,
                                                         shapes: dict) -> None:
    from safetensors.numpy import save_file

    def adapter(name: str) -> Path:
        return build_adapter(tiny_llama, tmp_path / name, r=2, targets=["q_proj"])

    # cut in half: the offsets of the second half's tensors lie beyond the end
    cut = adapter("cut") / "adapter_model.safetensors"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(InvalidCheckpoint, match=r"tensor '.*lora_.*' has data_offsets .* "
                                                r"\(truncated\?\)"):
        read_adapter(cut.parent, shapes)
    # a header that promises more than the file holds
    head = adapter("head") / "adapter_model.safetensors"
    head.write_bytes((10**6).to_bytes(8, "little") + head.read_bytes()[8:])
    with pytest.raises(InvalidCheckpoint, match="header claims 1000000 bytes"):
        read_adapter(head.parent, shapes)
    # weights that diverged, and integer weights
    for name, bad, match in [("nan", np.nan, "NaN or infinite"), ("inf", np.inf, "NaN or inf"),
                             ("int", None, "is I32; LoRA weights are F32, F16 or BF16")]:
        path = adapter(name)
        tensors, _ = read_tensors(path / "adapter_model.safetensors")
        if bad is None:
            tensors = {k: v.astype(np.int32) for k, v in tensors.items()}
        else:
            tensors = {k: (np.full_like(v, bad) if "lora_B" in k else v)
                       for k, v in tensors.items()}
        save_file(tensors, str(path / "adapter_model.safetensors"))
        with pytest.raises(InvalidCheckpoint, match=match):
            read_adapter(path, shapes)
    path = adapter("alpha")
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": "x"}))
    with pytest.raises(InvalidCheckpoint, match="lora_alpha must be a number, got 'x'"):
        read_adapter(path, shapes)


def test_unknown_names_and_bad_requests(tiny_llama: Path, tmp_path: Path) -> None:
    manager = LoraManager(tiny_llama, enable_lora=True)
    with pytest.raises(InvalidRequest, match="unknown LoRA adapter 'cardiology'"):
        manager.resolve("cardiology")
    with pytest.raises(InvalidRequest, match="unknown LoRA adapter 'cardiology'"):
        manager.resolve(LoRARequest("cardiology", 3))
    with pytest.raises(InvalidRequest, match="no adapter_config.json"):
        manager.resolve(LoRARequest("cardiology", 3, str(tmp_path)))
    with pytest.raises(InvalidRequest, match="lora_int_id"):
        LoRARequest("x", 0, "p")
    with pytest.raises(InvalidRequest, match="enable_lora"):
        LoraManager(tiny_llama).resolve(LoRARequest("x", 1, "p"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_matches_peft_merge_and_unload(tiny_model_dir, tmp_path: Path, dtype: str) -> None:
    base = tiny_model_dir("llama", dtype)
    path = build_adapter(base, tmp_path / "a", r=4, alpha=8.0, use_rslora=True)
    adapter = read_adapter(path, base_linear_shapes(base))
    out = merge_into_dir(base, adapter, tmp_path / "merged")
    assert (out / "tokenizer.json").is_symlink()
    merged, dtypes = read_tensors(out / "model.safetensors")
    want = peft_model(base, path).merge_and_unload().state_dict()
    for name, value in merged.items():
        ref = want[name].float().numpy()
        if dtype == "float32":
            np.testing.assert_allclose(value, ref, atol=1e-6, err_msg=name)
        else:  # one rounding to bf16 of the f32 sum: within half a bf16 ulp of peft's
            assert dtypes[name] == "BF16"
            np.testing.assert_allclose(value, ref, rtol=2 ** -8, atol=1e-6, err_msg=name)


def test_base_shapes_of_quantized_modules(tmp_path: Path) -> None:
    from medrt.lora.tensors import write_tensors

    tensors = {"model.layers.0.mlp.down_proj.qweight": np.zeros((64, 64), np.uint8),  # 4-bit
               "model.layers.0.mlp.up_proj.qweight": np.zeros((128, 64), np.int8),   # int8
               "model.layers.0.mlp.down_proj.scales": np.zeros((64, 2), np.float16),
               "model.norm.weight": np.ones(64, np.float32)}
    dtypes = {"model.layers.0.mlp.down_proj.qweight": "U8",
              "model.layers.0.mlp.up_proj.qweight": "I8",
              "model.layers.0.mlp.down_proj.scales": "F16", "model.norm.weight": "F32"}
    write_tensors(tmp_path / "model.safetensors", tensors, dtypes)
    assert base_linear_shapes(tmp_path) == {"model.layers.0.mlp.down_proj": (64, 128),
                                            "model.layers.0.mlp.up_proj": (128, 64)}
