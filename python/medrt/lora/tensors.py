"""Reading and writing safetensors files as numpy arrays, bf16 included (numpy has no bf16:
its bits are widened to f32 on read and rounded to nearest even on write). Keeps the runtime
free of torch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors import TensorSpec, serialize_file

from medrt.errors import InvalidCheckpoint

_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
          "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}
_SPEC = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
         "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8"}


def read_header(path: Path) -> dict[str, dict]:
    """{name: {"dtype", "shape", "data_offsets"}} of a .safetensors file (metadata left out)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise InvalidCheckpoint(f"{path}: not a readable safetensors file: {e}") from e
    header.pop("__metadata__", None)
    return header


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of `path` as a float32 (floats) or native (ints) array, and its stored
    dtype name."""
    header = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out, dtypes = {}, {}
    for name, info in header.items():
        dt = info["dtype"]
        if dt not in _NUMPY:
            raise InvalidCheckpoint(f"{path}: tensor '{name}' has unsupported dtype {dt}")
        start, end = info["data_offsets"]
        a = np.frombuffer(raw[start:end], dtype=_NUMPY[dt]).reshape(info["shape"])
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32)
        out[name], dtypes[name] = np.array(a), dt
    return out, dtypes


def to_stored(a: np.ndarray, dtype: str) -> np.ndarray:
    """f32 values in the stored dtype's numpy form (bf16 as rounded uint16 bits)."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        return (rounded >> 16).astype(np.uint16)
    return np.ascontiguousarray(a.astype(_NUMPY[dtype]))


def write_tensors(path: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
    """Writes arrays (already in their stored form, see to_stored) as a safetensors file."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    specs = {name: TensorSpec(dtype=_SPEC[dtypes[name]], shape=a.shape, data_ptr=a.ctypes.data,
                              data_len=a.nbytes) for name, a in arrays.items()}
    serialize_file(specs, str(path), metadata={"format": "pt"})
    Path(path).chmod(0o644)
