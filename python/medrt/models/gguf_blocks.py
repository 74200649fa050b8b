"""GGUF Q4_0, Q4_1 and Q8_0 blocks -> medrt-quant tensors, bit for bit.

docs/quantized-format.md ("GGUF blocks") is the specification. A block of 32 weights is an f16
scale `d`, for Q4_1 an f16 minimum `m`, then the codes: 16 bytes of nibbles (byte j holds
weight j low and weight j + 16 high, medrt's own packing) or 32 int8. Splitting a row of blocks
into the codes, scales and mins arrays moves bytes and never computes, so the engine reads
exactly the weights llama.cpp reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from medrt.errors import InvalidCheckpoint

Q = gguf.GGMLQuantizationType
GROUP = 32  # weights per block for all three types


@dataclass(frozen=True)
class KeptType:
    """How one GGUF type is stored in medrt-quant (a module entry of config.json)."""

    medrt_type: str  # "int4" or "int8"
    offset: str | None  # int4: "zeros" or "mins"
    version: int  # the format version that holds it

    def entry(self, out_features: int, in_features: int) -> dict:
        e: dict = {"type": self.medrt_type, "group_size": GROUP,
                   "shape": [out_features, in_features]}
        if self.offset == "mins":
            e["offset"] = "mins"
        return e


KEPT: dict[Q, KeptType] = {
    Q.Q4_0: KeptType("int4", "zeros", 1),  # (q - 8) * d: zeros of 8
    Q.Q4_1: KeptType("int4", "mins", 2),   # q * d + m
    Q.Q8_0: KeptType("int8", None, 2),     # q * d, f16 scale per 32
}


def split_blocks(name: str, data: np.ndarray, qtype: Q, out_features: int, in_features: int
                 ) -> dict[str, np.ndarray]:
    """The medrt tensors (suffix -> array) of GGUF tensor `name` of type `qtype` in KEPT, whose
    raw bytes `data` hold a weight [out, in] row by row. InvalidCheckpoint naming the tensor
    when the bytes are not exactly its blocks."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if in_features % GROUP:
        raise InvalidCheckpoint(f"GGUF tensor '{name}': rows of {in_features} are not whole "
                                f"{qtype.name} blocks of {GROUP}")
    groups = in_features // GROUP
    expected = out_features * groups * block_bytes
    if raw.size != expected:
        raise InvalidCheckpoint(
            f"GGUF tensor '{name}': {qtype.name} data is {raw.size} bytes, expected {expected} "
            f"({out_features} rows of {groups} blocks of {block_bytes} bytes): a block is "
            "truncated")
    blocks = raw.reshape(out_features, groups, block_bytes)

    def f16(start: int) -> np.ndarray:
        return np.ascontiguousarray(blocks[:, :, start:start + 2]).view(np.float16)[:, :, 0]

    if qtype == Q.Q8_0:
        codes = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8)
        return {"qweight": codes.reshape(out_features, in_features), "scales": f16(0)}
    if qtype == Q.Q4_0:
        return {"qweight": np.ascontiguousarray(blocks[:, :, 2:]).reshape(out_features, -1),
                "scales": f16(0),
                "zeros": np.full((out_features, groups), 8, np.float16)}
    if qtype == Q.Q4_1:
        return {"qweight": np.ascontiguousarray(blocks[:, :, 4:]).reshape(out_features, -1),
                "scales": f16(0), "mins": f16(2)}
    raise InvalidCheckpoint(f"GGUF tensor '{name}': type {qtype.name} is not kept as blocks")
