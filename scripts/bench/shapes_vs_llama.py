"""Batch-1 decode and prompt speed of medrt's quantized 1.5B/7B-shape models against llama.cpp.

    python scripts/bench/shapes_vs_llama.py --medrt-bench build/ct/cpp/medrt-bench \\
        --llama-bin DIR/vendor/llama.cpp/build/bin --work-dir /work/peers/shapes --shape 1.5b \\
        --medrt int4-g64-int8-head,paper-int8-io --llama gguf-q4_0 -r 6

The models are shape_models.py's formats in --work-dir (build them first). Each repetition
measures the read bandwidth (medrt-bench --bandwidth-mib), then runs every medrt directory
(medrt-bench) and every GGUF file (llama-bench) once, alternating, so a ratio compares runs
minutes apart. Prints a Markdown table of medians: the bytes a decoded token reads (every
weight but the input embedding table, of which a token reads one row; from the files'
tensor headers), pp and tg tokens/s, the ratios to the first --llama file, the range of the
per-repetition tg ratios, and the roofline: the median over repetitions of the bytes the
decode read per second over the bandwidth probed just before it. This VM's bus moves between
a slow and a fast phase from one process to the next; a share over 100% means the bus ran
faster during the decode than during its probe, and is shown as such rather than as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_vs_llama  # sibling scripts, found through the path above
import report
import shape_models


def bytes_per_token(path: Path) -> int:
    """Bytes of every weight tensor but the input embedding, from the tensor headers."""
    total = embedding = 0
    if path.suffix == ".gguf":
        import gguf

        for t in gguf.GGUFReader(path).tensors:
            total += int(t.n_bytes)
            embedding += int(t.n_bytes) if t.name.startswith("token_embd.") else 0
        return total - embedding
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = info["data_offsets"][1] - info["data_offsets"][0]
            total += n
            embedding += n if name.startswith("model.embed_tokens.") else 0
    return total - embedding


def _json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def medrt(args: argparse.Namespace, path: Path) -> dict[str, float]:
    out = quant_vs_llama._run([str(args.medrt_bench), "-m", str(path), "-t", str(args.threads),
                               "-p", str(args.p), "-n", str(args.n), "--batched", "",
                               "--bandwidth-mib", "0", "-r", "1", "--json"])
    return {r["test"]: r["tokens_per_s"] for r in _json_rows(out) if "test" in r}


def llama(args: argparse.Namespace, path: Path) -> dict[str, float]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(args.llama_bin))
    out = quant_vs_llama._run([str(args.llama_bin / "llama-bench"), "-m", str(path), "-t",
                               str(args.threads), "-p", str(args.p), "-n", str(args.n), "-r",
                               "1", "-o", "json"], env)
    return {(f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"): r["avg_ts"]
            for r in json.loads(out)}


def bandwidth(args: argparse.Namespace, path: Path) -> float:
    out = quant_vs_llama._run([str(args.medrt_bench), "-m", str(path), "-t", str(args.threads),
                               "-p", "0", "-n", "0", "--batched", "", "--bandwidth-mib",
                               "1024", "-r", "1", "--json"])
    return next(r["read_bandwidth_bytes_per_s"] for r in _json_rows(out)
                if "read_bandwidth_bytes_per_s" in r)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--medrt-bench", type=Path, required=True)
    p.add_argument("--llama-bin", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--shape", choices=sorted(shape_models.SHAPES), required=True)
    p.add_argument("--medrt", default="int4-g64-int8-head,paper-int8-io",
                   help="shape_models.py formats of the medrt directories")
    p.add_argument("--llama", default="gguf-q4_0",
                   help="shape_models.py formats of the GGUF files; ratios are to the first")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-p", type=int, default=512)
    p.add_argument("-n", type=int, default=128)
    p.add_argument("-r", "--reps", type=int, default=5)
    args = p.parse_args()

    models = [("medrt", f) for f in args.medrt.split(",") if f] + \
             [("llama.cpp", f) for f in args.llama.split(",") if f]
    if not any(e == "medrt" for e, _ in models) or not any(e == "llama.cpp" for e, _ in models):
        sys.exit("give at least one format in --medrt and one in --llama")
    paths = {f: shape_models.output_path(args.work_dir, args.shape, f) for _, f in models}
    for f, path in paths.items():
        if not path.exists():
            sys.exit(f"{path} is missing: python scripts/bench/shape_models.py --shape "
                     f"{args.shape} --formats {f} --work-dir {args.work_dir}")
    first_medrt = next(paths[f] for e, f in models if e == "medrt")
    bws: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {f: [] for _, f in models}
    for _ in range(args.reps):
        bws.append(bandwidth(args, first_medrt))
        for engine, f in models:
            runs[f].append((medrt if engine == "medrt" else llama)(args, paths[f]))

    pp, tg = f"pp{args.p}", f"tg{args.n}"
    bw = statistics.median(bws)
    ref = next(f for e, f in models if e == "llama.cpp")
    print(f"{report.machine()}; threads {args.threads}; {args.reps} alternating repetitions, "
          f"medians; read bandwidth before each repetition {min(bws) / 1e9:.1f}-"
          f"{max(bws) / 1e9:.1f} GB/s (median {bw / 1e9:.1f})\n")
    print(f"| engine | weights | bytes per token | {pp} t/s | {tg} t/s (repetitions) | "
          f"{pp} vs {ref} | {tg} vs {ref} | per repetition | roofline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def med(f: str, test: str) -> float:
        return statistics.median(r.get(test, 0.0) for r in runs[f])

    def ratio(f: str, test: str) -> str:
        return f"{med(f, test) / med(ref, test):.2f}x" if med(ref, test) else "-"

    for engine, f in models:
        nbytes = bytes_per_token(paths[f])
        reps = [r.get(tg, 0.0) for r in runs[f]]
        per = [a / b for a, b in zip(reps, (r.get(tg, 0.0) for r in runs[ref])) if b]
        roof = statistics.median(nbytes * t / b for t, b in zip(reps, bws))
        print(f"| {engine} | {f} | {nbytes / 1e9:.3f} GB | {med(f, pp):.1f} | {med(f, tg):.2f} "
              f"({' '.join(f'{x:.1f}' for x in reps)}) | {ratio(f, pp)} | {ratio(f, tg)} | "
              f"{min(per, default=0):.2f}-{max(per, default=0):.2f}x | "
              f"{f'{roof:.0%}' if roof <= 1 else 'over the probe'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
