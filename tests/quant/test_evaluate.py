"""medrt-train eval on a tiny model, a word-level tokenizer and a fake PubMedQA file."""
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from medrt_train import evaluate
from medrt_train.cli import main
from medrt_train.data.pubmedqa import Question
from medrt_train.quant.quantize import quantize_model
from medrt_train.quant.recipes import load_recipe

WORDS = ["[UNK]", "[EOS]", "Abstract:", "Question:", "Answer:", "yes", "no", "maybe",
         "the", "drug", "helps", "patients", "trial", "shows", "effect", "does", "?", "."]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                eos_token="[EOS]")


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


TEXTS = ["the drug helps patients .", "the trial shows the effect ? yes the drug helps ."]


def test_perplexity_and_kl_of_a_model_to_itself_and_to_another():
    tok, model = _tokenizer(), _model()
    same = evaluate.perplexity_and_kl(model, model, tok, TEXTS)
    assert same["tokens"] == 4 + 10
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["perplexity"] == pytest.approx(same["reference_perplexity"])
    other = evaluate.perplexity_and_kl(_model(1), model, tok, TEXTS)
    assert other["kl_mean"] > 1e-3
    # Perplexity by hand for the first text.
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
    nll = -logp.gather(1, ids[0, 1:, None]).mean()
    alone = evaluate.perplexity_and_kl(model, None, tok, TEXTS[:1])
    assert alone["perplexity"] == pytest.approx(float(nll.exp()), rel=1e-5)
    assert "kl_mean" not in alone


