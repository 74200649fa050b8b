"""vLLM's LoRARequest: which adapter a request runs with."""

from __future__ import annotations

from dataclasses import dataclass

from medrt.errors import InvalidRequest


@dataclass(frozen=True)
class LoRARequest:
    """An adapter by name, a positive integer id unique per adapter, and its directory (peft's
    adapter_config.json and adapter_model.safetensors). Positional order as in vLLM."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise InvalidRequest("LoRARequest.lora_name must be a non-empty string")
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) \
                or self.lora_int_id < 1:
            raise InvalidRequest(f"LoRARequest.lora_int_id must be an integer >= 1, "
                                 f"got {self.lora_int_id!r}")
        object.__setattr__(self, "lora_path", str(self.lora_path))

    # vLLM's short names
    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def id(self) -> int:
        return self.lora_int_id

    @property
    def path(self) -> str:
        return self.lora_path
