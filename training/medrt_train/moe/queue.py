"""The expert memory queue: per expert, a bounded FIFO of past routed representations.

Storage is one preallocated [experts, size, dim] buffer written round-robin, so memory is the
same at step 1 and step 1,000,000; the contrastive loss reads it as extra keys (detached)."""
from __future__ import annotations

import torch
from torch import nn


class ExpertMemoryQueue(nn.Module):
    """`size` most recent unit vectors of `dim` per expert; older ones are overwritten."""

    def __init__(self, n_experts: int, size: int, dim: int) -> None:
        super().__init__()
        if n_experts < 1 or size < 1 or dim < 1:
            raise ValueError(f"queue needs experts, size and dim >= 1, got "
                             f"{n_experts}, {size}, {dim}")
        self.size = size
        self.register_buffer("memory", torch.zeros(n_experts, size, dim), persistent=False)
        self.register_buffer("head", torch.zeros(n_experts, dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros(n_experts, dtype=torch.long), persistent=False)

    @property
    def n_experts(self) -> int:
        return self.memory.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor, experts: torch.Tensor) -> None:
        """Appends keys[i] ([n, dim]) to the queue of experts[i], dropping the oldest."""
        for key, e in zip(keys.detach(), experts.tolist()):
            slot = int(self.head[e])
            self.memory[e, slot] = key.to(self.memory.dtype)
            self.head[e] = (slot + 1) % self.size
            self.count[e] = min(int(self.count[e]) + 1, self.size)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored keys [m, dim] and the expert each belongs to [m] (m <= experts * size)."""
        valid = torch.arange(self.size, device=self.count.device)[None, :] < self.count[:, None]
        owners = torch.arange(self.n_experts, device=self.count.device)[:, None].expand_as(valid)
        return self.memory[valid], owners[valid]

    def latest(self, expert: int) -> torch.Tensor:
        """Expert `expert`'s stored keys, oldest first (for tests and inspection)."""
        n, head = int(self.count[expert]), int(self.head[expert])
        order = [(head - n + i) % self.size for i in range(n)]
        return self.memory[expert, order]
