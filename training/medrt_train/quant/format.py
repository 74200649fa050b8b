"""The `quantization` section of config.json, its validation, and the reference reader.

docs/quantized-format.md is the specification; `validate` enforces it and every error names
the module or tensor at fault, so a user can act on it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open

from medrt_train.quant.types import (
    QUANT_TYPES,
    QuantFormatError,
    WeightType,
    check_shape,
    dequantize,
    parse_type,
    tensor_specs,
)

FORMAT_NAME = "medrt-quant"
# The newest version; a writer writes the lowest version its types need (format_version), so
# a file without version 2 types stays readable by version 1 readers, and one without int6
# (version 3) by version 2 readers.
FORMAT_VERSION = 3
FORMAT_VERSIONS = (1, 2, 3)
_FLOAT_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def module_type(entry: dict, module: str) -> WeightType:
    """The WeightType of one `modules` entry of the quantization section.

    Stricter than parse_type: a 4-bit or 6-bit type must state its group size (no default),
    and `offset` ("zeros" or "mins") is read for int4.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise QuantFormatError(f"module {module}: entry needs a string 'type'")
    spec, group, offset = entry["type"], entry.get("group_size"), entry.get("offset")
    try:
        if group is not None and (isinstance(group, bool) or not isinstance(group, int)
                                  or group <= 0):
            raise QuantFormatError("'group_size' must be a positive integer")
        if offset not in (None, "zeros", "mins"):
            raise QuantFormatError("'offset' must be \"zeros\" or \"mins\"")
        wt = parse_type(spec, group, mins=offset == "mins")
        if offset is not None and wt.name != "int4":
            raise QuantFormatError("'offset' is only for int4")
        if wt.name in ("int4", "nf4", "int6") and group is None and "-g" not in spec.lower():
            raise QuantFormatError(f"{wt.name} needs 'group_size'")
        return wt
    except QuantFormatError as exc:
        raise QuantFormatError(f"module {module}: {exc}") from None


def format_version(types: Iterable[WeightType]) -> int:
    """The lowest format version that stores every type of `types`."""
    return max((wt.format_version for wt in types), default=1)


class TensorIndex:
    """Name -> file of every tensor of a safetensors model directory (one file or sharded)."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.dir / f for name, f in weight_map.items()}
        elif (self.dir / "model.safetensors").is_file():
            with safe_open(self.dir / "model.safetensors", framework="numpy") as f:
                keys = f.keys()
            self.files = dict.fromkeys(keys, self.dir / "model.safetensors")
        else:
            raise QuantFormatError(f"{self.dir}: no model.safetensors or its index")
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in sorted(set(self.files.values())):
            with safe_open(path, framework="numpy") as f:
                keys = f.keys()
                for name in keys:
                    sl = f.get_slice(name)
                    self._meta[name] = (tuple(sl.get_shape()), sl.get_dtype())

    def names(self) -> list[str]:
        return list(self.files)

    def meta(self, name: str) -> tuple[tuple[int, ...], str] | None:
        """(shape, safetensors dtype) of a tensor, or None when it is absent."""
        return self._meta.get(name)

    def numpy(self, name: str) -> np.ndarray:
        """A tensor as numpy (bf16 is widened to f32: numpy has no bf16)."""
        if self._meta[name][1] == "BF16":
            import torch  # only bf16 needs it
            from safetensors.torch import safe_open as torch_open

            with torch_open(self.files[name], framework="pt") as f:
                return f.get_tensor(name).to(torch.float32).numpy()
        with safe_open(self.files[name], framework="numpy") as f:
            return f.get_tensor(name)


def read_section(model_dir: Path) -> tuple[dict, dict]:
    """(config.json, its quantization section); errors when the section is absent."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise QuantFormatError(f"{path}: cannot read: {exc}") from None
    if not isinstance(config, dict):
        raise QuantFormatError(f"{path}: expected a JSON object")
    section = config.get("quantization")
    if not isinstance(section, dict):
        raise QuantFormatError(f"{model_dir}/config.json has no 'quantization' section")
    return config, section


