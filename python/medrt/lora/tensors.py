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
    """{name: {"dtype", "shape", "data_offsets"}} of a .safetensors file (metadata left out).
    Every entry is checked against the file: a known dtype, a shape of non-negative ints, and
    offsets that lie in the data and hold exactly the shape's bytes (a truncated or damaged file
    is an InvalidCheckpoint naming the tensor, never a numpy error later)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"its header claims {n} bytes; the file has {size}")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise InvalidCheckpoint(f"{path}: not a readable safetensors file: {e}") from e
    if not isinstance(header, dict):
        raise InvalidCheckpoint(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(path, name, info, size - 8 - n)
    return header


def _check_entry(path: Path, name: str, info: object, data_bytes: int) -> None:
    def bad(why: str) -> InvalidCheckpoint:
        return InvalidCheckpoint(f"{path}: tensor '{name}' {why}")

    if not isinstance(info, dict):
        raise bad("has no {dtype, shape, data_offsets} entry")
    dt, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dt not in _NUMPY:
        raise bad(f"has unsupported dtype {dt}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise bad(f"has data_offsets {offsets!r} outside the file's {data_bytes} data bytes "
                  "(truncated?)")
    need = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NUMPY[dt]).itemsize
    if offsets[1] - offsets[0] != need:
        raise bad(f"holds {offsets[1] - offsets[0]} bytes; {dt} {shape} needs {need}")


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of `path` as a float32 (floats) or native (ints) array, and its stored
    dtype name."""
    header = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if header else None
    out, dtypes = {}, {}
    for name, info in header.items():
        dt = info["dtype"]
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
