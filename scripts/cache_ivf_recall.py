"""How often a large scope's IVF index finds the true nearest entry, per nprobe (the measurement
behind medrt.cache.vector_index.DEFAULT_NPROBE; docs/semantic-cache.md, "Large scopes").

  PYTHONPATH=python python scripts/cache_ivf_recall.py --sizes 100000 1000000

Stored: the PubMedQA sentences of ../shared/data (about 10^4, embedded by medrt.Embedder), the
`cached` questions of tests/data/cache_pairs.jsonl, and up to N in all with copies of random
PubMedQA sentences jittered to cosine ~0.7 of their source (so the filler crowds the same
region of the embedding space as real medical text, which is harder for IVF than random
vectors). Probes: the pairs' `asked` questions (paraphrases and hard negatives of the cached
ones). For each probe the true nearest entry comes from an exact flat search; the IVF index
(VectorIndex as the cache builds it) finds it or not among its top_k candidates. "hit-relevant"
counts only probes whose true nearest entry reaches the cache's threshold: the only ones
whose lookup result a miss could change (into a cache miss; never into a false hit).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import medrt
from medrt.cache.semantic_cache import DEFAULT_THRESHOLD
from medrt.cache.vector_index import IndexSettings, VectorIndex

PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
TOP_K = 8
NPROBES = (4, 8, 16, 32, 64)


def pubmedqa_sentences() -> list[str]:
    data = json.loads(PUBMEDQA.read_text())
    out = set()
    for item in data.values():
        out.add(item["QUESTION"])
        for ctx in item["CONTEXTS"]:
            out |= {s for s in re.split(r"(?<=[.!?])\s+", ctx) if len(s) > 20}
    return sorted(out)


def embed(emb: medrt.Embedder, texts: list[str]) -> np.ndarray:
    return np.concatenate([emb.embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])


def stored(base: np.ndarray, cached: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    extra = max(0, n - len(base) - len(cached))
    src = base[rng.integers(0, len(base), extra)]
    jitter = src + rng.standard_normal(src.shape).astype(np.float32) / np.sqrt(src.shape[1])
    jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
    return np.concatenate([base, jitter, cached]).astype(np.float32)


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    emb = medrt.Embedder("all-minilm-l6-v2", num_threads=args.threads)
    with open(ROOT / "tests" / "data" / "cache_pairs.jsonl") as f:
        pairs = [json.loads(line) for line in f]
    t0 = time.perf_counter()
    base = embed(emb, pubmedqa_sentences())
    cached = embed(emb, [p["cached"] for p in pairs])
    probes = embed(emb, [p["asked"] for p in pairs])
    print(f"embedded {len(base)} PubMedQA sentences in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(1)
    print("| entries | lists | nprobe | true nearest found | hit-relevant found | search p50 |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        x = stored(base, cached, n, rng)
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        true_cos, true_id = flat.search(probes, 1)
        relevant = true_cos[:, 0] >= DEFAULT_THRESHOLD
        idx = VectorIndex(x.shape[1], IndexSettings(ivf_min_entries=1))
        idx.add(np.arange(len(x)), x)
        for nprobe in NPROBES:
            idx.faiss_index.nprobe = nprobe
            times, found = [], []
            for q, want in zip(probes, true_id[:, 0]):
                t1 = time.perf_counter()
                got = idx.search(q, TOP_K)
                times.append(time.perf_counter() - t1)
                found.append(any(i == want for i, _ in got))
            hit = np.array(found)
            print(f"| {len(x):,} | {idx.faiss_index.nlist} | {nprobe} | {hit.mean():.1%} | "
                  f"{hit[relevant].mean():.1%} of {relevant.sum()} | "
                  f"{1e3 * np.median(times):.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
