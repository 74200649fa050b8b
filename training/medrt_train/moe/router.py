"""Cosine top-k router: a token's router input is projected to a unit vector q, each expert owns
a learnable key, logits are cos(q, key) / temperature; the top k experts get gates renormalised
to sum to one, the others 0. The same q (pooled over a sequence) is what the contrastive loss
pulls toward its category's expert key, so supervising q supervises the routing."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    embed: torch.Tensor    # [..., dim] unit vectors q
    probs: torch.Tensor    # [..., experts] softmax over all experts
    gates: torch.Tensor    # [..., experts] top-k probs renormalised, zeros elsewhere
    topk: torch.Tensor     # [..., k] chosen experts, best first


class TopKRouter(nn.Module):
    def __init__(self, hidden: int, n_experts: int, top_k: int, dim: int = 32,
                 temperature: float = 0.1) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, {n_experts}], got {top_k}")
        self.top_k, self.temperature = top_k, temperature
        self.proj = nn.Linear(hidden, dim, bias=False)
        self.keys = nn.Parameter(torch.randn(n_experts, dim) / math.sqrt(dim))

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(h.to(self.proj.weight.dtype)), dim=-1)

    def expert_keys(self) -> torch.Tensor:
        return F.normalize(self.keys, dim=-1)

    def forward(self, h: torch.Tensor) -> Routing:
        q = self.embed(h)
        probs = torch.softmax(q @ self.expert_keys().T / self.temperature, dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
        return Routing(q, probs, gates, top_i)
