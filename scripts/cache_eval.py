"""The semantic cache's figures (docs/semantic-cache.md): hit and false-hit rates over a sweep
of `a` and the threshold with and without the guard, the chosen operating point, a PNG of the
curves, lookup latency at several cache sizes, and the embedder's speed against
sentence-transformers.

  PYTHONPATH=python python scripts/cache_eval.py --out docs/figures [--sizes 1000 100000]
      [--skip-speed] [--smollm2]

Pairs come from tests/data/cache_pairs.jsonl: `cached` is the stored question, `asked` the
new one; label "hit" (a paraphrase) or "miss" (a hard negative). A pair counts as a hit when
the combined score a * Jaccard + (1 - a) * cosine reaches the threshold (and, with the guard,
the guard accepts it): the decision the cache makes for its best candidate.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import medrt
from medrt.cache.guard import Guard
from medrt.cache.text import jaccard, words

A_VALUES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
THRESHOLDS = np.round(np.arange(0.50, 1.0001, 0.01), 2)
TARGET_FALSE = 0.01
MIN_HIT = 0.80


def load_pairs() -> list[dict]:
    with open(ROOT / "tests" / "data" / "cache_pairs.jsonl") as f:
        return [json.loads(line) for line in f]


def pair_features(pairs: list[dict], emb: medrt.Embedder) -> dict[str, np.ndarray]:
    texts = sorted({p["cached"] for p in pairs} | {p["asked"] for p in pairs})
    vecs = dict(zip(texts, emb.embed(texts)))
    guard = Guard.default()
    cos = np.array([float(vecs[p["cached"]] @ vecs[p["asked"]]) for p in pairs])
    jac = np.array([jaccard(words(p["cached"]), words(p["asked"])) for p in pairs])
    ok = np.array([guard.check(p["cached"], p["asked"]).ok for p in pairs])
    pos = np.array([p["label"] == "hit" for p in pairs])
    return {"cos": cos, "jac": jac, "guard_ok": ok, "pos": pos}


def sweep(f: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for a in A_VALUES:
        score = a * f["jac"] + (1 - a) * f["cos"]
        for t in THRESHOLDS:
            accept = score >= t
            for guard in (False, True):
                acc = accept & f["guard_ok"] if guard else accept
                rows.append({"a": a, "threshold": float(t), "guard": guard,
                             "hit_rate": float(acc[f["pos"]].mean()),
                             "false_hit_rate": float(acc[~f["pos"]].mean())})
    return rows


def choose(rows: list[dict]) -> dict:
    """The most conservative point that still answers most paraphrases: with the guard, the
    highest threshold whose paraphrase hit rate is at least MIN_HIT (the 70% target plus a
    margin) at false hits <= 1%; across `a`, the one whose score alone (without the guard)
    lets the fewest negatives through, so the score stays a second line of defence for
    differences the guard does not know."""
    bare = {(r["a"], r["threshold"]): r["false_hit_rate"] for r in rows if not r["guard"]}
    best = []
    for a in A_VALUES:
        ok = [r for r in rows if r["guard"] and r["a"] == a and r["hit_rate"] >= MIN_HIT
              and r["false_hit_rate"] <= TARGET_FALSE]
        if ok:
            best.append(max(ok, key=lambda r: r["threshold"]))
    return min(best, key=lambda r: (bare[(r["a"], r["threshold"])], -r["hit_rate"]))


def per_kind(pairs: list[dict], f: dict[str, np.ndarray], a: float, t: float) -> dict:
    score = a * f["jac"] + (1 - a) * f["cos"]
    out: dict[str, dict] = {}
    for i, p in enumerate(pairs):
        k = out.setdefault(p["kind"], {"n": 0, "accepted_no_guard": 0, "accepted_guard": 0})
        k["n"] += 1
        k["accepted_no_guard"] += int(score[i] >= t)
        k["accepted_guard"] += int(score[i] >= t and f["guard_ok"][i])
    return out


def plot(rows: list[dict], point: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, guard in zip(axes, (False, True)):
        for a in A_VALUES:
            rs = [r for r in rows if r["guard"] == guard and r["a"] == a]
            ax.plot([100 * r["false_hit_rate"] for r in rs], [100 * r["hit_rate"] for r in rs],
                    label=f"a = {a}")
        ax.axvline(100 * TARGET_FALSE, color="grey", ls=":", lw=1)
        ax.axhline(70, color="grey", ls=":", lw=1)
        if guard:
            ax.plot(100 * point["false_hit_rate"], 100 * point["hit_rate"], "k*", ms=14,
                    label=f"chosen: a={point['a']}, t={point['threshold']}")
        ax.set_title("with the guard" if guard else "without the guard")
        ax.set_xlabel("false hits on hard negatives (%)")
        ax.set_xscale("symlog", linthresh=1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hits on paraphrases (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Semantic cache: threshold sweep (each curve: thresholds 0.50 .. 1.00)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def latency(emb: medrt.Embedder, sizes: list[int], a: float, t: float) -> list[dict]:
    """Lookup p50/p99 (embedding included) with N entries in the memory tier: see
    scripts/cache_latency.py, which also runs on its own."""
    from cache_latency import measure, table

    rows = measure(emb, sizes, a, t)
    print(table(rows), flush=True)
    return rows


def embedder_speed(emb: medrt.Embedder) -> list[dict]:
    """medrt vs sentence-transformers (torch, 2 threads), same texts, same batches; the two
    alternate per repetition so load on the machine falls on both."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    st = SentenceTransformer(str(emb.model_dir), device="cpu")
    texts = [p["asked"] for p in load_pairs()]
    out = []
    for bs in (1, 32):
        batches = [texts[i:i + bs] for i in range(0, 64 if bs == 1 else 320, bs)]
        emb.embed(batches[0])
        st.encode(batches[0], batch_size=bs)
        tm, ts = [], []
        for b in batches:
            t0 = time.perf_counter()
            emb.embed(b)
            tm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                st.encode(b, batch_size=bs)
            ts.append(time.perf_counter() - t0)
        m, s = 1e3 * float(np.median(tm)), 1e3 * float(np.median(ts))
        out.append({"batch": bs, "threads": 2, "medrt_ms": m, "sentence_transformers_ms": s,
                    "speedup": s / m})
        print(f"embedder batch {bs}: medrt {m:.2f} ms, sentence-transformers {s:.2f} ms "
              f"({s / m:.2f}x)", flush=True)
    # CPU seconds on one thread: what each needs of a core, whatever else runs on the machine
    # (wall-clock ratios on a busy machine also measure how each copes with contention).
    one = medrt.Embedder(emb.model_dir, num_threads=1)
    torch.set_num_threads(1)
    for bs in (1, 32):
        batches = [texts[i:i + bs] for i in range(0, 64 if bs == 1 else 320, bs)]
        cpu_m = cpu_s = 0.0
        for b in batches:
            c0 = time.process_time()
            one.embed(b)
            cpu_m += time.process_time() - c0
            c0 = time.process_time()
            with torch.inference_mode():
                st.encode(b, batch_size=bs)
            cpu_s += time.process_time() - c0
        m, s = 1e3 * cpu_m / len(batches), 1e3 * cpu_s / len(batches)
        out.append({"batch": bs, "threads": 1, "medrt_cpu_ms": m,
                    "sentence_transformers_cpu_ms": s, "speedup": s / m})
        print(f"embedder batch {bs}, 1 thread, CPU time: medrt {m:.2f} ms, "
              f"sentence-transformers {s:.2f} ms ({s / m:.2f}x)", flush=True)
    return out


