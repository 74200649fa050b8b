"""docs/benchmarks.md from one run's results: a table of ratios per model, with the command,
the machine and the date."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

ENGINES = ("medrt", "llama.cpp", "transformers")

REPRODUCE = """## Reproducing

```sh
# medrt-bench (cpp/bench), in a Release build
cmake -S . -B build/release -G Ninja && ninja -C build/release medrt-bench
# llama.cpp, outside the repository (never committed): the Python binding for pp/tg, and
# llama-batched-bench from the same source for the batched rows
pip install llama-cpp-python
pip download --no-binary :all: --no-deps llama-cpp-python -d /tmp/peers && cd /tmp/peers
tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
cmake -B build -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build build --target llama-batched-bench
# then the command above (scripts/bench/run.py builds and caches the models in --work-dir)
# quantized types on the same GGUF bytes (llama-quantize, llama-bench, llama-batched-bench):
#   scripts/bench/quant_vs_llama.py; the 1.5B/7B shapes with random weights:
#   scripts/bench/shape_models.py builds them, scripts/bench/shapes_vs_llama.py runs them
```
"""


def machine() -> str:
    model = "unknown CPU"
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return (
        f"{model}, {len(cores) or os.cpu_count()} physical cores / {os.cpu_count()} logical, "
        f"{mem_kb / 2**20:.0f} GiB RAM, Linux {platform.release()}"
    )


def _fmt(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['tokens_per_s']:.2f} ± {row['stddev']:.2f}"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None or b["tokens_per_s"] <= 0:
        return "-"
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x"


def model_section(result: dict[str, Any]) -> str:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for r in result["rows"]:
        rows.setdefault(r["test"], {})[r["engine"]] = r
    mib = 2**20
    out = [
        f"## {result['title']}",
        "",
        (
            f"Weights: {result['weight_bytes'] / mib:.1f} MiB ({result['weights_note']}). "
            f"Settings: {result['settings']}."
        ),
        "",
        "| test | medrt t/s | llama.cpp t/s | transformers t/s | medrt / llama.cpp | medrt / hf |",
        "| ---- | --------: | ------------: | ---------------: | ----------------: | ---------: |",
    ]
    for test, by_engine in rows.items():
        m, ll, hf = (by_engine.get(e) for e in ENGINES)
        out.append(
            f"| {test} | {_fmt(m)} | {_fmt(ll)} | {_fmt(hf)} | {_ratio(m, ll)} | {_ratio(m, hf)} |"
        )
    out += ["", "| engine | process peak RSS |", "| ------ | ---------------: |"]
    for engine, rss in result["peak_rss"].items():
        out.append(f"| {engine} | {rss / mib:.0f} MiB |")
    bw = result.get("bandwidth")
    if bw:
        bound = bw / result["weight_bytes"]
        line = (
            f"\nRoofline: streaming read bandwidth {bw / 1e9:.2f} GB/s over "
            f"{result['threads']} threads (medrt-bench, same run) bounds batch-1 decode of these "
            f"f16 weights at {bound:.1f} tokens/s."
        )
        tg_rows = next((e for t, e in rows.items() if t.startswith("tg")), {})
        for engine in ("medrt", "llama.cpp"):
            if engine in tg_rows:
                share = 100 * tg_rows[engine]["tokens_per_s"] / bound
                line += f" {engine} tg reaches {share:.0f}% of it."
        out.append(line)
    return "\n".join(out) + "\n"


def write(
    path: Path, results: list[dict[str, Any]], command: str, date: str, notes: list[str]
) -> None:
    parts = [
        "# Benchmarks",
        "",
        (
            "Throughput of medrt against its peers, measured side by side in one run by "
            "`scripts/bench/run.py` (its docstring describes each engine's setup). Each figure is "
            "tokens/s, the median ± standard deviation of the repetitions after a warm-up; "
            "ratios divide medians."
        ),
        "",
        f"- Date: {date}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        "",
        (
            "Rows: `pp<p>`: prompt tokens/s for one p-token prompt. `tg<n>`: tokens/s generating "
            "n tokens at batch 1. `pp<bp>+tg<bn> xB`: B requests of bp prompt tokens + bn "
            "generated tokens each, all at once; total tokens/s = B(bp + bn) / wall time "
            "(llama-batched-bench's `S` column). Generation lengths are fixed (EOS ignored)."
        ),
        "",
        (
            "Differences between the engines that the figures include: medrt keeps its KV cache in "
            "f32, llama.cpp in f16 (its default); medrt's and transformers' pp row also samples the "
            "one token the prompt produces; transformers computes in the dtype noted per model."
        ),
        "",
    ]
    parts += [f"- {n}" for n in notes]
    parts.append("")
    parts += [model_section(r) for r in results]
    parts.append(REPRODUCE)
    path.write_text("\n".join(parts))
