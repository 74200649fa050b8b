"""One evaluation run: load the model into the engine, score every question, build the report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medrt.eval.generate import GenerateConfig, answer_questions
from medrt.eval.loglik import score_questions
from medrt.eval.report import REPORT_VERSION, fingerprint, metrics
from medrt.eval.tasks import Question

MODES = ("loglik", "generate")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc="medrt eval", disable=not enabled)


async def _score(llm: Any, questions: Sequence[Question], mode: str, cfg: GenerateConfig,
                 window: int, progress: bool) -> list[dict[str, Any]]:
    bar = _progress(len(questions), progress)
    try:
        if mode == "loglik":
            scores = await score_questions(llm, questions, window, lambda _: bar.update())
            return [_loglik_record(q, s) for q, s in zip(questions, scores)]
        answers = await answer_questions(llm, questions, cfg, lambda _: bar.update())
        return [_generate_record(q, a) for q, a in zip(questions, answers)]
    finally:
        bar.close()


def _base(q: Question) -> dict[str, Any]:
    return {"id": q.id, "category": q.category, "gold": q.gold_choice,
            "choices": list(q.choices)}


def _loglik_record(q: Question, s: Any) -> dict[str, Any]:
    return {**_base(q), "loglik": s.logliks, "continuation_tokens": s.num_tokens,
            "prediction": q.choices[s.pred], "prediction_norm": q.choices[s.pred_norm],
            "correct": s.pred == q.gold, "correct_norm": s.pred_norm == q.gold}


def _generate_record(q: Question, a: Any) -> dict[str, Any]:
    pred = None if a.pred is None else q.choices[a.pred]
    return {**_base(q), "prediction": pred, "correct": a.pred == q.gold, "rule": a.rule,
            "forced_answer": a.forced, "output": a.text}


def evaluate(model: str | Path, questions: Sequence[Question], *, task: str, mode: str,
             split: str | None = None, generate: GenerateConfig | None = None,
             num_threads: int = 0, seed: int = 0, window: int = 16, progress: bool = True,
             engine_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scores ``questions`` with the model through medrt's engine; returns the report dict
    (version, run, fingerprint, metrics, questions)."""
    from medrt import AsyncLLM
    from medrt.errors import InvalidRequest

    if mode not in MODES:
        raise InvalidRequest(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    cfg = generate or GenerateConfig()

    async def main() -> tuple[list[dict[str, Any]], Path, dict[str, int], dict[str, str]]:
        llm = AsyncLLM(str(model), num_threads=num_threads, seed=seed, **(engine_args or {}))
        try:
            records = await _score(llm, questions, mode, cfg, window, progress)
            return records, llm.model_dir, llm.stats(), llm.engine_settings
        finally:
            llm.close()

    start = time.monotonic()
    records, model_dir, stats, engine = asyncio.run(main())
    seconds = time.monotonic() - start
    run = {"task": task, "mode": mode, "split": split, "questions": len(records),
           "seconds": seconds, "questions_per_second": len(records) / seconds if seconds else 0.0,
           "prefix_cache_hits": stats.get("prefix_cache_hits", 0),
           "prompt_tokens_computed": stats.get("prompt_tokens", 0)}
    if mode == "generate":
        run["generate"] = asdict(cfg)
    return {"version": REPORT_VERSION, "run": run,
            "fingerprint": {**fingerprint(Path(model_dir),
                                          cfg.seed if mode == "generate" else seed),
                            **engine},
            "metrics": metrics(records, mode), "questions": records}