def validate(model_dir: Path) -> dict[str, WeightType]:
    """Check a medrt quantized directory against the spec; return module -> type.

    Checks the format name and version, every module's type and group size, and that every
    tensor the spec requires is present with its shape and dtype, and that no tensor is
    left unclaimed.
    """
    _, section = read_section(model_dir)
    if section.get("format") != FORMAT_NAME:
        raise QuantFormatError(
            f"quantization.format is {section.get('format')!r}, expected {FORMAT_NAME!r}")
    version = section.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or \
            version not in FORMAT_VERSIONS:
        raise QuantFormatError(
            f"quantization.version is {version!r}; this reader understands versions "
            f"{FORMAT_VERSIONS[0]} to {FORMAT_VERSIONS[-1]}")
    modules = section.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise QuantFormatError("quantization.modules is missing or empty")
    index = TensorIndex(model_dir)
    claimed: set[str] = set()
    types: dict[str, WeightType] = {}
    for module, entry in modules.items():
        wt = module_type(entry, module)
        if wt.format_version > version:
            what = "int6" if wt.name == "int6" else \
                "int4 with 'mins'" if wt.mins else "int8 with a group size"
            raise QuantFormatError(
                f"module {module}: {what} needs quantization.version {wt.format_version}")
        types[module] = wt
        claimed |= _check_module(index, module, wt, entry)
    extra = sorted(set(index.names()) - claimed)
    if extra:
        raise QuantFormatError(f"tensors not described by quantization.modules: {extra[:5]}")
    return types


def _expect(index: TensorIndex, name: str, shape: tuple[int, ...], dtype: str, module: str
            ) -> None:
    meta = index.meta(name)
    if meta is None:
        raise QuantFormatError(f"module {module}: tensor {name} is missing")
    if meta != (shape, dtype):
        raise QuantFormatError(
            f"module {module}: tensor {name} is {meta[1]}{list(meta[0])}, "
            f"expected {dtype}{list(shape)}")


def _check_module(index: TensorIndex, module: str, wt: WeightType, entry: dict) -> set[str]:
    names: set[str] = set()
    if wt.name in QUANT_TYPES:
        shape = entry.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)):
            raise QuantFormatError(f"module {module}: 'shape' must be [out, in]")
        out_f, in_f = shape
        check_shape(wt, out_f, in_f, f"module {module}")
        if wt.name != "int8" and in_f % 32:
            raise QuantFormatError(
                f"module {module}: input dimension {in_f} is not a multiple of 32")
        for suffix, (tshape, dtype) in tensor_specs(wt, out_f, in_f).items():
            _expect(index, f"{module}.{suffix}", tshape, dtype, module)
            names.add(f"{module}.{suffix}")
    else:
        meta = index.meta(f"{module}.weight")
        if meta is None:
            raise QuantFormatError(f"module {module}: tensor {module}.weight is missing")
        _expect(index, f"{module}.weight", meta[0], _FLOAT_DTYPES[wt.name], module)
        names.add(f"{module}.weight")
    bias = index.meta(f"{module}.bias")
    if bias is not None:
        out_f = entry["shape"][0] if wt.quantized else None
        if bias[1] not in _FLOAT_DTYPES.values() or len(bias[0]) != 1 or (
                out_f is not None and bias[0][0] != out_f):
            raise QuantFormatError(
                f"module {module}: tensor {module}.bias is {bias[1]}{list(bias[0])}, expected "
                f"a float bias of {out_f or 'out'} elements")
        names.add(f"{module}.bias")
    return names


def dequantized_state(model_dir: Path) -> dict[str, np.ndarray]:
    """Validate, then return every weight as float32 numpy under its Hugging Face name."""
    types = validate(model_dir)
    index = TensorIndex(model_dir)
    state: dict[str, np.ndarray] = {}
    for module, wt in types.items():
        if wt.quantized:
            tensors = {s: index.numpy(f"{module}.{s}") for s in tensor_specs(wt, 1, 128)}
            state[f"{module}.weight"] = dequantize(wt, tensors)
        else:
            state[f"{module}.weight"] = index.numpy(f"{module}.weight").astype(np.float32)
        if index.meta(f"{module}.bias") is not None:
            state[f"{module}.bias"] = index.numpy(f"{module}.bias").astype(np.float32)
    return state


def module_bytes(model_dir: Path) -> dict[str, tuple[str, int]]:
    """Module -> (weight type, stored bytes), biases counted with their module."""
    types = validate(model_dir)
    index = TensorIndex(model_dir)
    width = {"I8": 1, "U8": 1, "F16": 2, "BF16": 2, "F32": 4}
    out = {module: (str(wt), 0) for module, wt in types.items()}
    for name in index.names():
        shape, dtype = index.meta(name)
        module = name.rsplit(".", 1)[0]
        out[module] = (out[module][0], out[module][1] + int(np.prod(shape)) * width[dtype])
    return out
