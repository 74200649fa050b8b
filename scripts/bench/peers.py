"""Peer engines, each measured in its own process (run.py reads its peak RSS from wait4).

    python scripts/bench/peers.py llama-cpp-python --gguf F.gguf -t 2 -p 512 -n 128 -r 5
    python scripts/bench/peers.py transformers --model DIR -t 2 -p 512 -n 128 --batched 1,4 -r 5

Each prints one JSON object per row: {"engine", "test", "tokens_per_s", "stddev", "seconds"},
with the tests named as medrt-bench names them. Prompts are random token ids, as llama-bench's.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable


def emit(engine: str, test: str, seconds: list[float], tokens: int) -> None:
    tps = [tokens / s for s in seconds]
    row = {
        "engine": engine,
        "test": test,
        "tokens_per_s": statistics.median(tps),
        "stddev": statistics.stdev(tps) if len(tps) > 1 else 0.0,
        "seconds": statistics.median(seconds),
    }
    print(json.dumps(row), flush=True)


def repeat(fn: Callable[[], float], reps: int) -> list[float]:
    """fn() returns the seconds of one run; one warm-up run, then `reps` timed ones."""
    fn()
    return [fn() for _ in range(reps)]


def llama_cpp_python(args: argparse.Namespace) -> None:
    from llama_cpp import Llama

    llm = Llama(
        model_path=args.gguf,
        n_ctx=max(args.p, args.n) + 16,
        n_batch=max(args.p, 512),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    rng = random.Random(args.seed)
    vocab = llm.n_vocab()

    def prompt() -> float:
        llm.reset()  # the next eval drops the previous run's KV entries
        tokens = [rng.randrange(vocab) for _ in range(args.p)]
        start = time.perf_counter()
        llm.eval(tokens)
        return time.perf_counter() - start

    def generate() -> float:
        llm.reset()
        tokens = [rng.randrange(vocab) for _ in range(args.n)]
        start = time.perf_counter()
        for t in tokens:  # one decode per token, as llama-bench's tg
            llm.eval([t])
        return time.perf_counter() - start

    if args.p:
        emit("llama.cpp", f"pp{args.p}", repeat(prompt, args.reps), args.p)
    if args.n:
        emit("llama.cpp", f"tg{args.n}", repeat(generate, args.reps), args.n)


def transformers_peer(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=gen)

    def prompt() -> float:
        x = ids(1, args.p)
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        return time.perf_counter() - start

    def generate(batch: int, prompt_len: int, gen_len: int) -> Callable[[], float]:
        def run() -> float:
            x = ids(batch, prompt_len)
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=gen_len,
                    min_new_tokens=gen_len,  # EOS masked: every run generates gen_len tokens
                    do_sample=False,
                    pad_token_id=0,
                )
            seconds = time.perf_counter() - start
            assert out.shape[1] == prompt_len + gen_len
            return seconds

        return run

    if args.p:
        emit("transformers", f"pp{args.p}", repeat(prompt, args.reps), args.p)
    if args.n:
        emit("transformers", f"tg{args.n}", repeat(generate(1, 1, args.n), args.reps), args.n)
    for b in args.batched:
        test = f"pp{args.batched_prompt}+tg{args.batched_gen} x{b}"
        run = generate(b, args.batched_prompt, args.batched_gen)
        emit(
            "transformers",
            test,
            repeat(run, args.reps),
            b * (args.batched_prompt + args.batched_gen),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=["llama-cpp-python", "transformers"])
    parser.add_argument("--gguf", help="GGUF file (llama-cpp-python)")
    parser.add_argument("--model", help="Hugging Face directory (transformers)")
    parser.add_argument("--dtype", default="float32", help="transformers compute dtype")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--batched", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    parser.add_argument("--batched-prompt", type=int, default=128)
    parser.add_argument("--batched-gen", type=int, default=128)
    parser.add_argument("-r", "--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if args.engine == "llama-cpp-python":
        llama_cpp_python(args)
    else:
        transformers_peer(args)


if __name__ == "__main__":
    main()
