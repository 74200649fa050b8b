"""The model's own sampling defaults, read from its generation_config.json.

Model authors ship the sampling they tested with: DeepSeek-R1-Distill asks for temperature 0.6
and top_p 0.95 and loops endlessly when decoded greedily. As vLLM does (``--generation-config
auto``), medrt starts every request that leaves a parameter unset from these values: a
``generate``/``chat`` call without SamplingParams, a service request without the field, and
``medrt chat``/``medrt generate`` without the flag. Parameters the caller sets always win.

Hugging Face's meaning is kept: ``temperature``, ``top_p``, ``top_k`` and ``min_p`` count only
when ``do_sample`` is true, ``do_sample: false`` means greedy, and ``repetition_penalty`` and
``max_new_tokens`` count either way. A file without ``do_sample`` changes nothing but those two.

``generation_config`` (LLM keyword, ``--generation-config`` of ``medrt serve|chat|generate``)
chooses the source: "auto" (the model's file), "none" (SamplingParams' own defaults) or a
directory holding another generation_config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.sampling_params import SamplingParams

FILE = "generation_config.json"
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p")


def defaults_from(source: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """The defaults ``generation_config`` asks for (vLLM's option of that name): "auto" reads
    the model's file, "none" keeps SamplingParams' own defaults, a directory reads its file."""
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidRequest(f"generation_config={source!r}: not 'auto', 'none' or a directory")
    if source == "auto":
        return sampling_defaults(model_dir)
    if source == "none":
        return {}
    if not (Path(source) / FILE).is_file():
        raise InvalidRequest(f"generation_config={str(source)!r}: not 'auto', 'none' or a "
                             f"directory holding {FILE}")
    return sampling_defaults(source)


def sampling_defaults(model_dir: str | Path) -> dict[str, Any]:
    """SamplingParams fields from ``model_dir``'s generation_config.json; {} without the file.
    A value SamplingParams refuses raises InvalidCheckpoint naming the file and the key."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidCheckpoint(f"{path}: not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InvalidCheckpoint(f"{path}: must hold a JSON object")
    out: dict[str, Any] = {}
    do_sample = cfg.get("do_sample")
    if do_sample is True:
        out.update({k: cfg[k] for k in _SAMPLING_KEYS if cfg.get(k) is not None})
    elif do_sample is False:
        out["temperature"] = 0.0
    if cfg.get("repetition_penalty") is not None:
        out["repetition_penalty"] = cfg["repetition_penalty"]
    if cfg.get("max_new_tokens") is not None:
        out["max_tokens"] = cfg["max_new_tokens"]
    for name, value in out.items():
        key = "max_new_tokens" if name == "max_tokens" else name
        check_value(name, value, f"{path}: {key}")
    return out


def check_value(name: str, value: Any, where: str) -> None:
    """An InvalidCheckpoint naming ``where`` (the file and key the value came from) when
    SamplingParams refuses ``value`` for its field ``name``."""
    try:
        SamplingParams(**{name: value})
    except (InvalidRequest, TypeError) as e:
        raise InvalidCheckpoint(f"{where} = {value!r} is not usable: {e}") from None
