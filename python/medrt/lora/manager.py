"""What an LLM knows of LoRA: the merged-mode model directory, and in adapter mode the adapters
loaded into the engine's slots (least recently used evicted beyond max_loras) and the names
requests may use."""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medrt.errors import CapacityError, InvalidRequest
from medrt.lora.adapter import LoraAdapter, adapter_sha256, base_linear_shapes, read_adapter
from medrt.lora.merge import is_quantized, merge_into_dir
from medrt.lora.moe import is_moe_dir, read_moe_adapter
from medrt.lora.request import LoRARequest

log = logging.getLogger("medrt.lora")


def as_lora_request(lora: str | Path | LoRARequest) -> LoRARequest:
    """`lora=` of LLM(): a LoRARequest, or a directory (named after it, id 1)."""
    if isinstance(lora, LoRARequest):
        return lora
    path = Path(lora).expanduser()
    return LoRARequest(path.name or "adapter", 1, str(path))


def _mode(deployment: str | None, merge: bool, requests: list[LoRARequest]) -> str | None:
    """"merged", "adapter", "auto" or None (no adapter given)."""
    if deployment not in (None, "merged", "adapter", "auto"):
        raise InvalidRequest(f"deployment must be 'merged', 'adapter' or 'auto', "
                             f"not {deployment!r}")
    if merge and deployment not in (None, "merged"):
        raise InvalidRequest(f"merge=True contradicts deployment={deployment!r}")
    if not requests:
        if merge or deployment:
            raise InvalidRequest("merge / deployment need lora=<adapter directory or "
                                 "LoRARequest, or a list of them>")
        return None
    return deployment or ("merged" if merge else "adapter")


