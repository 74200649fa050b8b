"""Semantic-cache lookup latency (embedding included) at several scope sizes, as a table.

  PYTHONPATH=python python scripts/cache_latency.py --sizes 1000 100000 1000000

Each size fills a fresh cache's memory tier (and its SQLite file) with N entries of one scope,
then times `lookup` of 200 real questions (tests/data/cache_pairs.jsonl) after 20 warm-up
lookups. Stored vectors are random unit vectors: embedding 10^6 texts would take longer than
the run, and a scan costs the same whatever the vectors hold (an IVF index's lists are as even
or more so). Besides the whole lookup it times its two parts on the same probes: the
embedding alone, and the lookup given the embedding (exact tier, FAISS search, reranking,
guard). Filling 10^6 entries takes minutes (SQLite inserts and IVF training).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import medrt
from medrt.cache.vector_index import DEFAULT_IVF_MIN_ENTRIES, DEFAULT_NPROBE

PROBES, WARMUP, CHUNK = 200, 20, 50_000


def probes() -> list[str]:
    with open(ROOT / "tests" / "data" / "cache_pairs.jsonl") as f:
        return [json.loads(line)["asked"] for line in f][:PROBES]


def _ms(times: list[float]) -> tuple[float, float]:
    ms = 1e3 * np.array(times)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def fill(cache: medrt.SemanticCache, n: int, rng: np.random.Generator) -> None:
    greedy = medrt.SamplingParams(temperature=0)
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        v = rng.standard_normal((m, cache.embedder.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cache.store_many([{"question": f"stored question {s + i}", "answer": "x",
                           "sampling": greedy} for i in range(m)], v)


def measure(emb: medrt.Embedder, sizes: list[int], a: float | None = None,
            threshold: float | None = None, ivf_min_entries: int = DEFAULT_IVF_MIN_ENTRIES,
            nprobe: int = DEFAULT_NPROBE) -> list[dict]:
    """One row per size: p50/p99 of the whole lookup, of the embedding, of the rest."""
    rng = np.random.default_rng(0)
    qs = probes()
    greedy = medrt.SamplingParams(temperature=0)
    point = {k: v for k, v in (("a", a), ("threshold", threshold)) if v is not None}
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            cache = medrt.SemanticCache(d, embedder=emb, memory_entries=max(n, 1),
                                        memory_bytes=1 << 40, ivf_min_entries=ivf_min_entries,
                                        nprobe=nprobe, **point)
            t0 = time.perf_counter()
            fill(cache, n, rng)
            fill_s = time.perf_counter() - t0
            (index,) = cache.memory._indexes.values()
            layout = f"ivf {index.faiss_index.nlist} lists" if index.is_ivf else "flat"
            for q in qs[:WARMUP]:
                cache.lookup(q, sampling=greedy)
            whole, embed, rest = [], [], []
            for q in qs:  # the three timings alternate, so load on the machine hits each
                t0 = time.perf_counter()
                cache.lookup(q, sampling=greedy)
                t1 = time.perf_counter()
                vec = cache.embed(q)
                t2 = time.perf_counter()
                cache.lookup(q, sampling=greedy, embedding=vec)
                t3 = time.perf_counter()
                whole.append(t1 - t0)
                embed.append(t2 - t1)
                rest.append(t3 - t2)
            cache.close()
        row = {"entries": n, "index": layout, "fill_s": round(fill_s, 1), "probes": len(qs)}
        for name, times in (("lookup", whole), ("embed", embed), ("search", rest)):
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = _ms(times)
        out.append(row)
        print(f"  {n}: lookup p50 {row['lookup_p50_ms']:.2f} ms, p99 "
              f"{row['lookup_p99_ms']:.2f} ms ({layout}, filled in {fill_s:.0f} s)", flush=True)
    return out


def table(rows: list[dict]) -> str:
    head = ("| entries | index | lookup p50 | lookup p99 | embed p50 | embed p99 "
            "| search+rerank p50 | search+rerank p99 |")
    lines = [head, "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['entries']:,} | {r['index']} | {r['lookup_p50_ms']:.2f} ms | "
                     f"{r['lookup_p99_ms']:.2f} ms | {r['embed_p50_ms']:.2f} ms | "
                     f"{r['embed_p99_ms']:.2f} ms | {r['search_p50_ms']:.3f} ms | "
                     f"{r['search_p99_ms']:.3f} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    ap.add_argument("--threads", type=int, default=2, help="the embedder's threads")
    ap.add_argument("--ivf-min-entries", type=int, default=DEFAULT_IVF_MIN_ENTRIES)
    ap.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    emb = medrt.Embedder("all-minilm-l6-v2", num_threads=args.threads)
    rows = measure(emb, args.sizes, ivf_min_entries=args.ivf_min_entries, nprobe=args.nprobe)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
