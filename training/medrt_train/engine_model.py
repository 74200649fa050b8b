"""The medrt C++ decoder behind the call shape of a transformers causal LM, so the evaluation
(perplexity, KL, PubMedQA accuracy) can score a model through the runtime itself, with the
kernels a deployment runs (quantized types at their own precision), instead of through a
dequantizing PyTorch copy."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


class MedrtCausalLM:
    """``model(input_ids)`` -> an object with ``.logits`` [1, T, vocab] (f32), computed by
    medrt's decoder over a fresh KV cache; ``logits_to_keep=n`` keeps the last n rows.
    ``activation_precision``: "int8" (what a deployment runs by default) or "int8x2";
    ``kv_cache_dtype``: "f32" (default) or "f16"."""

    def __init__(self, model_dir: Path, num_threads: int = 0,
                 activation_precision: str = "int8", kv_cache_dtype: str = "f32") -> None:
        from medrt import _core

        self.model_dir = Path(model_dir)
        self._model = _core.Model(str(self.model_dir), num_threads,
                                  activation_precision=activation_precision,
                                  kv_cache_dtype=kv_cache_dtype)

    def __call__(self, input_ids: torch.Tensor, logits_to_keep: int = 0,
                 **_: object) -> SimpleNamespace:
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"medrt scores one sequence at a time, got shape "
                             f"{tuple(input_ids.shape)}")
        logits = np.asarray(self._model.prefill_logits(input_ids[0].tolist()), dtype=np.float32)
        if logits_to_keep:
            logits = logits[-logits_to_keep:]
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits))[None])
