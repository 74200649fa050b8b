"""What an evaluation reports: metrics with intervals, the per-category breakdown, the model's
fingerprint, one record per question; as JSON and as Markdown; and the paired comparison of two
such reports."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrt.errors import InvalidRequest
from medrt.eval.stats import paired, wilson_interval
from medrt.medical import CATEGORIES, GENERAL

REPORT_VERSION = 1


def _tensor_types(path: Path) -> Counter[str]:
    # The safetensors header: 8 bytes of length, then JSON naming each tensor's dtype.
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return Counter(v["dtype"] for k, v in header.items() if k != "__metadata__")


def fingerprint(model_dir: Path, seed: int | None) -> dict[str, Any]:
    """sha256 over config.json and the weight files (in name order), the tensor types (and the
    `quantization` section's recipe), the medrt version and the seed."""
    from medrt import __version__

    h = hashlib.sha256()
    types: Counter[str] = Counter()
    files = sorted(model_dir.glob("*.safetensors"))
    for path in [model_dir / "config.json", *files]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    for path in files:
        types += _tensor_types(path)
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization") or {}
    return {"model_dir": str(model_dir), "weights_sha256": h.hexdigest(),
            "tensor_types": dict(sorted(types.items())),
            "quantization": quant.get("recipe") if quant else None,
            "architecture": (config.get("architectures") or [config.get("model_type")])[0],
            "medrt_version": __version__, "seed": seed}


def _rate(correct: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(correct, n)
    return {"correct": correct, "n": n, "accuracy": correct / n if n else 0.0, "ci95": [lo, hi]}


def metrics(records: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """acc (and acc_norm for loglik, unparseable for generate) overall and per category."""
    n = len(records)
    out: dict[str, Any] = {"questions": n, "acc": _rate(sum(r["correct"] for r in records), n)}
    if mode == "loglik":
        out["acc_norm"] = _rate(sum(r["correct_norm"] for r in records), n)
    else:
        out["unparseable"] = sum(r["prediction"] is None for r in records)
    out["predicted"] = dict(Counter(str(r["prediction"]) for r in records))
    out["by_category"] = {
        cat: _rate(sum(r["correct"] for r in rs), len(rs))
        for cat in (*CATEGORIES, GENERAL)
        if (rs := [r for r in records if r["category"] == cat])}
    return out


def _pct(rate: dict[str, Any]) -> str:
    lo, hi = rate["ci95"]
    return f"{100 * rate['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({rate['correct']}/{rate['n']})"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the headline, the breakdown by category and the fingerprint."""
    m, fp, run = report["metrics"], report["fingerprint"], report["run"]
    types = ", ".join(f"{k} x{v}" for k, v in fp["tensor_types"].items())
    recipe = f", recipe {fp['quantization']}" if fp["quantization"] else ""
    speed = f"{run['seconds']:.1f} s ({run['questions_per_second']:.2f} questions/s)"
    lines = [f"# medrt eval: {run['task']} ({run['mode']})", "",
             f"- model: `{fp['model_dir']}` ({fp['architecture']}, tensors {types}{recipe})",
             f"- weights sha256: `{fp['weights_sha256']}`",
             f"- medrt {fp['medrt_version']}, seed {fp['seed']}, split {run['split']}, "
             + f"{m['questions']} questions, {speed}", "",
             "| metric | value (95% Wilson interval) |", "|---|---|",
             f"| acc | {_pct(m['acc'])} |"]
    if "acc_norm" in m:
        lines.append(f"| acc_norm | {_pct(m['acc_norm'])} |")
    if "unparseable" in m:
        lines.append(f"| unparseable answers | {m['unparseable']} |")
    lines += ["", "| category | acc (95% Wilson interval) |", "|---|---|"]
    lines += [f"| {cat} | {_pct(rate)} |" for cat, rate in m["by_category"].items()]
    return "\n".join(lines) + "\n"


def load_report(path: str | Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"{path}: not a medrt eval report ({e})") from None
    if not isinstance(report, dict) or report.get("version") != REPORT_VERSION:
        raise InvalidRequest(f"{path}: not a medrt eval report of version {REPORT_VERSION}")
    return report


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Paired agreement and McNemar's exact test over the questions both reports scored."""
    if (a["run"]["task"], a["run"]["mode"]) != (b["run"]["task"], b["run"]["mode"]):
        raise InvalidRequest("the two reports score different tasks or modes: "
                             f"{a['run']['task']}/{a['run']['mode']} and "
                             f"{b['run']['task']}/{b['run']['mode']}")
    by_id = {r["id"]: r for r in b["questions"]}
    common = [(r, by_id[r["id"]]) for r in a["questions"] if r["id"] in by_id]
    if not common:
        raise InvalidRequest("the two reports share no question ids")
    result = paired([x["correct"] for x, _ in common], [y["correct"] for _, y in common],
                    [x["prediction"] for x, _ in common], [y["prediction"] for _, y in common])
    return {"a": a["fingerprint"]["model_dir"], "b": b["fingerprint"]["model_dir"],
            "acc_a": _rate(sum(x["correct"] for x, _ in common), len(common)),
            "acc_b": _rate(sum(y["correct"] for _, y in common), len(common)), **result}


def compare_markdown(c: dict[str, Any]) -> str:
    lo, hi = c["agreement_ci95"]
    same = f"{100 * c['agreement']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] of {c['questions']}"
    table = " / ".join(str(c[k]) for k in ("both_correct", "only_a_correct", "only_b_correct",
                                             "both_wrong"))
    return "\n".join([
        "| | value |", "|---|---|",
        f"| A | `{c['a']}`: acc {_pct(c['acc_a'])} |",
        f"| B | `{c['b']}`: acc {_pct(c['acc_b'])} |",
        f"| same answer | {same} |",
        f"| both right / only A / only B / both wrong | {table} |",
        f"| McNemar exact p | {c['mcnemar_p']:.4g} |"]) + "\n"
