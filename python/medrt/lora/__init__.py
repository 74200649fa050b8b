"""LoRA adapters: vLLM's LoRARequest, peft adapter reading and validation, merged mode (the
adapter folded into a copy of the float weights) and the adapter slots of adapter mode."""
from medrt.lora.adapter import LoraAdapter, LoraModule, read_adapter
from medrt.lora.request import LoRARequest

__all__ = ["LoRARequest", "LoraAdapter", "LoraModule", "read_adapter"]
