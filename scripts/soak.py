#!/usr/bin/env python
"""Soak test of `medrt serve`: many concurrent clients for a while, with random disconnects,
deadlines and bad requests mixed in.

Starts `python -m medrt serve` on the given model (loopback, ephemeral ports), runs
``--clients`` client loops for ``--duration`` seconds over gRPC and HTTP, then checks:
  * every request ended with a status, and only with the statuses its kind allows
    (no INTERNAL / UNKNOWN / HTTP 5xx, nothing hung past its bound);
  * 0 KV blocks leaked: once idle, the server's /metrics shows every block free;
  * resident memory flat: the mean RSS of the last tenth of the run within ``--rss-tolerance``
    of the mean over the second tenth (after warm-up), checked for runs of 120 s or more.
Prints a JSON report; exits 1 if a check fails.

    python scripts/soak.py --model smollm2-135m-instruct --clients 64 --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import grpc

# Allowed outcomes per kind of request: anything else is a failure of the server.
ALLOWED = {
    "stream": {"OK"},
    "disconnect": {"CANCELLED", "OK"},  # OK: it finished before the client hung up
    "deadline": {"DEADLINE_EXCEEDED", "OK"},
    "bad": {"INVALID_ARGUMENT"},
    "http_stream": {"OK"},
    "http_disconnect": {"CANCELLED", "OK"},
    "http_bad": {"HTTP_400"},
}
REQUEST_BOUND_S = 300.0  # default client deadline; a request open past it + 10 s is hung
PROMPTS = ["The patient reports chest pain radiating to the left arm.",
           "What is the usual dose of metformin?", "How is hypertension diagnosed?",
           "Call emergency services if", "Vaccination prevents"]


class ServeProcess:
    def __init__(self, args: list[str]) -> None:
        import medrt

        # The server runs the medrt this script imports (installed, or python/ in a dev tree).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(medrt.__file__).resolve().parents[1]),
                                             env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "medrt", "serve", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env)
        self.ready = threading.Event()
        self.info: dict = {}
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "ready":
                self.info = rec
                self.ready.set()

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def _params(pb2: object, rng: random.Random, max_tokens: int) -> object:
    return pb2.SamplingParams(max_tokens=rng.randint(1, max_tokens),
                              temperature=rng.choice([0.0, 0.7, 1.0]), ignore_eos=True)


async def _grpc_request(kind: str, stub: object, pb2: object, rng: random.Random,
                        max_tokens: int, bound: float) -> str:
    req = pb2.GenerateRequest(prompt=rng.choice(PROMPTS),
                              sampling=_params(pb2, rng, max_tokens))
    try:
        if kind == "stream":
            last = None
            async for msg in stub.GenerateStream(req, timeout=bound):
                last = msg
            return "OK" if last is not None and last.finish_reason else "NO_FINISH"
        if kind == "disconnect":
            call = stub.GenerateStream(req, timeout=bound)
            n = rng.randint(1, 5)
            async for _ in call:
                n -= 1
                if n == 0:
                    call.cancel()
                    return "CANCELLED"
            return "OK"
        if kind == "deadline":
            await stub.Generate(req, timeout=rng.uniform(0.005, 0.3))
            return "OK"
        bad = rng.choice([pb2.SamplingParams(top_p=0), pb2.SamplingParams(temperature=-1),
                          pb2.SamplingParams(max_tokens=-5)])
        await stub.Generate(pb2.GenerateRequest(prompt="hi", sampling=bad),
                            timeout=bound)
        return "OK"
    except grpc.aio.AioRpcError as e:
        return e.code().name
    except asyncio.CancelledError:
        raise


async def _http_request(kind: str, session: aiohttp.ClientSession, base: str, model: str,
                        rng: random.Random, max_tokens: int) -> str:
    body: dict = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                  "max_tokens": rng.randint(1, max_tokens), "stream": True, "ignore_eos": True}
    if kind == "http_bad":
        body = rng.choice([{**body, "top_p": 7}, {**body, "messages": []}, {**body, "bogus": 1}])
    async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return f"HTTP_{resp.status}"
        stop_after = rng.randint(1, 5) if kind == "http_disconnect" else -1
        async for line in resp.content:
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    return "STREAM_ERROR"
                stop_after -= 1
                if stop_after == 0:
                    resp.close()
                    return "CANCELLED"
            elif line.startswith(b"data: [DONE]"):
                return "OK"
        return "NO_DONE"


async def _client(i: int, end: float, target: str, base: str, model: str, max_tokens: int,
                  results: Counter, seed: int, bound: float) -> None:
    from medrt.v1 import medrt_pb2, medrt_pb2_grpc

    rng = random.Random(seed * 1000 + i)
    kinds = list(ALLOWED)
    weights = [40, 15, 10, 5, 15, 10, 5]
    async with grpc.aio.insecure_channel(target) as ch, aiohttp.ClientSession() as session:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        while time.monotonic() < end:
            kind = rng.choices(kinds, weights)[0]
            try:
                if kind.startswith("http"):
                    coro = _http_request(kind, session, base, model, rng, max_tokens)
                else:
                    coro = _grpc_request(kind, stub, medrt_pb2, rng, max_tokens, bound)
                outcome = await asyncio.wait_for(coro, bound + 10)
            except asyncio.TimeoutError:
                outcome = "HUNG"
            except (aiohttp.ClientError, OSError) as e:
                outcome = f"CLIENT_ERROR:{type(e).__name__}"
            results[(kind, outcome)] += 1


def _metrics(base: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


async def _run(args: argparse.Namespace, sp: ServeProcess) -> dict:
    target = f"127.0.0.1:{sp.info['grpc_port']}"
    base = f"http://127.0.0.1:{sp.info['http_port']}"
    model = sp.info["message"].split()[1]
    results: Counter = Counter()
    rss: list[tuple[float, int]] = []
    start = time.monotonic()
    end = start + args.duration

    async def sample_rss() -> None:
        while time.monotonic() < end:
            rss.append((time.monotonic() - start, sp.rss_bytes()))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    await asyncio.gather(*(_client(i, end, target, base, model, args.max_tokens, results,
                                   args.seed, args.request_timeout)
                           for i in range(args.clients)))
    await sampler
    # idle: every KV block must be free again
    leaked = None
    for _ in range(300):
        m = _metrics(base)
        leaked = int(m["medrt:kv_blocks_total"] - m["medrt:kv_blocks_free"])
        if leaked == 0 and m["medrt:num_requests_running"] == 0:
            break
        await asyncio.sleep(0.1)
    return {"results": results, "rss": rss, "leaked_blocks": leaked,
            "elapsed_s": time.monotonic() - start}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--rss-tolerance", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.add_argument("--request-timeout", type=float, default=REQUEST_BOUND_S,
                   help="each client's deadline in seconds (size it to the machine: a request "
                        "that waits longer is reported, as DEADLINE_EXCEEDED or HUNG)")
    args = p.parse_args()

    sp = ServeProcess(["--model", args.model, "--grpc-port", "0", "--http-port", "0",
                       "--threads", str(args.threads), "--max-model-len",
                       str(args.max_model_len), "--max-queued-requests", str(4 * args.clients),
                       "--log-json"])
    try:
        if not sp.ready.wait(300):
            print("".join(sp.log), file=sys.stderr)
            raise SystemExit("the server did not become ready")
        run = asyncio.run(_run(args, sp))
        sp.proc.send_signal(signal.SIGTERM)
        exit_status = sp.proc.wait(timeout=120)
    finally:
        if sp.proc.poll() is None:
            sp.proc.kill()
    results: Counter = run["results"]
    unexpected = {f"{k}:{o}": n for (k, o), n in results.items() if o not in ALLOWED[k]}
    rss = [b for t, b in run["rss"]]
    tenth = max(len(rss) // 10, 1)
    early, late = rss[tenth:2 * tenth] or rss[:1], rss[-tenth:]
    growth = (statistics.mean(late) / statistics.mean(early) - 1) if rss else 0.0
    check_rss = args.duration >= 120
    report = {
        "clients": args.clients, "duration_s": round(run["elapsed_s"], 1),
        "requests": sum(results.values()),
        "outcomes": {f"{k}:{o}": n for (k, o), n in sorted(results.items())},
        "unexpected": unexpected, "leaked_kv_blocks": run["leaked_blocks"],
        "rss_mib_early": round(statistics.mean(early) / 2**20, 1) if rss else None,
        "rss_mib_late": round(statistics.mean(late) / 2**20, 1) if rss else None,
        "rss_growth": round(growth, 4), "rss_checked": check_rss,
        "server_exit_status": exit_status,
    }
    ok = (not unexpected and run["leaked_blocks"] == 0 and exit_status == 0
          and (not check_rss or abs(growth) <= args.rss_tolerance))
    report["ok"] = ok
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
