"""What identifies the weights a server answers with: sha256 per weight file and tensor types.

Hashing gigabytes takes seconds, so the digests are cached beside the model in
``.medrt-weights.json`` (keyed by file size and mtime, so a changed file is hashed again); when
the model directory is read-only the cache goes to ``<medrt home>/fingerprints/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

CACHE_NAME = ".medrt-weights.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class WeightsFingerprint:
    files: dict[str, str]      # file name -> sha256
    weights_sha256: str        # sha256 over "name sha256\n" lines in name order
    weight_types: list[str]    # tensor dtypes (and the quantization method, if any)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _safetensors_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and "dtype" in v}


def _cache_paths(model_dir: Path) -> list[Path]:
    from medrt.models.registry import medrt_home

    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
    return [model_dir / CACHE_NAME, medrt_home() / "fingerprints" / f"{key}.json"]


def _load_cache(paths: list[Path]) -> dict:
    for p in paths:
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return {}


def _save_cache(paths: list[Path], cache: dict) -> None:
    for p in paths:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, p)
            return
        except OSError:
            continue


def weights_fingerprint(model_dir: str | os.PathLike[str]) -> WeightsFingerprint:
    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir()
                   if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    paths = _cache_paths(model_dir)
    cache = _load_cache(paths)
    files: dict[str, str] = {}
    changed = False
    for name in names:
        st = (model_dir / name).stat()
        entry = cache.get(name)
        if not entry or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "sha256": _sha256_file(model_dir / name)}
            cache[name] = entry
            changed = True
        files[name] = entry["sha256"]
    if changed:
        _save_cache(paths, {k: v for k, v in cache.items() if k in files})
    combined = hashlib.sha256("".join(f"{n} {files[n]}\n" for n in names).encode()).hexdigest()
    types: set[str] = set()
    for name in names:
        if name.endswith(".safetensors"):
            types |= _safetensors_dtypes(model_dir / name)
    weight_types = sorted(types)
    try:
        quant = json.loads((model_dir / "config.json").read_text()).get("quantization")
    except (OSError, ValueError):
        quant = None
    if isinstance(quant, dict) and quant.get("method"):
        # medrt-quant: {"name": "gptq", ...} with its recipe ("paper", "gguf"): "paper/gptq"
        method = quant["method"]
        name = str(method.get("name") if isinstance(method, dict) else method)
        recipe = quant.get("recipe")
        label = name if not recipe or recipe == name else f"{recipe}/{name}"
        weight_types.append(f"quantization:{label}")
    return WeightsFingerprint(files, combined, weight_types)
