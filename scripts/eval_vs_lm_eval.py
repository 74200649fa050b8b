"""PubMedQA through `medrt eval` and through lm-evaluation-harness on the same questions, side
by side (docs/evaluation.md): per-choice log-likelihood differences, both accuracies, the
paired agreement, questions per second.

    PYTHONPATH=python python scripts/eval_vs_lm_eval.py MODEL_DIR --split test \\
        --medrt-report build/eval/f32.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from medrt.eval.lm_eval_reference import pubmedqa_logliks
from medrt.eval.report import load_report
from medrt.eval.run import evaluate
from medrt.eval.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--medrt-report", default=None,
                    help="a `medrt eval --output` report of the same run to reuse")
    args = ap.parse_args()
    questions = load_task("pubmedqa", split=args.split, limit=args.limit)
    if args.medrt_report:
        report = load_report(args.medrt_report)
    else:
        report = evaluate(args.model, questions, task="pubmedqa", mode="loglik",
                          split=args.split, num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ref = pubmedqa_logliks(args.model, questions, Path(tmp))
    diffs = [abs(a - b) for rec in report["questions"]
             for a, b in zip(rec["loglik"], ref["logliks"][rec["id"]])]
    same = sum(rec["prediction"] == ("yes", "no", "maybe")[
        max(range(3), key=ref["logliks"][rec["id"]].__getitem__)] for rec in report["questions"])
    n = len(report["questions"])
    print(json.dumps({
        "questions": n, "max_abs_loglik_diff": max(diffs),
        "medrt": {"acc": report["metrics"]["acc"]["accuracy"],
                  "acc_norm": report["metrics"]["acc_norm"]["accuracy"],
                  "questions_per_second": report["run"]["questions_per_second"]},
        "lm_eval": {"acc": ref["acc"], "acc_norm": ref["acc_norm"],
                    "questions_per_second": n / ref["seconds"]},
        "same_prediction": same / n}, indent=1))


if __name__ == "__main__":
    main()
