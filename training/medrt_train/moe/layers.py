"""A frozen base Linear plus N LoRA experts mixed by the layer's router:
y = W0 x + s * sum_e g_e(x) B_e A_e x, s = alpha / r (alpha / sqrt(r) with RSLoRA).

The experts are computed densely (every expert, gates zero for the unchosen ones): the same
numbers as a sparse dispatch, and simpler on small training batches."""
from __future__ import annotations

import math

import torch
from torch import nn


class RoutingSlot:
    """Holds the gates [batch, seq, experts] the layer's router computed for the current
    forward; every expert projection of that layer reads them."""

    def __init__(self) -> None:
        self.gates: torch.Tensor | None = None


class LoraMoELinear(nn.Module):
    def __init__(self, base: nn.Linear, n_experts: int, r: int, alpha: float, rslora: bool,
                 slot: RoutingSlot) -> None:
        super().__init__()
        self.base = base
        self.r, self.n_experts = r, n_experts
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(n_experts, r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_experts, base.out_features, r))
        for a in self.lora_A:  # peft's init: A like a Linear (Kaiming uniform), B zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.slot = slot

    def delta(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        shrunk = torch.einsum("...i,eri->...er", x, self.lora_A)
        expanded = torch.einsum("...er,eor->...eo", shrunk, self.lora_B)
        return self.scaling * torch.einsum("...e,...eo->...o", gates.to(x.dtype), expanded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.slot.gates is None:
            raise RuntimeError("LoRA-MoE projection called outside MoeModel.forward")
        return y + self.delta(x, self.slot.gates).to(y.dtype)
