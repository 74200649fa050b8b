"""Runs medrt and its peers side by side on the same weights and writes docs/benchmarks.md.

    python scripts/bench/run.py --medrt-bench build/release/cpp/medrt-bench \\
        --llama-src DIR/vendor/llama.cpp --llama-batched-bench DIR/bin/llama-batched-bench \\
        --work-dir /work/peers/bench --threads 2 --reps 5 \\
        --models smollm2 "qwen1.5b:batched=1,4:reps=3"

Engines, each in its own process with the same thread count:
- medrt: `medrt-bench --json` (cpp/bench), which also measures the read bandwidth.
- llama.cpp: pp/tg through the llama-cpp-python package (pip install llama-cpp-python);
  batched rows through llama.cpp's `llama-batched-bench`, built from the vendor/llama.cpp of
  the llama-cpp-python source distribution (skipped when --llama-batched-bench is not given).
  It reads an F16 GGUF made by llama.cpp's convert_hf_to_gguf.py from the same directory.
- transformers: peers.py (torch CPU), weights upcast to --hf-dtype (float32 by default: torch
  has no fast f16 matmul on CPUs without AVX512-FP16).

A model spec is NAME[:key=value...] with keys p, n, batched, reps overriding the defaults for
that model (the 1.5B model is too slow on two cores for the full matrix).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "python"))  # prepare imports medrt's GGUF importer

import prepare
import report

MODELS = {"smollm2": "SmolLM2-135M-Instruct", "qwen1.5b": "DeepSeek-R1-Distill-Qwen-1.5B shapes"}


@dataclass(frozen=True)
class Settings:
    threads: int
    p: int
    n: int
    batched: tuple[int, ...]
    batched_prompt: int
    batched_gen: int
    reps: int

    def describe(self) -> str:
        return (
            f"{self.threads} threads, pp{self.p}, tg{self.n}, batched "
            f"{','.join(map(str, self.batched)) or 'none'} x (pp{self.batched_prompt}"
            f"+tg{self.batched_gen}), {self.reps} repetitions"
        )


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# OpenMP-threaded peers (llama.cpp, torch) get OMP_WAIT_POLICY from --omp-wait-policy.
PEER_ENV: dict[str, str] = {}
LOADAVG: list[float] = []


def run_measured(cmd: list[str], peer: bool = False) -> tuple[str, int]:
    """cmd's stdout + stderr and its peak RSS in bytes (wait4 gives one child's own rusage)."""
    env = dict(os.environ, **PEER_ENV) if peer else None
    _log(
        "$ " + "".join(f"{k}={v} " for k, v in (PEER_ENV if peer else {}).items()) + shlex.join(cmd)
    )
    LOADAVG.append(float(Path("/proc/loadavg").read_text().split()[0]))
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{text[-4000:]}")
    LOADAVG.append(float(Path("/proc/loadavg").read_text().split()[0]))
    return text, usage.ru_maxrss * 1024


def json_lines(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def bench_medrt(binary: Path, model: Path, s: Settings) -> tuple[list[dict], dict[str, Any]]:
    text, _ = run_measured(
        [
            str(binary), "-m", str(model), "-t", str(s.threads), "-p", str(s.p), "-n", str(s.n),
            "--batched", ",".join(map(str, s.batched)), "--batched-prompt", str(s.batched_prompt),
            "--batched-gen", str(s.batched_gen), "-r", str(s.reps), "--json",
        ]
    )  # fmt: skip
    lines = json_lines(text)
    rows = [r for r in lines if "test" in r]
    footer = next(r for r in lines if "peak_rss_bytes" in r)
    return rows, footer


def bench_llama_cpp_python(gguf: Path, s: Settings) -> tuple[list[dict], int]:
    text, rss = run_measured(
        [
            sys.executable, str(HERE / "peers.py"), "llama-cpp-python", "--gguf", str(gguf),
            "-t", str(s.threads), "-p", str(s.p), "-n", str(s.n), "-r", str(s.reps),
        ],
        peer=True,
    )  # fmt: skip
    return json_lines(text), rss


def bench_llama_batched(binary: Path, gguf: Path, s: Settings) -> tuple[list[dict], int]:
    """llama-batched-bench, run reps + 1 times (the first as warm-up); median per batch size."""
    ctx = max(s.batched) * (s.batched_prompt + s.batched_gen)
    cmd = [
        str(binary), "-m", str(gguf), "-c", str(ctx), "-b", "2048", "-ub", "512",
        "-npp", str(s.batched_prompt), "-ntg", str(s.batched_gen),
        "-npl", ",".join(map(str, s.batched)), "-t", str(s.threads), "-tb", str(s.threads),
        "--output-format", "jsonl",
    ]  # fmt: skip
    per_b: dict[int, list[float]] = {}
    peak = 0
    for rep in range(s.reps + 1):
        text, rss = run_measured(cmd, peer=True)
        peak = max(peak, rss)
        if rep == 0:
            continue
        for r in json_lines(text):
            if "speed" in r:
                per_b.setdefault(int(r["pl"]), []).append(float(r["t"]))
    rows = []
    for b, secs in sorted(per_b.items()):
        tokens = b * (s.batched_prompt + s.batched_gen)
        tps = [tokens / t for t in secs]
        rows.append(
            {
                "engine": "llama.cpp",
                "test": f"pp{s.batched_prompt}+tg{s.batched_gen} x{b}",
                "tokens_per_s": statistics.median(tps),
                "stddev": statistics.stdev(tps) if len(tps) > 1 else 0.0,
                "seconds": statistics.median(secs),
            }
        )
    return rows, peak


def bench_transformers(model: Path, s: Settings, dtype: str) -> tuple[list[dict], int]:
    text, rss = run_measured(
        [
            sys.executable, str(HERE / "peers.py"), "transformers", "--model", str(model),
            "--dtype", dtype, "-t", str(s.threads), "-p", str(s.p), "-n", str(s.n),
            "--batched", ",".join(map(str, s.batched)), "--batched-prompt",
            str(s.batched_prompt), "--batched-gen", str(s.batched_gen), "-r", str(s.reps),
        ],
        peer=True,
    )  # fmt: skip
    return json_lines(text), rss


def parse_model_spec(spec: str, base: Settings) -> tuple[str, Settings]:
    name, *overrides = spec.split(":")
    if name not in MODELS:
        raise SystemExit(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    s = base
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "batched":
            s = replace(s, batched=tuple(int(x) for x in value.split(",") if x))
        elif key in ("p", "n", "reps"):
            s = replace(s, **{key: int(value)})
        else:
            raise SystemExit(f"unknown model option '{key}' in '{spec}'")
    return name, s


def bench_model(name: str, s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work_dir
    smol = prepare.smollm2(work)
    hf_dir = smol if name == "smollm2" else prepare.qwen_random(work, smol)
    rows: list[dict[str, Any]] = []
    rss: dict[str, int] = {}
    engines = set(args.engines.split(","))

    medrt_rows, footer = bench_medrt(args.medrt_bench, hf_dir, s)
    rows += medrt_rows
    rss["medrt"] = footer["peak_rss_bytes"]
    if "llama.cpp" in engines:
        gguf = prepare.to_gguf(hf_dir, work, args.llama_src)
        r, rss["llama.cpp (llama-cpp-python)"] = bench_llama_cpp_python(gguf, s)
        rows += r
        if args.llama_batched_bench and s.batched:
            r, rss["llama.cpp (llama-batched-bench)"] = bench_llama_batched(
                args.llama_batched_bench, gguf, s
            )
            rows += r
    if "transformers" in engines:
        r, rss[f"transformers ({args.hf_dtype})"] = bench_transformers(hf_dir, s, args.hf_dtype)
        rows += r
    return {
        "title": f"{MODELS[name]} (`{hf_dir.name}`)",
        "weight_bytes": footer["weight_bytes"],
        "weights_note": "f16 safetensors for medrt, the F16 GGUF converted from them for "
        f"llama.cpp, upcast to {args.hf_dtype} in transformers",
        "settings": s.describe(),
        "threads": s.threads,
        "bandwidth": footer.get("read_bandwidth_bytes_per_s"),
        "rows": rows,
        "peak_rss": rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medrt-bench", type=Path, required=True)
    ap.add_argument("--llama-src", type=Path, help="llama.cpp source (convert_hf_to_gguf.py)")
    ap.add_argument("--llama-batched-bench", type=Path)
    ap.add_argument("--work-dir", type=Path, default=REPO / "models" / "bench")
    ap.add_argument("--engines", default="medrt,llama.cpp,transformers")
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--batched", default="1,4,16,64")
    ap.add_argument("--batched-prompt", type=int, default=128)
    ap.add_argument("--batched-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hf-dtype", default="float32")
    ap.add_argument(
        "--omp-wait-policy",
        choices=["active", "passive"],
        help="OMP_WAIT_POLICY for llama.cpp and torch; passive stops their threads spinning at "
        "barriers, which on an oversubscribed machine costs a time slice per barrier",
    )
    ap.add_argument("--note", action="append", default=[], help="a line for the report")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if "llama.cpp" in args.engines.split(",") and not args.llama_src:
        raise SystemExit("--llama-src is needed to convert the models for llama.cpp")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.omp_wait_policy:
        PEER_ENV["OMP_WAIT_POLICY"] = args.omp_wait_policy
    base = Settings(
        threads=args.threads,
        p=args.p,
        n=args.n,
        batched=tuple(int(x) for x in args.batched.split(",") if x),
        batched_prompt=args.batched_prompt,
        batched_gen=args.batched_gen,
        reps=args.reps,
    )
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    for spec in args.models:
        name, s = parse_model_spec(spec, base)
        results.append(bench_model(name, s, args))
        (args.work_dir / "results.json").write_text(json.dumps(results, indent=1))
    command = "python scripts/bench/run.py " + shlex.join(sys.argv[1:])
    notes = [
        (
            f"1-minute load average sampled around each engine run: {min(LOADAVG):.1f} to "
            f"{max(LOADAVG):.1f} on {os.cpu_count()} logical CPUs"
        ),
        *args.note,
    ]
    report.write(args.out, results, command, date, notes)
    _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
