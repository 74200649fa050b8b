"""The engine options that change an answer's numbers (and so are part of its replay
fingerprint): one set of command-line flags for `medrt generate|chat|eval|serve`."""

from __future__ import annotations

import argparse

ACTIVATION_PRECISIONS = ("int8", "int8x2")
KV_CACHE_DTYPES = ("f32", "f16")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """--activation-precision and --kv-cache-dtype, medrt.LLM's keyword arguments of the same
    names (docs/quantization.md)."""
    p.add_argument("--activation-precision", choices=ACTIVATION_PRECISIONS, default="int8",
                   help="how the kernels of quantized weights read activations: int8 blocks "
                        "(default, fastest) or two int8 terms per value (the f32 reference's "
                        "tokens, at about 0.6x the prompt speed)")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="f32",
                   help="element type of the KV cache: f32 (default) or f16 (twice the "
                        "tokens in the same memory, half the cache bytes read per step)")


def engine_options(args: argparse.Namespace) -> dict[str, str]:
    """The parsed flags as medrt.LLM keyword arguments."""
    return {"activation_precision": args.activation_precision,
            "kv_cache_dtype": args.kv_cache_dtype}
