"""The two auxiliary terms of the LoRA-MoE objective.

Contrastive (supervised, InfoNCE over a memory): an anchor is a sequence's pooled router vector
q (unit length); the keys are the experts' own keys plus every vector in the expert memory
queue, each labelled with its expert. With t the expert assigned to the anchor's category,
    L_con = -1/|P| sum_{p in P} log( exp(q.k_p / tau) / sum_{a in keys} exp(q.k_a / tau) ),
P = the keys labelled t. Anchors without a category (`general`) are left out.

Load balance (Switch Transformer): with f_e the share of top-k assignments that went to expert
e and p_e the mean router probability of e over the tokens,
    L_bal = N * sum_e f_e p_e        (1 when perfectly balanced)."""
from __future__ import annotations

import torch


def contrastive_loss(anchors: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor,
                     key_experts: torch.Tensor, temperature: float) -> torch.Tensor:
    """anchors [n, d] (unit), targets [n] (expert id, -1: unsupervised), keys [m, d] (unit) with
    key_experts [m]. Mean over the supervised anchors; 0 when there are none."""
    keep = targets >= 0
    if not bool(keep.any()):
        return anchors.sum() * 0.0
    anchors, targets = anchors[keep], targets[keep]
    log_prob = torch.log_softmax(anchors @ keys.T / temperature, dim=-1)      # [n, m]
    positive = (key_experts[None, :] == targets[:, None]).to(log_prob.dtype)  # [n, m]
    return (-(log_prob * positive).sum(-1) / positive.sum(-1).clamp(min=1)).mean()


def load_balance_loss(probs: torch.Tensor, topk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """probs [B, T, N], topk [B, T, k], mask [B, T] (1 for real tokens)."""
    n = probs.shape[-1]
    w = mask.to(probs.dtype)
    tokens = w.sum().clamp(min=1)
    chosen = torch.zeros_like(probs).scatter(-1, topk, 1.0)                # [B, T, N]
    share = (chosen * w[..., None]).sum((0, 1)) / (tokens * topk.shape[-1])
    mean_prob = (probs * w[..., None]).sum((0, 1)) / tokens
    return n * (share * mean_prob).sum()
