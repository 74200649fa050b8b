"""Cosine learning-rate schedule with warm restarts (SGDR, Loshchilov & Hutter 2017).

The run after an optional linear warmup is split into `restarts + 1` equal cycles. Within a
cycle at fraction t in [0, 1) the rate is
    lr(t) = lr_min + (lr_max - lr_min) * (1 + cos(pi * t)) / 2,
so every cycle starts at lr_max, decays towards lr_min, and restarts at lr_max.
"""
from __future__ import annotations

import math

import torch


def cosine_with_restarts(step: int, total_steps: int, lr_min: float, lr_max: float,
                         restarts: int = 0, warmup_steps: int = 0) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if restarts < 0 or warmup_steps < 0:
        raise ValueError("restarts and warmup_steps must be non-negative")
    if step < warmup_steps:
        return lr_max * (step + 1) / warmup_steps
    steps = max(1, total_steps - warmup_steps)
    cycle_len = steps / (restarts + 1)
    pos = min(step - warmup_steps, steps - 1)
    t = (pos % cycle_len) / cycle_len
    return lr_min + (lr_max - lr_min) * (1.0 + math.cos(math.pi * t)) / 2.0


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, lr_min: float,
                   lr_max: float, restarts: int = 0,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `cosine_with_restarts`; the optimizer's base rate must be lr_max."""
    for group in optimizer.param_groups:
        group["lr"] = lr_max
        group["initial_lr"] = lr_max
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_restarts(step, total_steps, lr_min, lr_max,
                                                     restarts, warmup_steps) / lr_max)
