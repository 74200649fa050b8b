"""What an LLM knows of LoRA: the merged-mode model directory, and in adapter mode the adapters
loaded into the engine's slots (least recently used evicted beyond max_loras) and the names
requests may use."""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from medrt.errors import CapacityError, InvalidRequest
from medrt.lora.adapter import LoraAdapter, base_linear_shapes, read_adapter
from medrt.lora.merge import is_quantized, merge_into_dir
from medrt.lora.request import LoRARequest

log = logging.getLogger("medrt.lora")


def as_lora_request(lora: str | Path | LoRARequest) -> LoRARequest:
    """`lora=` of LLM(): a LoRARequest, or a directory (named after it, id 1)."""
    if isinstance(lora, LoRARequest):
        return lora
    path = Path(lora).expanduser()
    return LoRARequest(path.name or "adapter", 1, str(path))


class LoraManager:
    def __init__(self, model_dir: Path, *, enable_lora: bool = False, max_loras: int = 8,
                 max_lora_rank: int = 64, lora: str | Path | LoRARequest | None = None,
                 merge: bool = False) -> None:
        if max_loras < 1 or max_lora_rank < 1:
            raise InvalidRequest(f"max_loras and max_lora_rank must be >= 1, got {max_loras} "
                                 f"and {max_lora_rank}")
        self.model_dir = model_dir
        self.max_loras, self.max_lora_rank = max_loras, max_lora_rank
        self.engine_model_dir = model_dir
        self.default: LoRARequest | None = None  # the adapter of requests that name none
        self.merged: LoRARequest | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._shapes: dict[str, tuple[int, int]] | None = None
        self._known: dict[str, LoRARequest] = {}
        self._loaded: OrderedDict[int, LoRARequest] = OrderedDict()  # LRU order, oldest first
        self._engine: Any = None
        self.enabled = enable_lora
        if lora is None:
            if merge:
                raise InvalidRequest("merge=True needs lora=<adapter directory>")
            return
        request = as_lora_request(lora)
        if merge and is_quantized(model_dir):
            log.warning("%s is quantized: the adapter %s runs unmerged (adapter mode)",
                        model_dir, request.lora_path)
            merge = False
        if merge:
            adapter = self.read(request)
            self._tmp = tempfile.TemporaryDirectory(prefix="medrt-merged-")
            self.engine_model_dir = merge_into_dir(model_dir, adapter, self._tmp.name)
            self.merged = request
            log.info("merged LoRA %s into %s", request.lora_path, model_dir)
        else:
            self.enabled = True
            self.default = request
            self._known[request.lora_name] = request

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
        if self.default is not None:
            self.add(self.default)

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
        adapter = self.read(request)
        if len(self._loaded) >= self.max_loras:
            self._evict_one()
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
        if not (Path(request.lora_path).expanduser() / "adapter_config.json").is_file():
            raise InvalidRequest(f"LoRA adapter '{request.lora_name}': no adapter_config.json "
                                 f"in {request.lora_path}")
        return request

    def engine_id(self, request: LoRARequest | None) -> int:
        """The engine adapter id of a resolved adapter (0: the base), loading it if needed."""
        if request is None:
            return 0
        self.add(request)
        return request.lora_int_id
