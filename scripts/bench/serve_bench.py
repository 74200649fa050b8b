#!/usr/bin/env python
"""Load generator for `medrt serve`, after vLLM's benchmark_serving conventions.

Each target gets the same kind of requests: ``--num-prompts`` prompts of ``--input-len``
tokens, cold (no prompt cache can help, see Prompts) unless ``--warm``, each generating exactly
``--output-len`` tokens (EOS ignored), sent either at a fixed concurrency
(``--concurrency 1,4,16,64``) or as Poisson arrivals (``--rates 1,2,4``, requests/s). Per
request: time to first token (TTFT), inter-token latencies (ITL), time per output token
(TPOT = (e2e - TTFT) / (tokens - 1)). Per run: p50/p99 of each, output tokens/s, requests/s.

Targets (``--targets``, comma-separated):
  asyncllm     medrt.AsyncLLM in this process (no network): the baseline for the serving layers
  medrt-grpc   `medrt serve` (spawned), GenerateStream over gRPC
  medrt-http   the same server, /v1/completions with SSE over HTTP
  llama-server llama.cpp's server (``--llama-server BIN --gguf FILE``), the same HTTP client

    python scripts/bench/serve_bench.py --model /path/to/smollm2 --threads 2 \\
        --targets asyncllm,medrt-grpc,medrt-http --concurrency 1,4,16 --rates 1,2 \\
        --out docs/bench/serving.md --plot docs/bench/serving.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

TEXT = ("The patient reports chest pain radiating to the left arm. Metformin is a first-line "
        "medication for type 2 diabetes. Hypertension is diagnosed when blood pressure stays "
        "above 140/90 mmHg. Vaccination prevents influenza and reduces hospital admissions. ")


@dataclass
class Sample:
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


class Prompts:
    """The benchmark's prompts: windows of ``--input-len`` tokens from a medical text.

    Cold (the default): every run (repetition x load shape x target) gets prompts that start
    with their own tag, so no prompt shares a first block with an earlier one and neither
    medrt's prefix cache nor llama-server's per-slot prompt cache can reuse earlier work; the
    windows themselves are the same for every target of a repetition. Warm (``--warm``): the
    same prompts everywhere, so after the first run most of every prompt is a cache hit."""

    def __init__(self, model: str, n: int, input_len: int, warm: bool) -> None:
        from medrt.frontend import resolve_model_dir
        from medrt.tokenizer import Tokenizer

        self.tok = Tokenizer(resolve_model_dir(model))
        self.ids = self.tok.encode(TEXT * (input_len // 8 + 8), add_special_tokens=False)
        self.n, self.input_len, self.warm = n, input_len, warm

    def make(self, seed: int, tag: str) -> list[str]:
        rng = random.Random(seed)
        prompts = []
        for i in range(self.n):
            head = [] if self.warm else self.tok.encode(f"Case {tag}-{i}: ",
                                                        add_special_tokens=False)
            start = rng.randrange(0, len(self.ids) - self.input_len)
            body = self.ids[start:start + self.input_len - 1 - len(head)]
            prompts.append(self.tok.decode(head + body))
        return prompts


# -- clients -------------------------------------------------------------------------------

async def run_asyncllm(llm: object, prompt: str, output_len: int) -> Sample:
    import medrt

    s, t0 = Sample(), time.perf_counter()
    last = t0
    params = medrt.SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    async for out in llm.generate(prompt, params, delta=True):
        now = time.perf_counter()
        n = len(out.outputs[0].token_ids)
        if n:
            if s.tokens == 0:
                s.ttft = now - t0
            else:
                s.itl.append(now - last)
            s.tokens += n
            last = now
    s.e2e = time.perf_counter() - t0
    return s


async def run_grpc(stub: object, pb2: object, prompt: str, output_len: int) -> Sample:
    s, t0 = Sample(), time.perf_counter()
    last = t0
    req = pb2.GenerateRequest(prompt=prompt, sampling=pb2.SamplingParams(
        max_tokens=output_len, temperature=0, ignore_eos=True))
    async for msg in stub.GenerateStream(req, timeout=600):
        now = time.perf_counter()
        if msg.token_ids:
            if s.tokens == 0:
                s.ttft = now - t0
            else:
                s.itl.append(now - last)
            s.tokens += len(msg.token_ids)
            last = now
    s.e2e = time.perf_counter() - t0
    return s


async def run_http(session: aiohttp.ClientSession, url: str, model: str, prompt: str,
                   output_len: int) -> Sample:
    s, t0 = Sample(), time.perf_counter()
    last = t0
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            s.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            return s
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            event = json.loads(line[6:])
            if event.get("usage") and not event.get("choices"):
                s.tokens = event["usage"]["completion_tokens"]
                continue
            if event.get("choices") and event["choices"][0].get("text"):
                if s.tokens == 0 and not s.itl and s.ttft == 0:
                    s.ttft = now - t0
                else:
                    s.itl.append(now - last)
                last = now
    s.e2e = time.perf_counter() - t0
    if s.tokens == 0:
        s.tokens = len(s.itl) + 1
    return s


# -- load shapes ---------------------------------------------------------------------------

async def drive(send, prompts: list[str], concurrency: int | None,
                rate: float | None, seed: int) -> tuple[list[Sample], float]:
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency or len(prompts))

    async def one(p: str) -> Sample:
        async with sem:
            try:
                return await send(p)
            except Exception as e:  # noqa: BLE001 - reported as a failed request
                return Sample(error=f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    tasks = []
    for p in prompts:
        tasks.append(asyncio.create_task(one(p)))
        if rate is not None:
            await asyncio.sleep(rng.expovariate(rate))
    samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - t0


def summarize(samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.error is None]
    tpot = [(s.e2e - s.ttft) / (s.tokens - 1) for s in ok if s.tokens > 1]
    itl = [x for s in ok for x in s.itl]
    return {
        "requests": len(samples), "failed": len(samples) - len(ok),
        "errors": sorted({s.error for s in samples if s.error})[:3],
        "output_tok_s": sum(s.tokens for s in ok) / wall, "req_s": len(ok) / wall,
        "ttft_p50_ms": 1e3 * _pct([s.ttft for s in ok], 50),
        "ttft_p99_ms": 1e3 * _pct([s.ttft for s in ok], 99),
        "tpot_p50_ms": 1e3 * _pct(tpot, 50), "tpot_p99_ms": 1e3 * _pct(tpot, 99),
        "itl_p50_ms": 1e3 * _pct(itl, 50), "itl_p99_ms": 1e3 * _pct(itl, 99),
    }


# -- servers -------------------------------------------------------------------------------

class Spawned:
    def __init__(self, cmd: list[str], ready: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._marker = ready
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if self._marker in line:
                self.ready.set()

    def wait(self, timeout: float = 600) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            raise RuntimeError("server not ready:\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def open_target(target: str, args: argparse.Namespace, stack: contextlib.AsyncExitStack,
                      ports: dict) -> object | None:
    """Starts a target; returns make_send(session) -> send(prompt), or None when skipped. The
    stack stops it. medrt-grpc and medrt-http share one `medrt serve` (its ports in `ports`)."""
    if target == "asyncllm":
        import medrt

        llm = medrt.AsyncLLM(args.model, num_threads=args.threads,
                             max_num_seqs=args.max_num_seqs)
        stack.callback(llm.close)
        return lambda _session: (lambda p: run_asyncllm(llm, p, args.output_len))
    if target.startswith("medrt"):
        if "medrt" not in ports:
            gport, hport = _free_port(), _free_port()
            env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
            server = Spawned([sys.executable, "-m", "medrt", "serve", "--model", args.model,
                              "--served-model-name", "bench", "--grpc-port", str(gport),
                              "--http-port", str(hport), "--threads", str(args.threads),
                              "--max-num-seqs", str(args.max_num_seqs),
                              "--max-queued-requests", "100000"], "ready", env)
            stack.callback(server.stop)
            server.wait()
            ports["medrt"] = (gport, hport)
        gport, hport = ports["medrt"]
        if target == "medrt-grpc":
            import grpc
            from medrt.v1 import medrt_pb2, medrt_pb2_grpc

            channel = grpc.aio.insecure_channel(f"127.0.0.1:{gport}")
            stack.push_async_callback(channel.close)
            stub = medrt_pb2_grpc.MedrtStub(channel)
            return lambda _session: (lambda p: run_grpc(stub, medrt_pb2, p, args.output_len))
        url = f"http://127.0.0.1:{hport}/v1/completions"
        return lambda session: (lambda p: run_http(session, url, "bench", p, args.output_len))
    if target == "llama-server":
        if not args.llama_server or not args.gguf:
            print("llama-server: skipped (no --llama-server/--gguf)", file=sys.stderr)
            return None
        port = _free_port()
        server = Spawned([args.llama_server, "-m", args.gguf, "--host", "127.0.0.1",
                          "--port", str(port), "-t", str(args.threads), "-np",
                          str(args.max_num_seqs), "-c",
                          str(args.max_num_seqs * (args.input_len + args.output_len + 16)),
                          "-cb"], "listening on")
        stack.callback(server.stop)
        server.wait()
        url = f"http://127.0.0.1:{port}/v1/completions"
        return lambda session: (lambda p: run_http(session, url, "bench", p, args.output_len))
    raise SystemExit(f"unknown target {target!r}")


async def bench(args: argparse.Namespace, prompts: Prompts,
                shapes: list[tuple[int | None, float | None]]) -> list[dict]:
    """Every target started at once, then each load shape run on every target in turn, the
    order rotating between repetitions, so that all targets see the same machine state (an
    idle server takes no CPU). One row per (repetition, shape, target)."""
    rows = []
    async with contextlib.AsyncExitStack() as stack:
        makers, ports = {}, {}
        for target in args.targets.split(","):
            maker = await open_target(target, args, stack, ports)
            if maker is not None:
                makers[target] = maker
        # A new connection per request for every HTTP target: llama-server closes idle
        # keep-alive connections, and a reused one fails as "server disconnected".
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(force_close=True, limit=0)))
        sends = {t: m(session) for t, m in makers.items()}
        for target, send in sends.items():
            await drive(send, prompts.make(args.seed, f"warmup.{target}")[:2], 1, None, 0)
        names = list(sends)
        for rep in range(args.repeats):
            for si, (concurrency, rate) in enumerate(shapes):
                k = rep % len(names)
                for target in names[k:] + names[:k]:
                    run = prompts.make(args.seed + rep, f"{rep}.{si}.{target}")
                    samples, wall = await drive(sends[target], run, concurrency, rate,
                                                args.seed + rep)
                    row = {"target": target, "concurrency": concurrency, "rate": rate,
                           "rep": rep, **summarize(samples, wall)}
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


METRICS = ("output_tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
           "itl_p50_ms", "itl_p99_ms")


def medians(rows: list[dict]) -> list[dict]:
    """Per (target, shape): the median of each metric over the repetitions."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["concurrency"], r["rate"]), []).append(r)
    out = []
    for (target, concurrency, rate), rs in groups.items():
        m = {"target": target, "concurrency": concurrency, "rate": rate, "reps": len(rs),
             "failed": sum(r["failed"] for r in rs)}
        for k in METRICS:
            m[k] = statistics.median(r[k] for r in rs)
        out.append(m)
    return out


