"""Adapter mode against merged mode on one model, measured side by side in one process.

    PYTHONPATH=python python scripts/bench/lora.py --model DIR --work-dir /tmp/lora-bench \\
        --rank 16 --threads 2 --reps 3 -n 128

Rows (tokens/s, median of --reps after a warm-up, EOS ignored):
- tg<n> merged:  one request decoding n tokens on the base with one adapter merged in;
- tg<n> adapter: the same request in adapter mode (rank --rank on all seven projections);
- <B>x tg<n> over 1 adapter / over 4 adapters: B concurrent requests in adapter mode, all on
  one adapter or spread round-robin over four (total tokens / wall time).
The adapters are random (peft's file format, written here with numpy), so timing is all they
measure. --dtype converts a float checkpoint (e.g. f32) to f16/bf16 in --work-dir first.
Repetitions interleave the rows, so a busy machine slows each row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

import medrt
from medrt.lora import LoRARequest
from medrt.lora.adapter import PROJECTIONS, base_linear_shapes
from medrt.lora.tensors import read_tensors, to_stored, write_tensors

_DT = {"f16": "F16", "bf16": "BF16", "f32": "F32"}


def convert(model: Path, out: Path, dtype: str) -> Path:
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.suffix == ".safetensors":
            tensors, _ = read_tensors(f)
            names = {k: _DT[dtype] if v.ndim > 1 else "F32" for k, v in tensors.items()}
            write_tensors(out / f.name, {k: to_stored(v, names[k]) for k, v in tensors.items()},
                          names)
        elif f.is_file():
            os.symlink(f.resolve(), out / f.name)
    return out


def write_adapter(model: Path, out: Path, rank: int, seed: int) -> Path:
    """A peft-format adapter on all seven projections with random A and B."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (o, i) in base_linear_shapes(model).items():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            tensors[f"base_model.model.{name}.lora_A.weight"] = \
                (rng.standard_normal((rank, i)) / np.sqrt(i)).astype(np.float32)
            tensors[f"base_model.model.{name}.lora_B.weight"] = \
                (rng.standard_normal((o, rank)) * 0.01).astype(np.float32)
    write_tensors(out / "adapter_model.safetensors", tensors, {k: "F32" for k in tensors})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "use_rslora": False, "target_modules": list(PROJECTIONS), "bias": "none",
        "lora_dropout": 0.0, "modules_to_save": None}))
    return out


def timed(llm: medrt.LLM, batch: int, n: int, loras: list | None) -> float:
    params = medrt.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    prompts = [{"prompt_token_ids": [1 + (7 * i + j) % 500 for j in range(16)]}
               for i in range(batch)]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, lora_request=loras)
    wall = time.perf_counter() - start
    if batch == 1:  # decode rate: the tokens after the first over the time after the first
        m = outs[0].metrics
        return (n - 1) / (m.e2e_latency - m.time_to_first_token)
    return batch * n / wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--dtype", choices=sorted(_DT), default="f16")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    model = convert(args.model, args.work_dir / f"model-{args.dtype}", args.dtype)
    reqs = [LoRARequest(f"a{i}", i + 1, str(write_adapter(model, args.work_dir / f"a{i}-r"
                                                          f"{args.rank}", args.rank, i)))
            for i in range(4)]
    common = {"num_threads": args.threads, "max_num_seqs": args.batch}
    merged = medrt.LLM(str(model), lora=reqs[0], merge=True, **common)
    adapter = medrt.LLM(str(model), lora=reqs, deployment="adapter", **common)
    rows = {
        f"tg{args.n} merged": lambda: timed(merged, 1, args.n, None),
        f"tg{args.n} adapter": lambda: timed(adapter, 1, args.n, reqs[0]),
        f"{args.batch}x tg{args.n} over 1 adapter":
            lambda: timed(adapter, args.batch, args.n, [reqs[0]] * args.batch),
        f"{args.batch}x tg{args.n} over 4 adapters":
            lambda: timed(adapter, args.batch, args.n, [reqs[i % 4] for i in range(args.batch)]),
    }
    for fn in rows.values():  # warm-up
        fn()
    results: dict[str, list[float]] = {k: [] for k in rows}
    loads = []
    for _ in range(args.reps):
        for name, fn in rows.items():
            results[name].append(fn())
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"| row | tokens/s (median of {args.reps}) | runs |")
    print("| --- | --- | --- |")
    for k, v in results.items():
        print(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |")
    names = list(rows)
    print(f"\nadapter / merged tg: {med[names[1]] / med[names[0]]:.3f}; "
          f"4 adapters / 1 adapter: {med[names[3]] / med[names[2]]:.3f}; "
          f"load average during reps: {min(loads):.1f} to {max(loads):.1f}")
    merged.close()
    adapter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
