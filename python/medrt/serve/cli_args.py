"""``medrt serve`` and ``medrt keys add``: their arguments and entry points (used by cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from medrt.engine_options import add_engine_options, engine_options
from medrt.models.registry import DEFAULT_MODEL


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model over gRPC and OpenAI-compatible HTTP")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help="model directory or known model name")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients use (default: the model directory's name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (without --api-keys only loopback is used)")
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--http-port", type=int, default=8000, help="-1 turns HTTP off")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="key file: lines 'sha256:<hex> <tenant>' (see `medrt keys add`)")
    p.add_argument("--metrics-auth", action="store_true", help="/metrics needs an API key too")
    p.add_argument("--tls-cert", default=None, metavar="PEM")
    p.add_argument("--tls-key", default=None, metavar="PEM")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: physical cores)")
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                   help="KV pool budget in bytes (default 512 MiB)")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="requests the engine runs at once")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget of one engine step (prompt chunks + decodes); smaller "
                        "bounds how long a prefill delays the running streams' next token")
    p.add_argument("--max-model-len", type=int, default=None)
    add_engine_options(p)
    p.add_argument("--max-queued-requests", type=int, default=256,
                   help="requests that may wait; beyond this RESOURCE_EXHAUSTED (HTTP 429)")
    p.add_argument("--tenant-max-concurrency", type=int, default=0,
                   help="running requests per tenant (0: no limit; a key's max_concurrency "
                        "overrides)")
    p.add_argument("--max-prompt-bytes", type=int, default=1 << 20)
    p.add_argument("--drain-grace-s", type=float, default=30.0,
                   help="on SIGTERM, how long running requests may take to finish")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generation-config", default="auto", metavar="auto|none|DIR",
                   help="sampling fields a request leaves out: the model's "
                        "generation_config.json (auto), SamplingParams' own defaults (none), "
                        "or DIR's generation_config.json")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                   help="peft LoRA adapters served by name: a request whose model is NAME runs "
                        "the base with that adapter (adapter mode, one batch for all)")
    p.add_argument("--max-loras", type=int, default=8,
                   help="adapters held in engine slots at once (least recently used idle ones "
                        "leave; with every slot busy, a request for another adapter waits "
                        "in the queue)")
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.add_argument("--semantic-cache", default=None, metavar="DIR",
                   help="answer repeated questions from a semantic cache kept in DIR "
                        "(docs/semantic-cache.md); off by default")
    p.add_argument("--semantic-cache-a", type=float, default=None,
                   help="weight of the Jaccard term in the match score (default 0.0)")
    p.add_argument("--semantic-cache-threshold", type=float, default=None,
                   help="lowest match score that is a hit (default 0.89)")
    p.add_argument("--semantic-cache-embedder", default="all-minilm-l6-v2",
                   help="sentence encoder of the cache (known name or directory)")


def add_keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage the API keys of `medrt serve`")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    a = ks.add_parser("add", help="make a key for a tenant; prints it once, stores its hash")
    a.add_argument("tenant")
    a.add_argument("--file", required=True, help="the key file (created if missing)")
    a.add_argument("--max-concurrency", type=int, default=0)


def run_serve(args: argparse.Namespace) -> int:
    from medrt.serve import logs
    from medrt.serve.server import ServeConfig, run

    logs.configure(args.log_json)
    config = ServeConfig(
        model=args.model, served_model_name=args.served_model_name, host=args.host,
        grpc_port=args.grpc_port, http_port=None if args.http_port < 0 else args.http_port,
        api_keys=args.api_keys, metrics_auth=args.metrics_auth, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, num_threads=args.threads,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        **engine_options(args),
        max_queued_requests=args.max_queued_requests,
        tenant_max_concurrency=args.tenant_max_concurrency,
        max_prompt_bytes=args.max_prompt_bytes, drain_grace_s=args.drain_grace_s,
        seed=args.seed, generation_config=args.generation_config,
        semantic_cache=args.semantic_cache,
        semantic_cache_a=args.semantic_cache_a,
        semantic_cache_threshold=args.semantic_cache_threshold,
        semantic_cache_embedder=args.semantic_cache_embedder,
        lora_modules=tuple(args.lora_modules), max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank)
    try:
        return asyncio.run(run(config))
    except ValueError as e:
        print(f"medrt serve: error: {e}", file=sys.stderr)
        return 2


def run_keys(args: argparse.Namespace) -> int:
    from medrt.serve.auth import add_key

    try:
        key = add_key(args.tenant, args.file, args.max_concurrency)
    except ValueError as e:
        print(f"medrt keys: error: {e}", file=sys.stderr)
        return 2
    print(key)
    print(f"(shown once; its hash was appended to {args.file} for tenant {args.tenant})",
          file=sys.stderr)
    return 0
