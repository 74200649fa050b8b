"""The weights' part of a fingerprint: a quantized model's method is named, not printed as a
dict (its medrt-quant section holds {"name": ..., options})."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from medrt.serve.fingerprint import weights_fingerprint
from safetensors.numpy import save_file


def test_quantization_method_is_named(tmp_path: Path) -> None:
    save_file({"w": np.zeros((2, 2), np.float16)}, str(tmp_path / "model.safetensors"))
    for quant, label in [
        ({"recipe": "paper", "method": {"name": "gptq", "damp": 0.01}}, "quantization:paper/gptq"),
        ({"recipe": "gguf", "method": {"name": "gguf", "types": {"Q4_1": 1}}},
         "quantization:gguf"),
        ({"method": "awq"}, "quantization:awq"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({"quantization": quant}))
        assert weights_fingerprint(tmp_path).weight_types == ["F16", label]
