"""The stages end to end on tiny models: SFT, distillation, export, resume, configs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from medrt_train.cli import main
from medrt_train.merge import merge_adapter

FAST = ["--batch-size", "2", "--max-len", "96", "--lora-r", "4", "--lora-alpha", "8"]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_merged_logits_equal_adapter_logits(tiny_pair, tmp_path: Path) -> None:
    from medrt_train.lora import lora_config
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_pair["student"], dtype=torch.float32)
    model = get_peft_model(base, lora_config(r=4, alpha=8.0, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero; random B makes the adapter change the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merge_adapter(tmp_path / "adapter", tmp_path / "merged", tiny_pair["student"])

    ids = torch.randint(4, 60, (2, 12))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_pair["student"], dtype=torch.float32)
    adapter = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_pair["student"], dtype=torch.float32)
    with torch.no_grad():
        a, m, p = adapter(ids).logits, merged(ids).logits, plain(ids).logits
    assert (a - p).abs().max() > 1e-2  # the adapter matters...
    assert (a - m).abs().max() <= 1e-4  # ...and merging keeps it exactly


def test_sft_distill_merge_export_end_to_end(tiny_pair, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, out = str(tiny_pair["corpus"]), tmp_path
    assert main(["sft", "--model", str(tiny_pair["teacher"]), "--data", corpus,
                 "--out", str(out / "sft"), "--max-steps", "3", *FAST]) == 0
    assert main(["merge", "--adapter", str(out / "sft" / "adapter"),
                 "--out", str(out / "teacher")]) == 0
    assert main(["distill", "--teacher", str(out / "teacher"),
                 "--student", str(tiny_pair["student"]), "--data", corpus,
                 "--out", str(out / "kd"), "--max-steps", "3", "--hidden", "0.5", "--merge",
                 *FAST]) == 0
    sft_log, kd_log = _log(out / "sft"), _log(out / "kd")
    assert [r["step"] for r in sft_log] == [1, 2, 3] and "kl" not in sft_log[0]
    assert [r["step"] for r in kd_log] == [1, 2, 3]
    for row in kd_log:  # every term logged separately, and the total is their weighted sum
        assert {"ce", "kl", "hidden", "entity", "total", "lr"} <= set(row)
        expected = row["ce"] + row["kl"] + 0.5 * row["hidden"] + row["entity"]
        assert row["total"] == pytest.approx(expected, rel=1e-5)
    assert json.loads((out / "kd" / "kd_mode.json").read_text())["mode"] == "token"
    saved = yaml.safe_load((out / "kd" / "config.yaml").read_text())
    assert saved["max_steps"] == 3 and saved["hidden"] == 0.5 and saved["rslora"] is True

    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / "kd" / "adapter" / name).is_file()
    tok = AutoTokenizer.from_pretrained(out / "kd" / "merged")
    model = AutoModelForCausalLM.from_pretrained(out / "kd" / "merged")
    ids = tok("How is gout treated?", return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    # Adapter mode loads in transformers too (the base path is recorded in the adapter).
    adapter = AutoModelForCausalLM.from_pretrained(out / "kd" / "adapter").eval()
    with torch.no_grad():
        diff = (adapter(ids).logits - model.eval()(ids).logits).abs().max()
    assert diff <= 1e-4


def test_mismatched_tokenizers_switch_to_sequence_level(tiny_pair, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert main(["distill", "--teacher", str(tiny_pair["teacher"]),
                 "--student", str(tiny_pair["other"]), "--data", str(tiny_pair["corpus"]),
                 "--out", str(tmp_path), "--max-steps", "2", "--mode", "full",
                 "--hidden", "1", "--gen-max-new-tokens", "4", "--batch-size", "4"]) == 0
    mode = json.loads((tmp_path / "kd_mode.json").read_text())
    assert mode["mode"] == "sequence" and "vocabularies differ" in mode["reason"]
    assert mode["weights"] == {"ce": 1.0, "kl": 0.0, "hidden": 0.0, "entity": 0.0}
    assert "sequence-level KD" in caplog.text and "kl, hidden, entity" in caplog.text
    generations = (tmp_path / "teacher_generations.jsonl").read_text().splitlines()
    assert len(generations) == 8
    # The cache is reused for the same settings only: other generation settings regenerate.
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["distill", "--teacher", str(tiny_pair["teacher"]),
                 "--student", str(tiny_pair["other"]), "--data", str(tiny_pair["corpus"]),
                 "--out", str(tmp_path), "--max-steps", "1", "--mode", "full",
                 "--gen-max-new-tokens", "2", "--batch-size", "4"]) == 0
    assert "generating again" in caplog.text and "reusing" not in caplog.text
    records = [json.loads(x) for x in (tmp_path / "teacher_generations.jsonl").read_text()
               .splitlines()]
    assert {r["source"]["gen_max_new_tokens"] for r in records} == {2}
    assert all(set(r) == {"step", "epoch", "lr", "ce", "total", "grad_norm"}
               for r in _log(tmp_path))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_student_from_teacher_layers_and_resume(tiny_pair, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    args = ["distill", "--teacher", str(tiny_pair["teacher"]), "--student-from-teacher", "2",
            "--mode", "full", "--data", str(tiny_pair["corpus"]), "--kl", "1", "--entity", "0",
            "--batch-size", "2", "--max-len", "64", "--max-steps", "4"]
    assert main([*args, "--out", str(tmp_path / "a"), "--save-every", "2"]) == 0
    init = load_file(tmp_path / "a" / "student_init" / "model.safetensors")
    teacher = load_file(tiny_pair["teacher"] / "model.safetensors")
    assert torch.equal(init["model.layers.1.mlp.up_proj.weight"],
                       teacher["model.layers.2.mlp.up_proj.weight"])
    assert "model.layers.2.mlp.up_proj.weight" not in init
    assert (tmp_path / "a" / "checkpoints" / "step-2").is_dir()

    # Resume from the step-2 checkpoint in a fresh directory: steps 3 and 4 only, same result.
    (tmp_path / "b").mkdir()
    assert main([*args, "--out", str(tmp_path / "b"),
                 "--resume", str(tmp_path / "a" / "checkpoints" / "step-2")]) == 0
    assert [r["step"] for r in _log(tmp_path / "b")] == [3, 4]
    first, resumed = _log(tmp_path / "a")[2:], _log(tmp_path / "b")
    for x, y in zip(first, resumed):
        assert y["lr"] == pytest.approx(x["lr"]) and y["total"] == pytest.approx(x["total"],
                                                                                 rel=1e-4)


def test_yaml_config_and_flag_precedence(tiny_pair, tmp_path: Path) -> None:
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_pair["student"]),
                                   "data": str(tiny_pair["corpus"]), "out": str(tmp_path / "o"),
                                   "max-steps": 2, "lora_r": 2, "lr_max": 1e-3,
                                   "targets": "q_proj,v_proj"}))
    assert main(["sft", "--config", str(cfg), "--lr-max", "5e-4", "--batch-size", "4"]) == 0
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["lora_r"] == 2 and saved["max_steps"] == 2 and saved["lr_max"] == 5e-4
    assert _log(tmp_path / "o")[0]["lr"] == pytest.approx(5e-4)
    adapter = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["use_rslora"]
    # The saved config reproduces the run.
    again = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert again["model"] == str(tiny_pair["student"])
    cfg.write_text(yaml.safe_dump({"lora_rank": 4}))
    with pytest.raises(SystemExit, match="unknown setting 'lora_rank'"):
        main(["sft", "--config", str(cfg)])
    with pytest.raises(SystemExit, match="--model"):
        main(["sft", "--data", "x.jsonl", "--out", str(tmp_path / "p")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_qlora_without_gpu_says_so(tiny_pair, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="QLoRA .* needs a CUDA GPU"):
        main(["sft", "--model", str(tiny_pair["student"]), "--data", str(tiny_pair["corpus"]),
              "--out", str(tmp_path), "--qlora", "--max-steps", "1"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qlora_on_gpu(tiny_pair, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    assert main(["sft", "--model", str(tiny_pair["teacher"]), "--data", str(tiny_pair["corpus"]),
                 "--out", str(tmp_path), "--qlora", "--max-steps", "2", *FAST]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert all(r["ce"] > 0 for r in _log(tmp_path))


def test_typed_flag_wins_over_yaml_even_at_its_default(tiny_pair, tmp_path: Path) -> None:
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"lr_max": 1e-3, "lora_r": 2}))
    # 2e-4 is --lr-max's default, typed on purpose: the command line still wins.
    assert main(["sft", "--config", str(cfg), "--lr-max", "2e-4", "--model",
                 str(tiny_pair["student"]), "--data", str(tiny_pair["corpus"]),
                 "--out", str(tmp_path / "o"), "--max-steps", "1", "--batch-size", "2",
                 "--max-len", "64"]) == 0
    assert _log(tmp_path / "o")[0]["lr"] == pytest.approx(2e-4)
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["lr_max"] == 2e-4 and saved["lora_r"] == 2  # the untyped key from the file
    # The saved config.yaml (nulls, booleans, paths) resolves again unchanged.
    import argparse

    from medrt_train import config as config_mod
    from medrt_train import sft

    parser = argparse.ArgumentParser()
    sft.add_arguments(parser)
    again = config_mod.resolve(parser.parse_args(["--config",
                                                  str(tmp_path / "o" / "config.yaml")]))
    assert config_mod.as_dict(again) == saved


@pytest.mark.parametrize("values,message", [
    ({"mode": "Lora"}, r"setting 'mode': invalid choice 'Lora' \(choose from lora, full\)"),
    ({"max-steps": 1.5}, r"setting 'max-steps': invalid int value '1.5'"),
    ({"lora_r": "four"}, r"setting 'lora_r': invalid int value 'four'"),
    ({"rslora": "maybe"}, r"setting 'rslora': expected true or false"),
    ({"merge": 1}, r"setting 'merge': expected true or false"),
])
def test_yaml_values_are_checked_like_flags(tiny_pair, tmp_path: Path, values: dict,
                                            message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit, match=f"{cfg}: {message}"):
        main(["sft", "--config", str(cfg), "--model", str(tiny_pair["student"]),
              "--data", str(tiny_pair["corpus"]), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_adapter_records_an_absolute_local_base(tiny_pair, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_pair["root"])
    assert main(["sft", "--model", "student", "--data", str(tiny_pair["corpus"]),
                 "--out", str(tmp_path / "o"), "--max-steps", "1", *FAST]) == 0
    adapter = tmp_path / "o" / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())
    assert recorded["base_model_name_or_path"] == str(tiny_pair["student"].resolve())
    # `merge` from another directory finds the base (a relative path would go to the Hub).
    monkeypatch.chdir(tmp_path)
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_resume_in_place_keeps_one_log_row_per_step_and_the_losses(tiny_pair,
                                                                   tmp_path: Path) -> None:
    # LoRA dropout on: the resumed steps must draw the same dropout masks as the first run.
    args = ["sft", "--model", str(tiny_pair["student"]), "--data", str(tiny_pair["corpus"]),
            "--max-steps", "4", "--save-every", "2", "--lora-dropout", "0.3", *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    first = _log(tmp_path / "a")
    assert main([*args, "--out", str(tmp_path / "a"), "--resume", "latest"]) == 0
    resumed = _log(tmp_path / "a")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for x, y in zip(first, resumed):
        assert y["total"] == pytest.approx(x["total"], rel=1e-5)
