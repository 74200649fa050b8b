"""One process, two faces: the gRPC server and the OpenAI-compatible HTTP server on one event
loop over one AsyncLLM, with the lifecycle an operator needs.

The ports open first and answer NOT_SERVING / 503 while the model loads. SIGTERM drains:
health turns NOT_SERVING, new requests get UNAVAILABLE, running and queued ones may finish
within ``drain_grace_s``, what is left is aborted, and ``run`` returns (exit status 0). SIGHUP
reloads the key file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from medrt.lora.moe import is_moe_dir
from medrt.serve.auth import ANONYMOUS, KeyStore, Tenant, bearer_token
from medrt.serve.core import ServeCore
from medrt.serve.errors import ServeError
from medrt.serve.grpc_service import GrpcFrontend
from medrt.serve.http_api import HttpFrontend

log = logging.getLogger("medrt.serve")


@dataclass
class ServeConfig:
    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int | None = 8000  # None: no HTTP server
    api_keys: str | None = None
    metrics_auth: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    num_threads: int = 0
    kv_cache_memory_bytes: int | None = None
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # How the quantized weights' CPU kernels read activations: "int8" or "int8x2" (LLM).
    activation_precision: str = "int8"
    kv_cache_dtype: str = "f32"  # element type of the KV cache: "f32" or "f16" (LLM)
    generation_config: str = "auto"  # defaults of unset sampling fields: "auto", "none", a dir
    max_model_len: int | None = None
    max_queued_requests: int = 256
    tenant_max_concurrency: int = 0
    max_prompt_bytes: int = 1 << 20
    drain_grace_s: float = 30.0
    seed: int = 0
    # The semantic cache (docs/semantic-cache.md): a directory for its SQLite and FAISS
    # files, None for no cache; a and threshold default to the documented operating point.
    semantic_cache: str | None = None
    semantic_cache_a: float | None = None
    semantic_cache_threshold: float | None = None
    semantic_cache_embedder: str = "all-minilm-l6-v2"
    # LoRA adapters served by name ("name=path", peft directories): a request whose model is
    # the name runs the base with that adapter, in one batch with the others (adapter mode).
    lora_modules: tuple[str, ...] = ()
    max_loras: int = 8  # adapters held in engine slots at once (LRU beyond)
    max_lora_rank: int = 64


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_lora_modules(specs: tuple[str, ...] | list[str], model_name: str) -> dict[str, Path]:
    """``name=path`` specs as {name: directory}; ValueError naming the bad one."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path or any(c.isspace() for c in name):
            raise ValueError(f"--lora-modules {spec!r}: write name=path (a name without spaces)")
        if name == model_name or name in out:
            raise ValueError(f"--lora-modules {spec!r}: the name {name!r} is already taken "
                             "(by the base model or another adapter)")
        if not (Path(path) / "adapter_config.json").is_file() and not is_moe_dir(path):
            raise ValueError(f"--lora-modules {spec!r}: {path} holds no adapter_config.json "
                             "(a peft LoRA adapter) nor moe_config.json (a LoRA-MoE adapter)")
        out[name] = Path(path)
    return out


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class Server:
    def __init__(self, config: ServeConfig) -> None:
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if config.tls_client_ca and not config.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        self.config = config
        self.keys = KeyStore(config.api_keys) if config.api_keys else None
        self.host = config.host
        if self.keys is None and not _is_loopback(config.host):
            log.warning(f"no --api-keys file: binding to 127.0.0.1 instead of {config.host}, "
                        "so that only this machine can call the server")
            self.host = "127.0.0.1"
        name = config.served_model_name or Path(config.model).name or config.model
        self.lora_modules = parse_lora_modules(config.lora_modules, name)
        self.core = ServeCore(name, max_running=config.max_num_seqs,
                              max_queued=config.max_queued_requests,
                              max_prompt_bytes=config.max_prompt_bytes,
                              default_tenant_limit=config.tenant_max_concurrency,
                              max_loras=config.max_loras if self.lora_modules else 0)
        self.grpc = GrpcFrontend(self.core, self.authenticate)
        self.http = (HttpFrontend(self.core, self.authenticate, config.metrics_auth)
                     if config.http_port is not None else None)
        self._runner: web.AppRunner | None = None
        self.grpc_port = 0
        self.http_port: int | None = None
        self._stopped = asyncio.Event()
        self._drain_task: asyncio.Task | None = None
        self.load_error: BaseException | None = None

    def authenticate(self, header: str | None) -> Tenant:
        if self.keys is None:
            return Tenant(ANONYMOUS)
        token = bearer_token(header)
        tenant = None if token is None else self.keys.lookup(token)
        if tenant is None:  # counted by the transport, as any request refused at its start
            raise ServeError("UNAUTHENTICATED",
                             "missing credentials: send 'authorization: Bearer <API key>'"
                             if token is None else "the API key is not valid")
        return tenant

    def reload_keys(self) -> None:
        if self.keys is None:
            return
        try:
            n = self.keys.reload()
            log.info(f"reloaded {n} API keys from {self.keys.path}")
        except (OSError, ValueError) as e:
            log.error(f"kept the previous API keys: {e}")

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the ports (NOT_SERVING) and starts loading the model in the background."""
        c = self.config
        creds = None
        if c.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(_read(c.tls_key), _read(c.tls_cert))], root_certificates=_read(c.tls_client_ca),
                require_client_auth=c.tls_client_ca is not None)
        self.grpc_port = self.grpc.add_port(f"{self.host}:{c.grpc_port}", creds)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind the gRPC port {self.host}:{c.grpc_port}")
        await self.grpc.set_serving(False)
        await self.grpc.server.start()
        if self.http is not None:
            self._runner = web.AppRunner(self.http.app, handler_cancellation=True,
                                         access_log=None)
            await self._runner.setup()
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, c.http_port))
            site = web.SockSite(self._runner, sock, ssl_context=self._ssl_context())
            await site.start()
            self.http_port = sock.getsockname()[1]
        asyncio.get_running_loop().create_task(self._load())

    def _ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(c.tls_cert, c.tls_key)
        if c.tls_client_ca:
            ctx.load_verify_locations(c.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def _load(self) -> None:
        import medrt
        from medrt.serve.fingerprint import weights_fingerprint

        c = self.config
        try:
            llm = await asyncio.to_thread(
                medrt.AsyncLLM, c.model, num_threads=c.num_threads,
                kv_cache_memory_bytes=c.kv_cache_memory_bytes, num_kv_blocks=c.num_kv_blocks,
                max_num_seqs=c.max_num_seqs, max_num_batched_tokens=c.max_num_batched_tokens,
                max_model_len=c.max_model_len, seed=c.seed,
                activation_precision=c.activation_precision, kv_cache_dtype=c.kv_cache_dtype,
                generation_config=c.generation_config, enable_lora=bool(self.lora_modules), max_loras=c.max_loras,
                max_lora_rank=c.max_lora_rank)
            weights = await asyncio.to_thread(weights_fingerprint, llm.model_dir)
            self.core.adapters = await asyncio.to_thread(self._load_adapters, llm)
            if c.semantic_cache is not None:
                self.core.cache_hook = await asyncio.to_thread(self._open_cache, llm)
            self.core.attach(llm, weights)
        except Exception as e:  # noqa: BLE001 - reported, then the server stops
            self.load_error = e
            log.error(f"cannot load {c.model}: {e}")
            await self._shutdown()
            return
        if self.core.draining:
            return
        await self.grpc.set_serving(True)
        http = f", HTTP on {self.host}:{self.http_port}" if self.http_port else ""
        log.info(f"model {self.core.model_name} ready; gRPC on {self.host}:{self.grpc_port}"
                 f"{http}; tenants: {'from ' + str(self.keys.path) if self.keys else 'none'}",
                 extra={"event": "ready", "grpc_port": self.grpc_port,
                        "http_port": self.http_port})

    def _load_adapters(self, llm: object) -> dict:
        """Loads each adapter once (its files are checked now, not at the first request;
        beyond max_loras the least recently used leave their slots and reload on use)."""
        from medrt.lora.adapter import adapter_sha256
        from medrt.lora.request import LoRARequest
        from medrt.serve.core import Adapter

        adapters = {}
        for i, (name, path) in enumerate(self.lora_modules.items()):
            request = LoRARequest(name, i + 1, str(path))
            llm.add_lora(request)
            adapters[name] = Adapter(request, adapter_sha256(path))
            log.info(f"LoRA adapter {name!r} from {path}")
        return adapters

    def _open_cache(self, llm: object) -> object:
        from medrt.cache import SemanticCache
        from medrt.cache.frontend_cache import model_fingerprint_of
        from medrt.serve.semantic_hook import SemanticCacheHook

        c = self.config
        tuning = {k: v for k, v in (("a", c.semantic_cache_a),
                                    ("threshold", c.semantic_cache_threshold)) if v is not None}
        cache = SemanticCache(c.semantic_cache, embedder=c.semantic_cache_embedder, **tuning)
        hook = SemanticCacheHook(cache, model_fingerprint_of(llm), self.core.metrics)
        log.info(f"semantic cache in {c.semantic_cache}: {len(cache)} answers, a={cache.a:g}, "
                 f"threshold={cache.threshold:g}")
        return hook

    async def wait_ready(self, timeout: float) -> None:
        async def ready() -> None:
            while self.core.llm is None and self.load_error is None:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(ready(), timeout)
        if self.load_error is not None:
            raise self.load_error

    # -- stop ------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        self.core.draining = True
        await self.grpc.set_serving(False)
        n = self.core.admission.num_running + self.core.admission.num_waiting
        log.info(f"draining: {n} requests in flight, grace {self.config.drain_grace_s:g} s")
        if not await self.core.admission.wait_idle(self.config.drain_grace_s):
            log.warning("grace period over: aborting the requests still running")
            if self.core.llm is not None:
                self.core.abort_all()
            await self.core.admission.wait_idle(5.0)
        await self._shutdown()

    async def _shutdown(self) -> None:
        await self.grpc.server.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.core.llm is not None:
            await asyncio.to_thread(self.core.llm.close)
        hook, self.core.cache_hook = self.core.cache_hook, None
        if hasattr(hook, "close"):
            await asyncio.to_thread(hook.close)
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def run(config: ServeConfig) -> int:
    """Runs the server until SIGTERM/SIGINT has drained it; returns the exit status."""
    server = Server(config)
    loop = asyncio.get_running_loop()
    await server.start()
    loop.add_signal_handler(signal.SIGTERM, server.begin_drain)
    loop.add_signal_handler(signal.SIGINT, server.begin_drain)
    loop.add_signal_handler(signal.SIGHUP, server.reload_keys)
    await server.wait_stopped()
    return 1 if server.load_error is not None else 0
