"""GGUF metadata (the key/value section) and tensor table read straight from the file.

gguf.GGUFReader builds a numpy view per array element, which takes seconds for a 150,000-token
vocabulary; the tokenizer and config only need the decoded values, so they are read here in
one pass. Tensors are still read with gguf.GGUFReader, after check_tensor_data has made sure
each tensor's bytes are in the file (GGUFReader fails on a truncated file without saying
which tensor is cut).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from medrt.errors import InvalidCheckpoint

# GGUF value types: id -> (struct format, numpy dtype) for the fixed-size ones.
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, n: int) -> bytes:
    # Lengths come from the file: one past its end is a broken file, not a huge allocation.
    if n > os.fstat(f.fileno()).st_size - f.tell():
        raise InvalidCheckpoint(f"{f.name}: GGUF metadata is truncated (a {n}-byte value "
                                "runs past the end of the file)")
    b = f.read(n)
    if len(b) != n:
        raise InvalidCheckpoint(f"{f.name}: GGUF metadata is truncated")
    return b


def _scalar(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    return _read(f, _scalar(f, "<Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _string(f)
    if vtype in _SCALARS:
        return _scalar(f, _SCALARS[vtype][0])
    if vtype == _ARRAY:
        etype, count = _scalar(f, "<I"), _scalar(f, "<Q")
        if etype in _SCALARS:
            dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
            return np.frombuffer(_read(f, dtype.itemsize * count), dtype).tolist()
        return [_value(f, etype) for _ in range(count)]
    raise InvalidCheckpoint(f"{f.name}: unknown GGUF value type {vtype}")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF tensor table."""

    name: str
    ne: tuple[int, ...]  # dimensions, fastest first: a weight [out, in] has ne = (in, out)
    type_id: int         # gguf.GGMLQuantizationType value
    offset: int          # of its data, from the start of the data section


def _header(path: str | Path, tensors: bool) -> tuple[dict[str, Any], list[TensorInfo], int]:
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidCheckpoint(f"{path}: not a GGUF file (bad magic)")
            version = _scalar(f, "<I")
            if version not in (2, 3):
                raise InvalidCheckpoint(f"{path}: GGUF version {version} is not supported")
            n_tensors = _scalar(f, "<Q")
            n_kv = _scalar(f, "<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _string(f)
                meta[key] = _value(f, _scalar(f, "<I"))
            infos = []
            for _ in range(n_tensors if tensors else 0):
                name = _string(f)
                ne = tuple(_scalar(f, "<Q") for _ in range(_scalar(f, "<I")))
                infos.append(TensorInfo(name, ne, _scalar(f, "<I"), _scalar(f, "<Q")))
            align = int(meta.get("general.alignment", 32))
            data_start = -(-f.tell() // align) * align
            return meta, infos, data_start
    except OSError as e:
        raise InvalidCheckpoint(f"{path}: cannot read: {e}") from e


def read_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value pairs of a GGUF file (version 2 or 3), decoded to Python values."""
    return _header(path, tensors=False)[0]


def read_tensor_table(path: str | Path) -> list[TensorInfo]:
    """The tensor table of a GGUF file."""
    return _header(path, tensors=True)[1]


def check_tensor_data(path: str | Path) -> None:
    """InvalidCheckpoint naming the first tensor whose type is unknown, whose rows are not whole
    blocks of its type, or whose data runs past the end of the file (a truncated download)."""
    _, infos, data_start = _header(path, tensors=True)
    size = os.path.getsize(path)
    for t in infos:
        try:
            qtype = gguf.GGMLQuantizationType(t.type_id)
        except ValueError:
            raise InvalidCheckpoint(
                f"GGUF tensor '{t.name}': unknown tensor type {t.type_id}") from None
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        if not t.ne or t.ne[0] % block:
            raise InvalidCheckpoint(
                f"GGUF tensor '{t.name}': rows of {t.ne[:1]} elements are not whole "
                f"{qtype.name} blocks of {block}")
        nbytes = int(np.prod(t.ne, dtype=np.int64)) // block * block_bytes
        end = data_start + t.offset + nbytes
        if end > size:
            raise InvalidCheckpoint(
                f"GGUF tensor '{t.name}': its {qtype.name} data ({nbytes} bytes) ends at byte "
                f"{end}, past the end of the file ({size} bytes): the file is truncated")
