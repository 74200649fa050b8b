"""Attaching LoRA experts and routers to a Hugging Face causal LM (Llama, Qwen2, ...).

Each decoder layer gets one router; a forward pre-hook on the layer routes every token from the
layer's input hidden state, and all the layer's expert projections read those gates. The base
weights are frozen; only routers and experts train."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medrt.medical import CATEGORIES

from ..lora import DEFAULT_TARGETS
from .layers import LoraMoELinear, RoutingSlot
from .losses import contrastive_loss, load_balance_loss
from .queue import ExpertMemoryQueue
from .router import Routing, TopKRouter


@dataclass
class MoeConfig:
    n_experts: int = 5
    top_k: int = 2
    r: int = 8
    alpha: float = 16.0
    rslora: bool = True
    targets: tuple[str, ...] = DEFAULT_TARGETS
    router_dim: int = 32
    temperature: float = 0.1
    queue_size: int = 64
    con_weight: float = 0.1
    bal_weight: float = 0.01
    categories: tuple[str, ...] = CATEGORIES  # category i is supervised toward expert i % N
    extra: dict = field(default_factory=dict)

    def expert_of(self, category: str | None) -> int:
        """The expert a category is pulled toward; -1 for no category (`general`)."""
        if category not in self.categories:
            return -1
        return self.categories.index(category) % self.n_experts


@dataclass
class MoeOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor | None
    con_loss: torch.Tensor
    bal_loss: torch.Tensor
    logits: torch.Tensor
    seq_probs: torch.Tensor  # [B, N] router probabilities per sequence, mean over layers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no model.layers decoder stack to attach to")
    return layers


class MoeModel(nn.Module):
    """`base` with N LoRA experts on every target projection and a router per layer."""

    def __init__(self, base: nn.Module, config: MoeConfig) -> None:
        super().__init__()
        self.base, self.config = base, config
        for p in base.parameters():
            p.requires_grad_(False)
        layers = decoder_layers(base)
        hidden = base.config.hidden_size
        self.routers = nn.ModuleList(
            TopKRouter(hidden, config.n_experts, config.top_k, config.router_dim,
                       config.temperature) for _ in layers)
        self.queues = nn.ModuleList(
            ExpertMemoryQueue(config.n_experts, config.queue_size, config.router_dim)
            for _ in layers)
        self._slots = [RoutingSlot() for _ in layers]
        self._routing: list[Routing | None] = [None] * len(layers)
        self.force_expert: int | None = None  # route every token to this expert (one-hot)
        for i, layer in enumerate(layers):
            found = self._wrap_targets(layer, self._slots[i])
            missing = set(config.targets) - found
            if missing:
                raise ValueError(f"layer {i} of {type(base).__name__} has no {sorted(missing)}")
            layer.register_forward_pre_hook(self._route_hook(i), with_kwargs=True)

    def _wrap_targets(self, layer: nn.Module, slot: RoutingSlot) -> set[str]:
        found = set()
        for name, module in list(layer.named_modules()):
            parent_name, _, leaf = name.rpartition(".")
            if leaf in self.config.targets and isinstance(module, nn.Linear):
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, leaf, LoraMoELinear(module, self.config.n_experts, self.config.r,
                                                    self.config.alpha, self.config.rslora, slot))
                found.add(leaf)
        return found

    def _route_hook(self, index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict):
            h = args[0] if args else kwargs["hidden_states"]
            routing = self.routers[index](h)
            if self.force_expert is not None:
                one_hot = F.one_hot(torch.tensor(self.force_expert), self.config.n_experts)
                routing.gates = one_hot.to(routing.gates).expand_as(routing.gates)
            self._slots[index].gates = routing.gates
            self._routing[index] = routing
        return hook

    def expert_modules(self) -> dict[str, LoraMoELinear]:
        """The expert projections by their base module name ("model.layers.0.self_attn.q_proj")."""
        return {name: m for name, m in self.base.named_modules() if isinstance(m, LoraMoELinear)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                update_queue: bool = False) -> MoeOutput:
        """targets: [B] expert per sequence (-1: none) for the contrastive term. With
        update_queue the pooled router vectors enter the queues after the loss is computed
        (the queue holds past batches only)."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        w = mask[..., None].float()
        con = bal = out.logits.new_zeros(())
        seq_probs = []
        for router, queue, routing in zip(self.routers, self.queues, self._routing):
            anchor = F.normalize((routing.embed * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)
            if targets is not None:
                mem_keys, mem_experts = queue.entries()
                keys = torch.cat([router.expert_keys(), mem_keys])
                owners = torch.cat([torch.arange(self.config.n_experts), mem_experts])
                con = con + contrastive_loss(anchor, targets, keys, owners,
                                             self.config.temperature)
            bal = bal + load_balance_loss(routing.probs, routing.topk, mask)
            probs = (routing.probs * w).sum(1) / w.sum(1).clamp(min=1)
            seq_probs.append(probs.detach())
            if update_queue:
                queue.push(anchor, probs.argmax(-1))
        n = len(self.routers)
        con, bal = con / n, bal / n
        loss = self.config.con_weight * con + self.config.bal_weight * bal
        if out.loss is not None:
            loss = loss + out.loss
        return MoeOutput(loss, out.loss, con, bal, out.logits, torch.stack(seq_probs).mean(0))
