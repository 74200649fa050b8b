"""AWQ (Lin et al., 2023): activation-aware per-channel scaling before quantization.

A weight column that multiplies a loud input channel matters more to the layer's output than
one that multiplies a quiet channel. AWQ multiplies such columns by `s > 1` before rounding
(so their relative rounding error shrinks) and divides the input channel by the same `s`,
folded into the operation that produces it (an RMSNorm weight, or the rows of the linear
layer before), so the full-precision function is unchanged and nothing is added at run time.
`s = mean|x|^alpha` per channel, with `alpha` in [0, 1] searched per group of linear layers
for the least output error on the calibration inputs; alpha = 0 is plain rounding, so the
search can only help on those inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medrt_train.quant.types import WeightType, dequantize, quantize_rtn

ALPHAS = tuple(i / 20 for i in range(21))


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers that read the output of `prev` (names relative to the decoder layer).

    `prev` is a norm (its weight vector is divided by s) or a linear layer (its rows and bias
    are). `channel_rows[c]` is the row of `prev` that produces input channel `c` of the
    modules: the identity, except for grouped-query attention, where several query heads read
    the same value head and so share its scale.
    """

    prev: str
    modules: tuple[str, ...]
    channel_rows: np.ndarray | None = None


def decoder_scale_groups(layer: nn.Module, config) -> list[ScaleGroup]:
    """The four groups of a Llama/Qwen2 decoder layer: q/k/v after the input norm, o after v,
    gate/up after the post-attention norm, down after up."""
    groups = [ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                             "self_attn.v_proj"))]
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    channel = np.arange(heads * head_dim)
    rows = (channel // head_dim // (heads // kv_heads)) * head_dim + channel % head_dim
    groups.append(ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), rows))
    groups.append(ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
    groups.append(ScaleGroup("mlp.up_proj", ("mlp.down_proj",)))
    for g in groups:
        for name in (g.prev, *g.modules):
            layer.get_submodule(name)  # fail here, naming the module, on another architecture
    return groups


def _pseudo_quantize(wt: WeightType, w: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest in `wt` and back, as float32 (what the output error is measured on)."""
    return torch.from_numpy(dequantize(wt, quantize_rtn(wt, w.detach().numpy())))


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], types: list[WeightType],
                 channel_rows: np.ndarray | None = None, prev_rows: int | None = None
                 ) -> tuple[torch.Tensor, float]:
    """The per-row scale of `prev` (length `prev_rows`, or the input width) that minimises the
    output error of the layers `weights` [out_j, in] on inputs `x` [n, in], and the alpha that
    gave it."""
    n_in = x.shape[1]
    rows = torch.arange(n_in) if channel_rows is None else torch.from_numpy(channel_rows)
    prev_rows = prev_rows or n_in
    mean_abs = x.abs().mean(dim=0)
    act = torch.zeros(prev_rows).index_add_(0, rows, mean_abs)
    act /= torch.zeros(prev_rows).index_add_(0, rows, torch.ones(n_in)).clamp(min=1)
    act = act.clamp(min=1e-5)
    w_all = torch.cat(weights, dim=0)
    reference = x @ w_all.T
    best = (float("inf"), 0.0, torch.ones(prev_rows))
    for alpha in ALPHAS:
        s = act.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        s_in = s[rows]
        quantized = torch.cat([_pseudo_quantize(wt, w * s_in) for w, wt in zip(weights, types)])
        err = ((x / s_in) @ quantized.T - reference).pow(2).mean().item()
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1]


@torch.no_grad()
def apply_scale(layer: nn.Module, group: ScaleGroup, s: torch.Tensor) -> None:
    """Fold `s` into the layer: `prev`'s output divided by s, the modules' columns times s."""
    prev = layer.get_submodule(group.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
    else:
        prev.weight.div_(s)
    s_in = s if group.channel_rows is None else s[torch.from_numpy(group.channel_rows)]
    for name in group.modules:
        layer.get_submodule(name).weight.mul_(s_in[None, :])