class LoraManager:
    def __init__(self, model_dir: Path, *, enable_lora: bool = False, max_loras: int = 8,
                 max_lora_rank: int = 64, lora: Any = None, merge: bool = False,
                 deployment: str | None = None,
                 probe_engine: Callable[[], Any] | None = None) -> None:
        if max_loras < 1 or max_lora_rank < 1:
            raise InvalidRequest(f"max_loras and max_lora_rank must be >= 1, got {max_loras} "
                                 f"and {max_lora_rank}")
        self.model_dir = model_dir
        self.max_loras, self.max_lora_rank = max_loras, max_lora_rank
        self.engine_model_dir = model_dir
        self.default: LoRARequest | None = None  # the adapter of requests that name none
        self.merged: LoRARequest | None = None
        self.deployment: dict[str, Any] | None = None  # deployment="auto": the choice and terms
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._shapes: dict[str, tuple[int, int]] | None = None
        self._known: dict[str, LoRARequest] = {}
        self._loaded: OrderedDict[int, LoRARequest] = OrderedDict()  # LRU order, oldest first
        self._preload: list[LoRARequest] = []
        self._sha256: dict[LoRARequest, str] = {}
        self._engine: Any = None
        self.enabled = enable_lora
        requests = [as_lora_request(x) for x in
                    (lora if isinstance(lora, (list, tuple)) else [lora] if lora else [])]
        mode = _mode(deployment, merge, requests)
        if mode is None:
            return
        moe = [r.lora_name for r in requests if r.lora_path and is_moe_dir(r.lora_path)]
        if moe and mode != "adapter":
            raise InvalidRequest(f"LoRA-MoE adapters {moe} route per token and run in adapter "
                                 f"mode only, not {mode}")
        if mode != "adapter" and is_quantized(model_dir):
            log.warning("%s is quantized: LoRA adapters run unmerged (adapter mode)", model_dir)
            mode = "adapter"
        if mode == "auto":
            adapters = {r.lora_int_id: self.read(r) for r in requests}
            from medrt import _core
            from medrt.lora.deployment import choose

            choice = choose(probe_engine, model_dir, adapters, max_loras, _core)
            self.deployment, mode = choice.as_dict(), choice.mode
            if mode == "merged" and len(requests) > 1:
                # Adapters are listed by traffic: the first carries the most.
                log.warning("deployment=auto: merged mode serves '%s' only; %s need their "
                            "own LLM", requests[0].lora_name,
                            [r.lora_name for r in requests[1:]])
                requests = requests[:1]
        if mode == "merged":
            if len(requests) != 1:
                raise InvalidRequest(f"merged mode folds one adapter into the weights, got "
                                     f"{len(requests)}; use adapter mode for several")
            request = requests[0]
            adapter = self.read(request)
            self._tmp = tempfile.TemporaryDirectory(prefix="medrt-merged-")
            self.engine_model_dir = merge_into_dir(model_dir, adapter, self._tmp.name)
            self.merged = request
            log.info("merged LoRA %s into %s", request.lora_path, model_dir)
        else:
            self.enabled = True
            self._preload = requests
            self.default = requests[0] if len(requests) == 1 else None
            for r in requests:
                self._known[r.lora_name] = r

    @property
    def base_shapes(self) -> dict[str, tuple[int, int]]:
        if self._shapes is None:
            self._shapes = base_linear_shapes(self.model_dir)
        return self._shapes

    def read(self, request: LoRARequest) -> LoraAdapter:
        if not request.lora_path:
            raise InvalidRequest(f"LoRA adapter '{request.lora_name}' has no path")
        return read_adapter(request.lora_path, self.base_shapes, self.max_lora_rank)

    def attach(self, engine: Any) -> None:
        self._engine = engine
        for request in self._preload:
            self.add(request)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- adapter mode ----------------------------------------------------------------------

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise InvalidRequest("this LLM was created without enable_lora=True; LoRA "
                                 "requests need adapter mode")

    def add(self, request: LoRARequest) -> bool:
        """Loads the adapter into an engine slot (evicting the least recently used idle one
        when all max_loras are taken). False when it was loaded already."""
        self._require_enabled()
        known = self._known.get(request.lora_name)
        if known is not None and known != request:
            raise InvalidRequest(f"LoRA name '{request.lora_name}' is already used by "
                                 f"{known}; names and ids must be unique")
        for other in self._loaded.values():
            if other.lora_int_id == request.lora_int_id and other != request:
                raise InvalidRequest(f"LoRA id {request.lora_int_id} is already used by "
                                     f"'{other.lora_name}'")
        if request.lora_int_id in self._loaded:
            self._loaded.move_to_end(request.lora_int_id)
            return False
        # A slot first, then the files: a caller that retries while every slot is busy does not
        # read the adapter again at every try.
        if len(self._loaded) >= self.max_loras:
            self._evict_one()
        if is_moe_dir(request.lora_path):  # a LoRA-MoE adapter: routers and experts
            moe = read_moe_adapter(request.lora_path, self.base_shapes, self.max_lora_rank)
            self._engine.add_lora_moe(request.lora_int_id, **moe.engine_args())
        else:
            adapter = self.read(request)
            modules = [(m.name, m.a, m.b) for m in adapter.modules.values()]
            self._engine.add_lora(request.lora_int_id, modules, adapter.scale)
        self._loaded[request.lora_int_id] = request
        self._known[request.lora_name] = request
        return True

    def _evict_one(self) -> None:
        for lora_id in list(self._loaded):
            if not self._engine.remove_lora(lora_id):  # refused: running requests use it
                continue
            evicted = self._loaded.pop(lora_id)
            log.info("evicted LoRA '%s' (least recently used)", evicted.lora_name)
            return
        raise CapacityError(f"all max_loras={self.max_loras} LoRA slots hold adapters of "
                            "running requests; wait for them or raise max_loras")

    def remove(self, lora_id: int) -> bool:
        self._require_enabled()
        if lora_id not in self._loaded:
            return False
        if not self._engine.remove_lora(lora_id):
            raise InvalidRequest(f"LoRA id {lora_id} is used by running requests")
        request = self._loaded.pop(lora_id)
        if self.default is None or request != self.default:
            self._known.pop(request.lora_name, None)
        return True

    def sha256(self, request: LoRARequest) -> str:
        """The sha256 of a resolved adapter's files (adapter_sha256), read once per adapter."""
        if request not in self._sha256:
            self._sha256[request] = adapter_sha256(request.lora_path)
        return self._sha256[request]

    def list(self) -> list[int]:
        return list(self._loaded)

    def resolve(self, request: LoRARequest | str | None) -> LoRARequest | None:
        """A request's adapter (a LoRARequest, a name added before, or None: the default
        adapter or the base), checked without loading it."""
        if request is None:
            return self.default
        self._require_enabled()
        if isinstance(request, str):
            named = self._known.get(request)
            if named is None:
                raise InvalidRequest(f"unknown LoRA adapter '{request}'; known: "
                                     f"{sorted(self._known) or 'none'}")
            return named
        if not isinstance(request, LoRARequest):
            raise InvalidRequest(f"lora_request must be a medrt.LoRARequest, a name or None, "
                                 f"not {type(request).__name__}")
        if not request.lora_path:
            if request.lora_name not in self._known:
                raise InvalidRequest(f"unknown LoRA adapter '{request.lora_name}' (no path "
                                     "given and never added)")
            return self._known[request.lora_name]
        path = Path(request.lora_path).expanduser()
        if not ((path / "adapter_config.json").is_file() or is_moe_dir(path)):
            raise InvalidRequest(f"LoRA adapter '{request.lora_name}': no adapter_config.json "
                                 f"in {request.lora_path}")
        return request

    def engine_id(self, request: LoRARequest | None) -> int:
        """The engine adapter id of a resolved adapter (0: the base), loading it if needed."""
        if request is None:
            return 0
        self.add(request)
        return request.lora_int_id