def ratios(rows: list[dict]) -> str:
    """The issue's comparisons per fixed-concurrency shape: medrt's HTTP server against
    llama-server, and each serving layer against AsyncLLM in-process."""
    by = {(r["target"], r["concurrency"]): r for r in rows if r["rate"] is None}
    lines = [("| concurrency | comparison | throughput ratio | TTFT p50 | TTFT p99 ratio | "
              "ITL p99 difference |"), "|---|---|---|---|---|---|"]
    for c in sorted({r["concurrency"] for r in rows if r["rate"] is None}):
        pairs = [("medrt-http", "llama-server"), ("medrt-grpc", "llama-server"),
                 ("medrt-grpc", "asyncllm"), ("medrt-http", "asyncllm")]
        for a, b in pairs:
            ra, rb = by.get((a, c)), by.get((b, c))
            if ra is None or rb is None:
                continue
            lines.append(
                f"| {c} | {a} / {b} | {ra['output_tok_s'] / rb['output_tok_s']:.2f}x | "
                f"{100 * (ra['ttft_p50_ms'] / rb['ttft_p50_ms'] - 1):+.1f}% | "
                f"{ra['ttft_p99_ms'] / rb['ttft_p99_ms']:.2f}x | "
                f"{ra['itl_p99_ms'] - rb['itl_p99_ms']:+.2f} ms |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = ("| target | load | out tok/s | req/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | "
            "ITL p50 ms | ITL p99 ms | failed |\n|---|---|---|---|---|---|---|---|---|---|\n")
    rows = sorted(rows, key=lambda r: (r["target"], r["rate"] is not None,
                                       r["concurrency"] or 0, r["rate"] or 0))
    lines = []
    for r in rows:
        load = f"concurrency {r['concurrency']}" if r["rate"] is None else f"{r['rate']:g} req/s"
        lines.append(f"| {r['target']} | {load} | {r['output_tok_s']:.1f} | {r['req_s']:.2f} | "
                     f"{r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | {r['tpot_p50_ms']:.1f} | "
                     f"{r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} | {r['failed']} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for target in sorted({r["target"] for r in rows}):
        rs = sorted((r for r in rows if r["target"] == target and r["rate"] is not None),
                    key=lambda r: r["rate"])
        if not rs:
            continue
        a.plot([r["rate"] for r in rs], [r["output_tok_s"] for r in rs], marker="o", label=target)
        b.plot([r["rate"] for r in rs], [r["ttft_p99_ms"] for r in rs], marker="o", label=target)
    a.set(xlabel="request rate (req/s)", ylabel="output tokens/s", title="Throughput")
    b.set(xlabel="request rate (req/s)", ylabel="ms", title="TTFT p99")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--targets", default="asyncllm,medrt-grpc,medrt-http")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--rates", default="", help="Poisson request rates, req/s")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--llama-server", default=None)
    p.add_argument("--gguf", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm", action="store_true",
                   help="the same prompts in every run (prefix-cache hits); default: cold")
    p.add_argument("--repeats", type=int, default=5,
                   help="repetitions of every shape on every target (medians are reported)")
    p.add_argument("--out", default=None, help="markdown table")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG: throughput and TTFT p99 vs rate")
    args = p.parse_args()
    shapes = ([(int(c), None) for c in args.concurrency.split(",") if c]
              + [(None, float(r)) for r in args.rates.split(",") if r])
    prompts = Prompts(args.model, args.num_prompts, args.input_len, args.warm)
    raw = asyncio.run(bench(args, prompts, shapes))
    rows = medians(raw)
    text = table(rows) + "\n" + ratios(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": rows, "runs": raw}, indent=1))
    if args.plot and any(r["rate"] is not None for r in rows):
        plot(rows, args.plot)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
