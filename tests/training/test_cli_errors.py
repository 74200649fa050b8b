"""Bad input to `medrt-train` gives one line naming the stage and the problem, exit code 2,
not a traceback; MEDRT_TRAIN_DEBUG=1 brings the traceback back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from medrt_train.cli import main


def _sft(tiny_pair, tmp_path: Path, **over: str) -> list[str]:
    flags = {"--model": str(tiny_pair["student"]), "--data": str(tiny_pair["corpus"]),
             "--out": str(tmp_path / "o"), **over}
    return ["sft", *[w for kv in flags.items() for w in kv], "--max-steps", "1",
            "--batch-size", "2", "--max-len", "32"]


def _one_line_error(capsys: pytest.CaptureFixture, stage: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("medrt-train")]
    assert len(err) == 1 and err[0].startswith(f"medrt-train {stage}: "), err
    return err[0]


def test_missing_model_folder_is_named(tiny_pair, tmp_path, capsys) -> None:
    nope = tmp_path / "nope"
    assert main(_sft(tiny_pair, tmp_path, **{"--model": str(nope)})) == 2
    line = _one_line_error(capsys, "sft")
    assert f"model {nope}: no such directory" in line and "Repo id" not in line


def test_empty_model_folder_and_corrupt_weights(tiny_pair, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(_sft(tiny_pair, tmp_path, **{"--model": str(tmp_path / "empty")})) == 2
    assert "config.json" in _one_line_error(capsys, "sft")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_pair["student"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not safetensors at all")
    assert main(_sft(tiny_pair, tmp_path, **{"--model": str(corrupt)})) == 2
    _one_line_error(capsys, "sft")


@pytest.mark.parametrize("case", ["missing_data", "missing_config", "broken_yaml",
                                  "out_is_file", "corrupt_data"])
def test_bad_files_are_named(tiny_pair, tmp_path, capsys, case: str) -> None:
    bad = tmp_path / "bad"
    over = {"missing_data": {"--data": str(bad)},
            "missing_config": {"--config": str(bad)},
            "broken_yaml": {"--config": str(bad)},
            "out_is_file": {"--out": str(bad)},
            "corrupt_data": {"--data": str(bad)}}[case]
    if case == "broken_yaml":
        bad.write_text("lr_max: [0.1\n")
    elif case == "out_is_file":
        bad.write_text("x")
    elif case == "corrupt_data":
        bad.write_text('{"question": "q", "response": "r"}\n{not json\n')
    assert main(_sft(tiny_pair, tmp_path, **over)) == 2
    line = _one_line_error(capsys, "sft")
    assert str(bad) in line
    if case == "corrupt_data":
        assert f"{bad}:2: malformed JSON" in line


@pytest.mark.parametrize("stage", ["sft", "distill"])
def test_empty_data_is_an_error(tiny_pair, tmp_path, capsys, stage: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    if stage == "sft":
        argv = _sft(tiny_pair, tmp_path, **{"--data": str(empty)})
    else:
        argv = ["distill", "--teacher", str(tiny_pair["teacher"]), "--student",
                str(tiny_pair["student"]), "--data", str(empty), "--out", str(tmp_path / "o"),
                "--max-steps", "1"]
    assert main(argv) == 2
    assert f"{empty}: no instruction records" in _one_line_error(capsys, stage)
    assert not (tmp_path / "o" / "adapter").exists()


def test_debug_env_keeps_the_traceback(tiny_pair, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDRT_TRAIN_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        main(_sft(tiny_pair, tmp_path, **{"--model": str(tmp_path / "nope")}))


def test_quantize_and_eval_name_their_bad_inputs(tmp_path, capsys) -> None:
    assert main(["quantize", str(tmp_path / "nope"), str(tmp_path / "q"),
                 "--recipe", "int8"]) == 2
    assert f"{tmp_path / 'nope'}: no such model directory" in _one_line_error(capsys,
                                                                               "quantize")
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {')
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["eval", str(tmp_path / "m"), "--data", str(bad)]) == 2
    assert f"{bad}: not PubMedQA's ori_pqal.json" in _one_line_error(capsys, "eval")


def test_merge_names_a_missing_adapter(tmp_path, capsys) -> None:
    assert main(["merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no adapter_config.json" in _one_line_error(capsys, "merge")
