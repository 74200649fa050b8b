"""medrt against llama.cpp on the same GGUF weights, type by type, side by side in one run.

    python scripts/bench/quant_vs_llama.py --medrt-bench build/ct/cpp/medrt-bench \\
        --llama-bin DIR/vendor/llama.cpp/build/bin --work-dir /work/peers/bench \\
        --gguf SmolLM2-135M-Instruct.Q4_1.gguf --types Q4_1,Q4_0,Q8_0,F16 -t 2 -r 5

For each type, llama.cpp's llama-quantize makes the GGUF from --gguf (--allow-requantize: the
weights are whatever it writes, and both engines read exactly those), medrt imports it with
`medrt import-gguf` (Q4_0, Q4_1 and Q8_0 kept bit for bit; F16 as f16), and the two benchmark
binaries alternate: llama-bench (pp/tg) and llama-batched-bench against medrt-bench, each run
`--reps` times. Prints a Markdown table of medians with the ratios, the CPU model and the ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _run(cmd: list[str], env: dict | None = None) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env=env).stdout


def _prepare(args: argparse.Namespace, qtype: str) -> tuple[Path, Path]:
    gguf = args.work_dir / f"model-{qtype}.gguf"
    if not gguf.exists():
        _run([str(args.llama_bin / "llama-quantize"), "--allow-requantize", str(args.gguf),
              str(gguf), qtype])
    mdir = args.work_dir / f"medrt-{qtype}"
    if not (mdir / "config.json").exists():
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
        code = ("import sys; from medrt.cli import main; "
                f"sys.exit(main(['import-gguf', {str(gguf)!r}, {str(mdir)!r}]))")
        _run([sys.executable, "-c", code], env)
    return gguf, mdir


def _medrt(args: argparse.Namespace, mdir: Path, env: dict) -> dict[str, float]:
    out = _run([str(args.medrt_bench), "-m", str(mdir), "-t", str(args.threads), "-p",
                str(args.p), "-n", str(args.n), "-r", "1", "--batched", str(args.batched or ""),
                "--batched-prompt", "128", "--batched-gen", "128", "--bandwidth-mib", "0",
                "--activations", args.activations, "--kv-cache-dtype", args.kv_cache_dtype,
                "--json"], env)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["test"]: r["tokens_per_s"] for r in rows if "test" in r}


def _llama(args: argparse.Namespace, gguf: Path) -> dict[str, float]:
    out = _run([str(args.llama_bin / "llama-bench"), "-m", str(gguf), "-t", str(args.threads),
                "-p", str(args.p), "-n", str(args.n), "-r", "1", "-o", "json"])
    rows = {}
    for r in json.loads(out):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        rows[test] = r["avg_ts"]
    if args.batched:
        b = args.batched
        out = _run([str(args.llama_bin / "llama-batched-bench"), "-m", str(gguf), "-t",
                    str(args.threads), "-c", str(b * 256 + 256), "-b", "2048", "-ub", "512",
                    "-npp", "128", "-ntg", "128", "-npl", str(b), "--output-format", "jsonl"])
        for line in out.splitlines():
            if line.startswith("{"):
                rows[f"pp128+tg128 x{b}"] = json.loads(line)["speed"]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--medrt-bench", type=Path, required=True)
    p.add_argument("--llama-bin", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--types", default="Q4_1,Q4_0,Q8_0,F16")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-p", type=int, default=512)
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--batched", type=int, default=16)
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("--isa", default="", help="MEDRT_ISA for medrt (avx2 to cap it)")
    p.add_argument("--activations", default="int8", choices=("int8", "int8x2"),
                   help="medrt-bench --activations: how medrt's quantized kernels read "
                        "activations")
    p.add_argument("--kv-cache-dtype", default="f32", choices=("f32", "f16"),
                   help="medrt-bench --kv-cache-dtype (llama.cpp runs its default, f16)")
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **({"MEDRT_ISA": args.isa} if args.isa else {}))
    print(f"CPU: {_cpu_model()}; threads {args.threads}; medrt ISA "
          f"{args.isa or 'best available'}; {args.activations} activations; KV cache: medrt "
          f"{args.kv_cache_dtype}, llama.cpp f16; {args.reps} alternating repetitions, "
          "medians\n")
    print("| type | test | medrt t/s | llama.cpp t/s | medrt / llama.cpp |")
    print("|---|---|---:|---:|---:|")
    for qtype in args.types.split(","):
        gguf, mdir = _prepare(args, qtype)
        ours: dict[str, list[float]] = {}
        theirs: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for k, v in _medrt(args, mdir, env).items():
                ours.setdefault(k, []).append(v)
            for k, v in _llama(args, gguf).items():
                theirs.setdefault(k, []).append(v)
        for test, values in ours.items():
            if test in theirs:
                a, b = statistics.median(values), statistics.median(theirs[test])
                print(f"| {qtype} | {test} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
