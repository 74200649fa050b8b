"""Weight types of medrt's quantized format: parameters, codes, packing, dequantization.

Everything here is numpy and is the reference the C++ kernels are tested against; the layout
is specified bit by bit in docs/quantized-format.md. A quantized linear layer `M` with weight
[out, in] is stored as tensors `M.qweight`, `M.scales` and, for int4, `M.zeros` (or, format
version 2, `M.mins`: GGUF Q4_1's form). int6 (format version 3) stores 6-bit codes, 24 bytes per
32 inputs (pack_int6), and one f16 scale per group.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# NF4 code table exactly as bitsandbytes defines it (QLoRA, Dettmers et al. 2023): quantiles
# of N(0, 1) normalised to [-1, 1], with an exact zero at index 7.
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)
_NF4_MIDPOINTS = (NF4_TABLE[1:] + NF4_TABLE[:-1]) / 2

FLOAT_TYPES = {"f32": np.float32, "f16": np.float16, "bf16": None}  # numpy has no bf16
QUANT_TYPES = ("int8", "nf4", "int4", "int6")
INT4_GROUP_SIZES = (32, 64, 128)
# int8 with group scales (format version 2; GGUF Q8_0 is int8-g32) takes the same sizes.
INT8_GROUP_SIZES = INT4_GROUP_SIZES
# int6 (format version 3): w = (code - 32) * scale, codes 0..63, the int4 group sizes.
INT6_GROUP_SIZES = INT4_GROUP_SIZES
INT6_ZERO = 32
NF4_GROUP_SIZE = 64
# 4-bit codes are packed per chunk of 32 consecutive input elements (see pack_nibbles).
NIBBLE_CHUNK = 32


class QuantFormatError(ValueError):
    """A quantized checkpoint or a type spec that breaks docs/quantized-format.md."""


@dataclass(frozen=True)
class WeightType:
    """One storage type: `int8` (per row, or with group scales), `nf4`, `int4` (with a group
    size; offsets as `zeros`, or as `mins` when `mins`), `int6` (with a group size) or a float
    dtype."""

    name: str
    group_size: int | None = None
    mins: bool = False  # int4 only: w = code * scale + min (format version 2, GGUF Q4_1)

    @property
    def quantized(self) -> bool:
        return self.name in QUANT_TYPES

    @property
    def format_version(self) -> int:
        """The lowest format version that can store this type."""
        if self.name == "int6":
            return 3
        return 2 if self.mins or (self.name == "int8" and self.group_size is not None) else 1

    def __str__(self) -> str:
        if self.name in ("int4", "int6", "int8") and self.group_size is not None:
            return f"{self.name}-g{self.group_size}" + ("-mins" if self.mins else "")
        return self.name

    def to_json(self) -> dict:
        out: dict = {"type": self.name}
        if self.group_size is not None:
            out["group_size"] = self.group_size
        if self.mins:
            out["offset"] = "mins"
        return out


def parse_type(spec: str, group_size: int | None = None, mins: bool = False) -> WeightType:
    """Parse `int8`, `int8-g32`, `nf4`, `int4`, `int4-g64`, `int6`, `int6-g64`, `f16`, `bf16`
    or `f32` (group size optional; int4 and int6 default to 64). `mins` asks for int4 with mins
    instead of zeros."""
    spec = spec.strip().lower()
    if spec.endswith("-mins"):
        spec, mins = spec[: -len("-mins")], True
    name, _, suffix = spec.partition("-g")
    if suffix:
        if not suffix.isdigit():
            raise QuantFormatError(f"bad weight type {spec!r}: expected e.g. int4-g64")
        if group_size is not None and group_size != int(suffix):
            raise QuantFormatError(f"weight type {spec!r} contradicts group_size {group_size}")
        group_size = int(suffix)
    if mins and name != "int4":
        raise QuantFormatError(f"only int4 stores mins, not {name}")
    if name == "int4":
        group_size = 64 if group_size is None else group_size
        if group_size not in INT4_GROUP_SIZES:
            raise QuantFormatError(
                f"int4 group size {group_size} is not one of {INT4_GROUP_SIZES}")
        return WeightType("int4", group_size, mins)
    if name == "int6":
        group_size = 64 if group_size is None else group_size
        if group_size not in INT6_GROUP_SIZES:
            raise QuantFormatError(
                f"int6 group size {group_size} is not one of {INT6_GROUP_SIZES}")
        return WeightType("int6", group_size)
    if name == "int8" and group_size is not None:
        if group_size not in INT8_GROUP_SIZES:
            raise QuantFormatError(
                f"int8 group size {group_size} is not one of {INT8_GROUP_SIZES}")
        return WeightType("int8", group_size)
    if name == "nf4":
        if group_size not in (None, NF4_GROUP_SIZE):
            raise QuantFormatError(f"nf4 uses groups of {NF4_GROUP_SIZE}, not {group_size}")
        return WeightType("nf4", NF4_GROUP_SIZE)
    if name == "int8" or name in FLOAT_TYPES:
        if group_size is not None:
            raise QuantFormatError(f"{name} takes no group size (got {group_size})")
        return WeightType(name)
    raise QuantFormatError(
        f"unknown weight type {spec!r}: expected one of int8[-g32|-g64|-g128], nf4, "
        "int4[-g32|-g64|-g128], int6[-g32|-g64|-g128], f16, bf16, f32")


def tensor_specs(wt: WeightType, out_features: int, in_features: int
                 ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor suffix -> (shape, safetensors dtype) of a quantized [out, in] weight."""
    if wt.name == "int8":
        if wt.group_size is not None:
            return {"qweight": ((out_features, in_features), "I8"),
                    "scales": ((out_features, in_features // wt.group_size), "F16")}
        return {"qweight": ((out_features, in_features), "I8"),
                "scales": ((out_features,), "F32")}
    if wt.name not in ("nf4", "int4", "int6"):
        raise QuantFormatError(f"{wt} is not a quantized type")
    groups = in_features // wt.group_size
    if wt.name == "int6":
        return {"qweight": ((out_features, in_features * 3 // 4), "U8"),
                "scales": ((out_features, groups), "F16")}
    specs = {"qweight": ((out_features, in_features // 2), "U8"),
             "scales": ((out_features, groups), "F16")}
    if wt.name == "int4":
        specs["mins" if wt.mins else "zeros"] = ((out_features, groups), "F16")
    return specs


def check_shape(wt: WeightType, out_features: int, in_features: int, where: str) -> None:
    """Raise QuantFormatError naming `where` when `wt` cannot store an [out, in] weight."""
    if wt.group_size is not None and in_features % wt.group_size:
        raise QuantFormatError(
            f"{where}: group size {wt.group_size} does not divide the input dimension "
            f"{in_features}")


# ---- parameters and codes; `w` is [rows, k] where k is one group (or a whole int8 row) ----

def fit_params(wt: WeightType, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-row parameters for the values `w` [rows, k], already rounded to their stored dtype."""
    if wt.name == "int8":
        scale = np.abs(w).max(axis=1) / 127.0
        dtype = np.float16 if wt.group_size is not None else np.float32
        return (np.where(scale > 0, scale, 1.0).astype(dtype),)
    if wt.name == "nf4":
        absmax = np.abs(w).max(axis=1).astype(np.float16)
        return (np.where(absmax > 0, absmax, np.float16(1.0)),)
    if wt.name == "int6":
        scale = (np.abs(w).max(axis=1) / np.float32(31)).astype(np.float16)
        return (np.where(scale > 0, scale, np.float16(1.0)),)
    if wt.mins:
        return int4_min_params(w.min(axis=1), w.max(axis=1))
    return int4_params(w.min(axis=1), w.max(axis=1))


def int4_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero whose 16 levels run from `lo` to `hi` (per row).

    The zero point is kept fractional (f16), as GGUF Q4_1's float minimum is: rounding it to
    an integer, as GPTQ's reference code does, moves the grid off the group's range by up to
    half a step and forces 0 inside it, which costs accuracy for nothing (the kernel's cost of
    a zero point is the same either way; docs/quantized-format.md).
    """
    scale = ((hi - lo) / 15.0).astype(np.float16)
    scale = np.where(scale > 0, scale, np.float16(1.0))
    zero = (-lo / scale.astype(np.float32)).astype(np.float16)
    return scale, zero


def int4_min_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and min (GGUF Q4_1's form) whose 16 levels run from `lo` to `hi` (per row)."""
    scale = ((hi - lo) / 15.0).astype(np.float16)
    return np.where(scale > 0, scale, np.float16(1.0)), lo.astype(np.float16)


def encode(wt: WeightType, w: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
    """Nearest code of each value of `w` [rows, k] given per-row `params` (unpacked ints)."""
    p = [x.astype(np.float32)[:, None] for x in params]
    if wt.name == "int8":
        return np.clip(np.round(w / p[0]), -127, 127).astype(np.int8)
    if wt.name == "nf4":
        return np.searchsorted(_NF4_MIDPOINTS, w / p[0]).astype(np.uint8)
    if wt.name == "int6":
        return np.clip(np.round(w / p[0]) + INT6_ZERO, 0, 63).astype(np.uint8)
    if wt.mins:
        return np.clip(np.round((w - p[1]) / p[0]), 0, 15).astype(np.uint8)
    return np.clip(np.round(w / p[0] + p[1]), 0, 15).astype(np.uint8)


def decode(wt: WeightType, codes: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
    """Values of `codes` [rows, k] under per-row `params`, as float32."""
    p = [x.astype(np.float32)[:, None] for x in params]
    if wt.name == "int8":
        return codes.astype(np.float32) * p[0]
    if wt.name == "nf4":
        return NF4_TABLE[codes] * p[0]
    if wt.name == "int6":
        return (codes.astype(np.float32) - INT6_ZERO) * p[0]
    if wt.mins:
        return codes.astype(np.float32) * p[0] + p[1]
    return (codes.astype(np.float32) - p[1]) * p[0]


# ---- packing ----

def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes [rows, in] into bytes [rows, in/2].

    Per chunk of 32 consecutive inputs, byte j (0..15) holds element j in its low nibble and
    element j+16 in its high nibble, so a SIMD kernel gets two runs of 16 contiguous weights
    from one 16-byte load with a mask and a shift (the layout of llama.cpp's Q4 blocks).
    """
    rows, cols = codes.shape
    c = codes.astype(np.uint8).reshape(rows, cols // NIBBLE_CHUNK, 2, NIBBLE_CHUNK // 2)
    return (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(rows, cols // 2)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_nibbles: bytes [rows, in/2] -> codes [rows, in] (uint8, 0..15)."""
    rows, half = packed.shape
    b = packed.reshape(rows, half // (NIBBLE_CHUNK // 2), 1, NIBBLE_CHUNK // 2)
    return np.concatenate([b & 0x0F, b >> 4], axis=2).reshape(rows, half * 2)


# int6: per chunk of 32 inputs, 16 bytes of low nibbles (pack_nibbles) then 8 bytes of high bits.
INT6_CHUNK_BYTES = 24


def pack_int6(codes: np.ndarray) -> np.ndarray:
    """Pack 6-bit codes [rows, in] (0..63, `in` a multiple of 32) into bytes [rows, in*3/4].

    Per chunk of 32 consecutive inputs c[0..31], 24 bytes: bytes 0..15 are pack_nibbles of the
    low 4 bits (byte j = c[j] & 15 | (c[j+16] & 15) << 4); byte 16 + 4v + t (v 0..1, t 0..3)
    holds the high 2 bits (c >> 4) of c[8v+t] in bits 0-1, c[16+8v+t] in bits 2-3, c[8v+4+t]
    in bits 4-5 and c[16+8v+4+t] in bits 6-7: one nibble per nibble byte, so the high bits
    of nibble bytes 4u..4u+3 sit in one nibble of bytes 16+4(u//2)..+3.
    """
    codes = np.asarray(codes)
    rows, cols = codes.shape
    if cols % NIBBLE_CHUNK:
        raise QuantFormatError(f"int6 packs rows of a multiple of {NIBBLE_CHUNK}, not {cols}")
    if codes.size and (codes.min() < 0 or codes.max() > 63):
        raise QuantFormatError("int6 codes must be in 0..63")
    c = codes.astype(np.uint8)
    low = pack_nibbles(c & 0x0F).reshape(rows, cols // NIBBLE_CHUNK, 16)
    # h[r, chunk, half, v, s, t] = c[r, 32 chunk + 16 half + 8v + 4s + t] >> 4
    h = (c >> 4).reshape(rows, cols // NIBBLE_CHUNK, 2, 2, 2, 4)
    high = (h[:, :, 0, :, 0] | h[:, :, 1, :, 0] << 2 | h[:, :, 0, :, 1] << 4
            | h[:, :, 1, :, 1] << 6).reshape(rows, cols // NIBBLE_CHUNK, 8)  # k = 4v + t
    return np.concatenate([low, high], axis=2).reshape(rows, cols * 3 // 4)


def unpack_int6(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_int6: bytes [rows, in*3/4] -> codes [rows, in] (uint8, 0..63)."""
    rows, nbytes = packed.shape
    if nbytes % INT6_CHUNK_BYTES:
        raise QuantFormatError(
            f"int6 rows are whole chunks of {INT6_CHUNK_BYTES} bytes, not {nbytes} bytes")
    chunks = nbytes // INT6_CHUNK_BYTES
    b = packed.astype(np.uint8).reshape(rows, chunks, INT6_CHUNK_BYTES)
    low = unpack_nibbles(b[:, :, :16].reshape(rows, chunks * 16))
    high = b[:, :, 16:].reshape(rows, chunks, 1, 2, 1, 4)  # [.., v, .., t]
    # fields[..., half, v, s, t] = bits 2 * (half + 2 s) of high byte 4v + t
    h = np.concatenate([np.concatenate([high & 3, high >> 4 & 3], axis=4),
                        np.concatenate([high >> 2 & 3, high >> 6], axis=4)], axis=2)
    return low | (h.reshape(rows, chunks * NIBBLE_CHUNK) << 4)


# ---- whole weights ----

def _grouped(w: np.ndarray, group: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(rows * (cols // group), group)


def quantize_groups(wt: WeightType, w: np.ndarray,
                    fit: Callable[[np.ndarray], tuple[np.ndarray, ...]]
                    ) -> dict[str, np.ndarray]:
    """Quantize a float weight [out, in] into its stored tensors with the parameters
    `fit(groups)` gives for its groups [out * groups_per_row, group] (an int8 row is one
    group), each value rounded to its nearest code."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    check_shape(wt, rows, cols, "weight")
    g = _grouped(w, wt.group_size or cols)
    params = fit(g)
    codes = encode(wt, g, params).reshape(rows, cols)
    return assemble(wt, codes, [p.reshape(rows, -1) for p in params])


def quantize_rtn(wt: WeightType, w: np.ndarray) -> dict[str, np.ndarray]:
    """Round-to-nearest quantization of a float weight [out, in] into its stored tensors."""
    return quantize_groups(wt, w, lambda groups: fit_params(wt, groups))


def assemble(wt: WeightType, codes: np.ndarray, params: list[np.ndarray]
             ) -> dict[str, np.ndarray]:
    """Stored tensors from unpacked codes [out, in] and per-group params [out, groups]."""
    if wt.name == "int8" and wt.group_size is None:
        return {"qweight": codes.astype(np.int8),
                "scales": params[0].reshape(-1).astype(np.float32)}
    if wt.name == "int8":
        return {"qweight": codes.astype(np.int8), "scales": params[0].astype(np.float16)}
    packed = pack_int6(codes) if wt.name == "int6" else pack_nibbles(codes)
    out = {"qweight": packed, "scales": params[0].astype(np.float16)}
    if wt.name == "int4":
        out["mins" if wt.mins else "zeros"] = params[1].astype(np.float16)
    return out


def dequantize(wt: WeightType, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """Reference dequantizer: stored tensors -> float32 weight [out, in]."""
    if wt.name == "int8":
        codes = tensors["qweight"]
        if wt.group_size is None:
            return decode(wt, codes, (tensors["scales"],))
    elif wt.name == "int6":
        codes = unpack_int6(tensors["qweight"])
    else:
        codes = unpack_nibbles(tensors["qweight"])
    rows, cols = codes.shape
    params = [tensors["scales"].reshape(-1)]
    if wt.name == "int4":
        params.append(tensors["mins" if wt.mins else "zeros"].reshape(-1))
    return decode(wt, _grouped(codes, wt.group_size), tuple(params)).reshape(rows, cols)


def stored_bytes(wt: WeightType, out_features: int, in_features: int) -> int:
    """Bytes a weight [out, in] takes in type `wt` (float types: elements x width)."""
    if not wt.quantized:
        return out_features * in_features * (4 if wt.name == "f32" else 2)
    width = {"I8": 1, "U8": 1, "F16": 2, "F32": 4}
    return sum(int(np.prod(shape)) * width[dt]
               for shape, dt in tensor_specs(wt, out_features, in_features).values())
