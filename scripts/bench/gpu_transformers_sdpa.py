"""Peer figure for the GPU benchmark: transformers (SDPA attention) decode throughput on
DeepSeek-R1-Distill-Qwen-7B shapes with random bf16 weights, N concurrent sequences with a
128-token prompt, on the same GPU as medrt-gpu-bench (scripts/gpu_check.sh runs both).

    python scripts/bench/gpu_transformers_sdpa.py --batch 64 --new-tokens 32
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                      max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), device="cuda")
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                       do_sample=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    toks = args.batch * args.new_tokens
    print(f"transformers {torch.__version__} SDPA bf16, batch {args.batch}, prompt {args.prompt}: "
          f"{toks / dt:.0f} generated tokens/s (prefill included, {dt:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
