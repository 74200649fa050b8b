"""`medrt eval` on small files in the published formats and the tiny models: lm-eval's prompts,
log-likelihoods against transformers, generative answers and their extraction, the reasoning
budget, statistics against scipy, reports, the CLI and --compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from medrt.cli import main
from medrt.errors import InvalidRequest
from medrt.eval.formats import CorpusError
from medrt.eval.generate import GenerateConfig, extract
from medrt.eval.loglik import encode_pair
from medrt.eval.run import evaluate
from medrt.eval.stats import mcnemar_exact, paired, wilson_interval
from medrt.eval.tasks import load_task

MEDQA = [  # the USMLE release's JSONL fields
    {"question": "A 45-year-old man has crushing chest pain. Which drug first?",
     "answer": "Aspirin", "options": {"A": "Aspirin", "B": "Warfarin", "C": "Insulin",
                                      "D": "Metformin"}, "meta_info": "step2&3", "answer_idx": "A"},
    {"question": "Which vitamin deficiency causes scurvy?", "answer": "Vitamin C",
     "options": {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C", "D": "Vitamin D"},
     "meta_info": "step1", "answer_idx": "C"},
]
MEDQA5 = [{"question": "Which test confirms type 2 diabetes?", "answer": "HbA1c",
           "options": {"A": "HbA1c", "B": "TSH", "C": "ALT", "D": "CRP", "E": "INR"},
           "meta_info": "step1", "answer_idx": "A"}]
MEDMCQA = [  # the original release: cop is 1-based
    {"id": "m1", "question": "Drug of choice for anaphylaxis is", "opa": "Adrenaline",
     "opb": "Atropine", "opc": "Dopamine", "opd": "Digoxin", "cop": 1, "choice_type": "single",
     "exp": "Adrenaline IM.", "subject_name": "Pharmacology", "topic_name": None},
    {"id": "m2", "question": "Vaccine given at birth", "opa": "MMR", "opb": "BCG",
     "opc": "Typhoid", "opd": "Rabies", "cop": 2, "choice_type": "single", "exp": None,
     "subject_name": "PSM", "topic_name": None},
]
CLINIC = [
    {"id": "c1", "question": "Is ibuprofen taken with food?", "options": {"A": "yes", "B": "no"},
     "answer": "A", "category": "medication"},
    {"id": "c2", "question": "First step when a person is not breathing?",
     "options": {"A": "Call emergency services", "B": "Give water", "C": "Wait"}, "answer": "A",
     "context": "An adult collapsed at home."},
    {"id": "c3", "question": "Which screening prevents cervical cancer?",
     "options": {"A": "Pap smear", "B": "Chest X-ray"}, "answer": "A"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompts_are_lm_eval_s(tmp_path: Path) -> None:
    lm_tasks = pytest.importorskip("lm_eval.tasks")
    base = Path(lm_tasks.__file__).parent
    import importlib.util

    def fn(rel: str, name: str):  # lm-eval's own preprocessing functions, from the package
        spec = importlib.util.spec_from_file_location(name, base / rel)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod.doc_to_text

    medqa = load_task("medqa", _jsonl(tmp_path / "medqa.jsonl", MEDQA))
    to_text = fn("medqa/preprocess_medqa.py", "pm")
    for q, raw in zip(medqa, MEDQA):
        hf = {"sent1": raw["question"], **{f"ending{i}": raw["options"][k]
                                           for i, k in enumerate("ABCD")}}
        assert q.prompt == to_text(hf)
        assert q.choices == ("A", "B", "C", "D") and q.gold_choice == raw["answer_idx"]
    medmcqa = load_task("medmcqa", _jsonl(tmp_path / "medmcqa.jsonl", MEDMCQA))
    to_text = fn("medmcqa/utils_medmcqa.py", "um")
    for q, raw in zip(medmcqa, MEDMCQA):
        assert q.prompt == to_text(raw)
        assert q.gold == raw["cop"] - 1
    to_text = fn("pubmedqa/preprocess_pubmedqa.py", "pp")
    pub = tmp_path / "ori_pqal.json"
    pub.write_text(json.dumps({str(1000 + i): {
        "QUESTION": f"Does drug {i} work?", "CONTEXTS": [f"Background {i}.", "Results."],
        "final_decision": ["yes", "no", "maybe"][i % 3], "LONG_ANSWER": "."} for i in range(5)}))
    for q in load_task("pubmedqa", pub, "dev"):
        raw = {"QUESTION": q.record.question, "CONTEXTS": q.record.context.split("\n")}
        assert q.prompt == to_text(raw) and q.choices == ("yes", "no", "maybe")
    five = load_task("medqa", _jsonl(tmp_path / "medqa5.jsonl", MEDQA5))
    assert five[0].choices == tuple("ABCDE") and five[0].prompt.count("\n") == 6


def test_bad_tasks_and_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="needs --data"):
        load_task("medqa")
    with pytest.raises(InvalidRequest, match="unknown task"):
        load_task("usmle")
    with pytest.raises(InvalidRequest, match="--split applies to pubmedqa only"):
        load_task("medqa", _jsonl(tmp_path / "m.jsonl", MEDQA), split="test")
    bad = dict(MEDQA[0], answer_idx="E")
    with pytest.raises(CorpusError, match=r"m2\.jsonl:1: answer_idx 'E'"):
        load_task("medqa", _jsonl(tmp_path / "m2.jsonl", [bad]))
    with pytest.raises(InvalidRequest, match="c9: answer 'Z'"):
        load_task("jsonl:" + str(_jsonl(tmp_path / "c.jsonl", [dict(CLINIC[0], id="c9",
                                                                     answer="Z")])))


def test_statistics_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(9, 20), (0, 10), (10, 10), (118, 200), (1, 3)]:
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    for b, c in [(3, 11), (0, 5), (7, 7), (1, 0), (20, 40)]:
        want = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9)
    res = paired([True, True, False, False], [True, False, True, False], "AABB", "ABAB")
    assert res["agreement"] == 0.5 and res["only_a_correct"] == 1 and res["both_wrong"] == 1


@pytest.mark.parametrize("text,pred,rule", [
    ("The answer is C.", 2, "explicit"),
    ("Answer: (B) Warfarin", 1, "explicit"),
    ("<think>A looks wrong, maybe B</think>\nD. Metformin", 3, "leading"),
    ("(A)", 0, "leading"),
    ("I would give Insulin here.", 2, "option-text"),
    ("It depends on the patient.", None, None),
    ("Either A or B.", None, None),
])
def test_letter_extraction(tmp_path: Path, text: str, pred: int | None, rule: str | None) -> None:
    q = load_task("medqa", _jsonl(tmp_path / "m.jsonl", MEDQA))[0]
    assert extract(q, text) == (pred, rule)


def test_yes_no_maybe_extraction(tmp_path: Path) -> None:
    pub = tmp_path / "ori_pqal.json"
    pub.write_text(json.dumps({"1": {"QUESTION": "Q?", "CONTEXTS": ["C."],
                                     "final_decision": "no", "LONG_ANSWER": "."}}))
    q = load_task("pubmedqa", pub)[0]
    assert extract(q, "Yes, it does.") == (0, "leading")
    assert extract(q, "The final answer is: maybe") == (2, "explicit")
    assert extract(q, "The trial shows no benefit.") == (1, "sole-mention")
    assert extract(q, "Yes or no, hard to say.")[0] == 0  # leading word wins
    assert extract(q, "Unclear.") == (None, None)


def _hf_loglik(model_dir: Path, ctx: list[int], cont: list[int]) -> float:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_loglik_through_the_engine_matches_transformers(tiny_llama: Path, tmp_path: Path) -> None:
    from medrt.tokenizer import Tokenizer

    questions = load_task("jsonl:" + str(_jsonl(tmp_path / "c.jsonl", CLINIC)))
    report = evaluate(tiny_llama, questions, task="jsonl", mode="loglik", num_threads=1,
                      progress=False, window=2, engine_args={"block_size": 4})
    tok = Tokenizer(tiny_llama)
    for q, rec in zip(questions, report["questions"]):
        assert rec["id"] == q.id and rec["gold"] == q.gold_choice
        for choice, ll in zip(q.choices, rec["loglik"]):
            ctx, cont = encode_pair(tok, q.prompt, " " + choice)
            assert ll == pytest.approx(_hf_loglik(tiny_llama, ctx, cont), abs=1e-4)
        best = max(range(len(q.choices)), key=lambda i: rec["loglik"][i])
        assert rec["prediction"] == q.choices[best]
        assert rec["correct"] == (best == q.gold)
    m = report["metrics"]
    assert m["acc"]["n"] == 3 and m["acc"]["correct"] == sum(r["correct"] for r in report["questions"])
    assert m["by_category"]["medication"]["n"] == 1  # the record's own category is kept
    assert report["run"]["prefix_cache_hits"] > 0
    fp = report["fingerprint"]
    assert fp["tensor_types"] == {"F32": fp["tensor_types"]["F32"]} and len(fp["weights_sha256"]) == 64


def test_long_context_is_truncated_on_the_left(tiny_llama: Path, tmp_path: Path) -> None:
    from medrt.tokenizer import Tokenizer

    long = dict(CLINIC[1], context="The patient collapsed at home and was found by a neighbour. "
                * 6)
    q = load_task("jsonl:" + str(_jsonl(tmp_path / "c.jsonl", [long])))[0]
    report = evaluate(tiny_llama, [q], task="jsonl", mode="loglik", num_threads=1,
                      progress=False, engine_args={"max_model_len": 48})
    tok = Tokenizer(tiny_llama)
    for choice, ll in zip(q.choices, report["questions"][0]["loglik"]):
        ctx, cont = encode_pair(tok, q.prompt, " " + choice)
        assert len(ctx) + len(cont) > 47
        kept = ctx[len(ctx) + len(cont) - 47:]
        assert ll == pytest.approx(_hf_loglik(tiny_llama, kept, cont), abs=1e-4)


def test_generate_with_a_reasoning_budget(tiny_model_dir, tmp_path: Path) -> None:
    # A copy of the tiny Llama whose chat template opens a <think> block: the random model never
    # closes it, so every answer is forced after the budget and read after </think>.
    model = tmp_path / "thinking"
    shutil.copytree(tiny_model_dir("llama", "float32"), model)
    cfg_path = model / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] += "{%- if add_generation_prompt %}{{ '<think>\\n' }}{%- endif %}"
    cfg_path.write_text(json.dumps(cfg))
    questions = load_task("jsonl:" + str(_jsonl(tmp_path / "c.jsonl", CLINIC)))
    report = evaluate(model, questions, task="jsonl", mode="generate", num_threads=1,
                      progress=False,
                      generate=GenerateConfig(max_tokens=4, reasoning_budget=6, seed=3))
    recs = report["questions"]
    assert all(r["forced_answer"] and "</think>" in r["output"] for r in recs)
    assert report["metrics"]["unparseable"] == sum(r["prediction"] is None for r in recs)
    assert report["run"]["generate"]["reasoning_budget"] == 6


def test_cli_reports_and_compare(tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    task = "jsonl:" + str(_jsonl(tmp_path / "c.jsonl", CLINIC))
    a, b, md = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "a.md"
    assert main(["eval", "--model", str(tiny_llama), "--task", task, "--output", str(a),
                 "--markdown", str(md), "--threads", "1", "--no-progress"]) == 0
    assert main(["eval", "--model", str(tiny_qwen2), "--task", task, "--output", str(b),
                 "--threads", "1", "--no-progress", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "| acc |" in out and "| acc_norm |" in out and md.read_text() in out
    assert len(json.loads(b.read_text())["questions"]) == 2
    assert main(["eval", "--compare", str(a), str(b), "--output", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["questions"] == 2 and 0.0 <= result["mcnemar_p"] <= 1.0
    assert "McNemar" in capsys.readouterr().out
    assert main(["eval", "--task", "medqa", "--model", str(tiny_llama)]) == 1
    assert "needs --data" in capsys.readouterr().err