def hit_vs_generate(emb: medrt.Embedder, a: float, t: float) -> dict:
    """SmolLM2-135M-Instruct: a generated answer (64 tokens max) against the same question's
    paraphrase answered from the cache."""
    q = "What is the maximum daily dose of paracetamol for an adult?"
    para = "What's the highest daily paracetamol dose for an adult?"
    params = medrt.SamplingParams(temperature=0, max_tokens=64)
    with tempfile.TemporaryDirectory() as d, \
            medrt.SemanticCache(d, embedder=emb, a=a, threshold=t) as cache, \
            medrt.LLM("smollm2-135m-instruct", cache=cache, num_threads=2) as llm:
        conv = [{"role": "user", "content": q}]
        t0 = time.perf_counter()
        gen = llm.chat(conv, params)[0]
        t_gen = time.perf_counter() - t0
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            hit = llm.chat([{"role": "user", "content": para}], params)[0]
            times.append(time.perf_counter() - t0)
    return {"generated_ms": 1e3 * t_gen, "generated_tokens": len(gen.outputs[0].token_ids),
            "hit_ms_p50": 1e3 * float(np.median(times)), "hit": hit.cache}


def machine() -> dict:
    model = ""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in
                     subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
                     if ln.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    from medrt import _core  # noqa: F401

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    isa = "avx512" if re.search(r"\bavx512f\b", flags) else "avx2" if "avx2" in flags else "?"
    return {"cpu": model, "isa": isa, "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 100_000])
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--smollm2", action="store_true", help="also time a hit against SmolLM2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    emb = medrt.Embedder("all-minilm-l6-v2", num_threads=args.threads)
    pairs = load_pairs()
    f = pair_features(pairs, emb)
    rows = sweep(f)
    point = choose(rows)
    same_no_guard = next(r for r in rows if not r["guard"] and r["a"] == point["a"]
                         and r["threshold"] == point["threshold"])
    best_no_guard = max((r for r in rows if not r["guard"]
                         and r["false_hit_rate"] <= TARGET_FALSE), key=lambda r: r["hit_rate"])
    report = {"machine": machine(), "pairs": len(pairs),
              "paraphrases": int(f["pos"].sum()), "negatives": int((~f["pos"]).sum()),
              "operating_point": point, "same_point_without_guard": same_no_guard,
              "best_without_guard_at_1pct": best_no_guard,
              "per_kind_at_operating_point": per_kind(pairs, f, point["a"], point["threshold"]),
              "guard_refuses_paraphrases": int((~f["guard_ok"] & f["pos"]).sum())}
    print(json.dumps({k: report[k] for k in ("operating_point", "same_point_without_guard",
                                            "best_without_guard_at_1pct")}, indent=1))
    plot(rows, point, out / "cache_sweep.png")
    if not args.skip_speed:
        report["embedder_speed"] = embedder_speed(emb)
    if args.sizes:
        report["latency"] = latency(emb, args.sizes, point["a"], point["threshold"])
    if args.smollm2:
        report["smollm2"] = hit_vs_generate(emb, point["a"], point["threshold"])
        print(report["smollm2"])
    previous = out / "cache_eval.json"
    if previous.is_file():  # sections skipped in this run keep their last measurement
        old = json.loads(previous.read_text())
        for key in ("latency", "embedder_speed", "smollm2"):
            if key not in report and key in old:
                report[key] = old[key]
    previous.write_text(json.dumps({**report, "sweep": rows}, indent=1) + "\n")
    print(f"wrote {out / 'cache_sweep.png'} and {out / 'cache_eval.json'}")


if __name__ == "__main__":
    main()
