"""A LoRA adapter that changes every answer of an LLM (merged, or the default adapter) is part
of the semantic cache's model fingerprint, so base and adapter traffic never share entries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from medrt.cache import frontend_cache
from medrt.lora.request import LoRARequest


def _frontend(model_dir: Path, merged: LoRARequest | None = None,
              default: LoRARequest | None = None) -> SimpleNamespace:
    return SimpleNamespace(model_dir=model_dir,
                           _lora=SimpleNamespace(merged=merged, default=default))


def _adapter(path: Path, weight: bytes) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (path / "adapter_model.safetensors").write_bytes(weight)
    return path


def test_an_adapter_changes_the_fingerprint(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    a = _adapter(tmp_path / "a", b"adapter a")
    b = _adapter(tmp_path / "b", b"adapter b")
    plain, merged_a, default_a, merged_b = (
        frontend_cache.model_fingerprint_of(fe)
        for fe in (_frontend(base),
                   _frontend(base, merged=LoRARequest("a", 1, str(a))),
                   _frontend(base, default=LoRARequest("a", 1, str(a))),
                   _frontend(base, merged=LoRARequest("b", 2, str(b)))))
    assert len({plain, merged_a, merged_b}) == 3
    assert merged_a == default_a  # the same weights answer either way