def test_pubmedqa_picks_the_most_likely_answer_as_lm_eval_does():
    tok, model = _tokenizer(), _model()
    qs = [Question(str(i), "does the drug help patients ?", ("the trial shows the effect .",),
                   "the drug helps .", answer) for i, answer in enumerate(("yes", "no", "maybe"))]
    res = evaluate.pubmedqa_accuracy({"m": model}, tok, qs)["m"]
    ids = tok(qs[0].prompt(), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = model(ids).logits[0, -1]
    best = ("yes", "no", "maybe")[int(torch.argmax(last[[5, 6, 7]]))]
    assert res["predicted"][best] == 3
    assert res["accuracy"] == pytest.approx(1 / 3)
    assert "agreement" not in res
    # Agreement with a reference: a model agrees with itself on every question; another
    # model agrees exactly where its pick equals the reference's.
    other = _model(3)
    both = evaluate.pubmedqa_accuracy({"same": model, "other": other}, tok, qs, reference=model)
    assert both["same"]["agreement"] == 1.0
    with torch.no_grad():
        other_last = other(ids).logits[0, -1]
    other_best = ("yes", "no", "maybe")[int(torch.argmax(other_last[[5, 6, 7]]))]
    assert both["other"]["agreement"] == float(other_best == best)


def _quantized_tiny_model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny model (src) with its `paper` RTN copy in tmp_path/q, and a fake PubMedQA file
    whose 3 test entries all ask the same question."""
    src = tmp_path / "src"
    _model().save_pretrained(src)
    _tokenizer().save_pretrained(src)
    quantize_model(src, tmp_path / "q", load_recipe("paper"), "rtn", log=lambda _: None)
    entries = {f"{i:05d}": {"QUESTION": "does the drug help ?", "CONTEXTS": ["the trial ."],
                            "LONG_ANSWER": "the drug helps .", "final_decision": "yes"}
               for i in range(803)}
    data = tmp_path / "ori_pqal.json"
    data.write_text(json.dumps(entries))
    return src, data


def test_eval_command_on_a_quantized_tiny_model(tmp_path: Path, capsys):
    src, data = _quantized_tiny_model_and_data(tmp_path)
    out = tmp_path / "rows.json"
    assert main(["eval", f"paper={tmp_path / 'q'}", f"f32={src}", "--reference", str(src),
                 "--data", str(data), "--json", str(out),
                 "--markdown", str(tmp_path / "t.md")]) == 0
    row, ref_row = json.loads(out.read_text())
    # The reference listed as a row is scored once, as the reference: KL exactly 0.
    assert ref_row["kl_mean"] == 0.0 and ref_row["recipe"] == "unquantized"
    assert ref_row["pubmedqa_agreement"] == 1.0 and 0.0 <= row["pubmedqa_agreement"] <= 1.0
    assert ref_row["perplexity"] == pytest.approx(ref_row["reference_perplexity"])
    assert row["model"] == "paper" and row["recipe"] == "paper" and row["method"] == "rtn"
    assert row["tokens"] == 3 * 11 and row["pubmedqa_questions"] == 3
    assert row["kl_mean"] >= 0 and row["bytes_by_type"]["nf4"] > 0
    assert 0.5 < row["linear_cut"] < 0.75
    captured = capsys.readouterr()
    assert "| paper | paper | rtn |" in captured.out
    assert "same answer as reference" in captured.out
    assert "texts: 3/3 scored" in captured.err and "questions: 3/3 scored" in captured.err


def test_calibration_and_method_choice_never_read_the_same_entries(tmp_path: Path):
    from medrt_train.data.pubmedqa import load_split
    from medrt_train.quant.calibration import calibration_texts

    entries = {f"{i:05d}": {"QUESTION": f"q{i}", "CONTEXTS": ["c"], "LONG_ANSWER": "a",
                            "final_decision": "yes"} for i in range(1000)}
    data = tmp_path / "ori_pqal.json"
    data.write_text(json.dumps(entries))
    ids = {s: [q.pubmed_id for q in load_split(s, data)]
           for s in ("dev", "dev-calib", "dev-held-out", "test")}
    assert (len(ids["dev-calib"]), len(ids["dev-held-out"]), len(ids["test"])) == (600, 200, 200)
    assert ids["dev-calib"] + ids["dev-held-out"] == ids["dev"]
    assert not set(ids["dev"]) & set(ids["test"])
    texts, source = calibration_texts(data)
    assert source == "pubmedqa:dev-calib" and len(texts) == 600
    assert {t.split("\n")[0] for t in texts} == {f"q{int(i)}" for i in ids["dev-calib"]}
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("train", data)


def test_pubmedqa_is_found_without_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An installed medrt_train lives far from the checkout: the default PubMedQA comes from
    $MEDRT_DATA, else from shared/data above the working directory (as `medrt eval` finds it)."""
    from medrt_train.data.pubmedqa import default_path, load_split

    entries = {f"{i:05d}": {"QUESTION": f"q{i}", "CONTEXTS": ["c"], "LONG_ANSWER": "a",
                            "final_decision": "no"} for i in range(1000)}
    for root in ("env", "tree/shared/data"):
        (tmp_path / root / "pubmedqa").mkdir(parents=True)
        (tmp_path / root / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(entries))
    (tmp_path / "tree" / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "tree" / "checkout")
    monkeypatch.setenv("MEDRT_DATA", str(tmp_path / "env"))
    assert default_path() == tmp_path / "env" / "pubmedqa" / "ori_pqal.json"
    monkeypatch.delenv("MEDRT_DATA")
    assert default_path() == (tmp_path / "tree/shared/data/pubmedqa/ori_pqal.json").resolve()
    assert [q.pubmed_id for q in load_split("test")][:2] == ["00800", "00801"]


def test_eval_through_the_engine_agrees_with_transformers(tmp_path: Path):
    """--engine medrt scores the quantized model with the runtime's own kernels (int8 and NF4
    at their precision, activations quantized per block); its perplexity and KL agree with the
    dequantizing transformers loader within the activation quantization's error."""
    src, data = _quantized_tiny_model_and_data(tmp_path)
    rows = {}
    for name, args in (("transformers", ["--engine", "transformers"]),
                       ("medrt", ["--engine", "medrt"]),
                       ("int8x2", ["--engine", "medrt", "--activation-precision", "int8x2"]),
                       ("kv16", ["--engine", "medrt", "--kv-cache-dtype", "f16"])):
        out = tmp_path / f"{name}.json"
        assert main(["eval", f"paper={tmp_path / 'q'}", "--reference", str(src),
                     "--data", str(data), "--json", str(out), *args]) == 0
        rows[name] = json.loads(out.read_text())[0]
    hf, rt, x2 = rows["transformers"], rows["medrt"], rows["int8x2"]
    assert rt["engine"] == "medrt" and hf["engine"] == "transformers"
    assert rt["activation_precision"] == "int8" and x2["activation_precision"] == "int8x2"
    assert rt["kv_cache_dtype"] == "f32" and rows["kv16"]["kv_cache_dtype"] == "f16"
    # An f16 KV cache moves perplexity by its one rounding of each key and value: little.
    assert rows["kv16"]["perplexity"] != rt["perplexity"]
    assert rows["kv16"]["perplexity"] == pytest.approx(rt["perplexity"], rel=1e-3)
    # Two int8 terms per activation leave only nf4's int8 table between the kernels and the
    # dequantized weights: closer to transformers than int8 blocks.
    assert abs(x2["perplexity"] / hf["perplexity"] - 1) < abs(rt["perplexity"] / hf["perplexity"]
                                                              - 1)
    assert rt["tokens"] == hf["tokens"]
    assert rt["perplexity"] == pytest.approx(hf["perplexity"], rel=5e-3)
    assert rt["reference_perplexity"] == pytest.approx(hf["reference_perplexity"], rel=1e-4)
    assert rt["kl_mean"] == pytest.approx(hf["kl_mean"], rel=0.1, abs=1e-3)
    assert rt["pubmedqa_predicted"] == hf["pubmedqa_predicted"]


def test_eval_refuses_an_adapter_folder_before_scoring_anything(tmp_path: Path, capsys):
    src, data = _quantized_tiny_model_and_data(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(src)}))
    assert main(["eval", f"f32={src}", f"lora={adapter}", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{adapter}: not a model directory, it has no config.json" in err
    assert "merge" in err and "scored" not in err  # refused before an hour of scoring
