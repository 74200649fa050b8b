"""Writes quant_reference.safetensors: quantized weights made by medrt-train's RTN quantizer,
their numpy dequantization (medrt_train.quant.types.dequantize, the format's reference), input
rows and the exact product, for cpp/tests/test_kernels_quant.cpp to check the C++ kernels
against. tests/quant/test_kernel_reference.py checks that the file still matches the reference.

    PYTHONPATH=training python cpp/tests/data/make_quant_reference.py
"""
from pathlib import Path

import numpy as np
from medrt_train.quant.types import dequantize, parse_type, quantize_rtn
from safetensors.numpy import save_file

OUT_FEATURES, IN_FEATURES, ROWS = 20, 256, 5  # 20: not a multiple of the kernels' 16-row group
TYPES = ("int8", "nf4", "int4-g32", "int4-g64", "int4-g128", "int6-g64")


def build() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((ROWS, IN_FEATURES)).astype(np.float32)
    out = {"x": x}
    for spec in TYPES:
        w = (rng.standard_normal((OUT_FEATURES, IN_FEATURES)) * 0.05).astype(np.float32)
        tensors = quantize_rtn(parse_type(spec), w)
        deq = dequantize(parse_type(spec), tensors).astype(np.float32)
        for name, t in tensors.items():
            out[f"{spec}.{name}"] = t
        out[f"{spec}.dequant"] = deq
        out[f"{spec}.y"] = (x.astype(np.float64) @ deq.astype(np.float64).T).astype(np.float32)
    return out


if __name__ == "__main__":
    save_file(build(), str(Path(__file__).with_name("quant_reference.safetensors")))
