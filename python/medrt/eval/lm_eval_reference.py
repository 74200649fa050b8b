"""lm-evaluation-harness as the reference for `medrt eval` (needs the ``lm_eval`` package, which
the runtime does not: the parity test and the figures in docs/evaluation.md use it).

lm-eval's own ``pubmedqa`` task (its YAML included from the installed package: prompt, choices,
metrics) runs with the dataset pointed at a local JSONL file of the same questions, on lm-eval's
Hugging Face backend in f32.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrt.eval.tasks import Question


def pubmedqa_logliks(model_dir: str | Path, questions: Sequence[Question], workdir: Path,
                     batch_size: int = 1) -> dict[str, Any]:
    """{"logliks": {PubMed id: [ll(" yes"), ll(" no"), ll(" maybe")]}, "acc", "acc_norm",
    "seconds"} from lm-eval's HF backend on ``questions``."""
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pubmedqa_local.jsonl"
    with data.open("w") as f:
        for q in questions:
            r = q.record
            f.write(json.dumps({"pubid": r.id, "QUESTION": r.question,
                                "CONTEXTS": r.context.split("\n"),
                                "final_decision": r.answer}) + "\n")
    upstream = Path(lm_eval.__file__).parent / "tasks" / "pubmedqa" / "pubmedqa.yaml"
    tasks = workdir / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "pubmedqa_local.yaml").write_text(
        f"include: {upstream}\ntask: pubmedqa_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    start = time.monotonic()
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=["pubmedqa_local"],
        task_manager=TaskManager(include_path=str(tasks)), batch_size=batch_size, device="cpu",
        log_samples=True)
    seconds = time.monotonic() - start
    logliks = {str(s["doc"]["pubid"]): [float(r[0]) for r in s["filtered_resps"]]
               for s in results["samples"]["pubmedqa_local"]}
    metrics = results["results"]["pubmedqa_local"]
    return {"logliks": logliks, "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
            "seconds": seconds}
