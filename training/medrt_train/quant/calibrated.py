"""The calibrated methods' layer loop: the calibration text runs through the decoder one layer
at a time; each layer is scaled (AWQ), quantized (GPTQ, or rounding with searched ranges), and
its quantized output feeds the next layer. Memory holds one layer in f32 and the calibration
activations, never the model.

Within a layer, linear layers are quantized in the order they run, a stage at a time (the
modules that read the same input form a stage: q/k/v, then o, then gate/up, then down), and
each stage's inputs are recomputed through the stages already quantized ("true sequential"),
so every stage compensates the error of those before it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medrt_train.quant.awq import ALPHAS, apply_scale, decoder_scale_groups, search_scale
from medrt_train.quant.gptq import GPTQOptions, gptq_quantize
from medrt_train.quant.range_search import fit_params_weighted
from medrt_train.quant.types import WeightType, dequantize, quantize_groups

METHODS = ("rtn", "gptq", "awq", "awq-gptq")


@dataclass(frozen=True)
class CalibratedMethod:
    """What a calibrated run does per layer: AWQ scaling (or not), then GPTQ or rounding."""

    awq: bool
    gptq: bool
    gptq_options: GPTQOptions = field(default_factory=GPTQOptions)
    awq_tokens: int = 4096  # calibration tokens the scale search measures the error on
    micro_batch: int = 4

    @classmethod
    def named(cls, name: str, gptq_options: GPTQOptions | None = None) -> CalibratedMethod:
        if name not in METHODS[1:]:
            raise ValueError(f"method {name!r} is not one of {', '.join(METHODS[1:])}")
        return cls(awq=name.startswith("awq"), gptq=name.endswith("gptq"),
                   gptq_options=gptq_options or GPTQOptions())

    @property
    def name(self) -> str:
        return "-".join(n for n, on in (("awq", self.awq), ("gptq", self.gptq)) if on) or "rtn"

    def to_json(self) -> dict:
        out: dict = {}
        if self.gptq:
            out.update(self.gptq_options.to_json())
        if self.awq:
            out["awq"] = {"alphas": list(ALPHAS), "tokens": self.awq_tokens}
        return out


def quantize_weight(wt: WeightType, weight: np.ndarray, inputs: np.ndarray,
                    method: CalibratedMethod) -> dict[str, np.ndarray]:
    """Stored tensors of one weight [out, in] given its inputs' statistics: the Hessian
    X^T X / n [in, in] for GPTQ, its diagonal (mean x^2 per input) [in] otherwise."""
    if method.gptq:
        return gptq_quantize(wt, weight, inputs, method.gptq_options)
    rows, cols = weight.shape
    importance = np.tile(inputs.astype(np.float32), rows).reshape(-1, wt.group_size or cols)
    return quantize_groups(wt, weight, lambda groups: fit_params_weighted(wt, groups, importance))


class _Inputs:
    """Forward pre-hooks that record what the chosen linear layers read: the Hessian X^T X
    (`full`) or only its diagonal, summed over rows, or (`sample_every` > 0, for the AWQ
    search) a strided sample of the input rows."""

    def __init__(self, modules: dict[str, nn.Linear], full: bool = True,
                 sample_every: int = 0) -> None:
        self.sums = {n: torch.zeros((m.in_features,) * (2 if full else 1))
                     for n, m in modules.items()}
        self.counts = dict.fromkeys(modules, 0)
        self.samples: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self._full, self._every = full, sample_every
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def record(_module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            if self._every:
                self.samples[name].append(x[::self._every].clone())
            elif self._full:
                self.sums[name].addmm_(x.T, x)
            else:
                self.sums[name].add_(x.pow(2).sum(dim=0))
            self.counts[name] += x.shape[0]
        return record

    def mean(self, name: str) -> np.ndarray:
        return (self.sums.pop(name) / self.counts[name]).numpy()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _run(layer: nn.Module, hidden: torch.Tensor, cos_sin, micro: int,
         out: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        for b in range(0, hidden.shape[0], micro):
            y = layer(hidden[b:b + micro], position_embeddings=cos_sin)
            y = y[0] if isinstance(y, tuple) else y
            if out is not None:
                out[b:b + micro] = y


def stages(layer: nn.Module, linears: dict[str, nn.Linear], hidden: torch.Tensor, cos_sin
           ) -> list[list[str]]:
    """The linear layers in the order they run, grouped by the input tensor they share."""
    order: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda _m, inputs, n=n: order.append((n, inputs[0])))
               for n, m in linears.items()]
    _run(layer, hidden[:1], cos_sin, 1)
    for h in handles:
        h.remove()
    out: list[list[str]] = []
    last = None
    for name, x in order:
        if out and x is last:
            out[-1].append(name)
        else:
            out.append([name])
        last = x
    return out


def quantize_layers(model, config, load_layer: Callable[[int, nn.Module], None],
                    hidden: torch.Tensor,
                    types_of: Callable[[int], dict[str, WeightType]], method: CalibratedMethod,
                    write_layer: Callable[[int, nn.Module, dict[str, dict]], None],
                    log: Callable[[str], None]) -> None:
    """Quantize every decoder layer in turn. `hidden` [samples, seq, hidden] holds the
    calibration text's embeddings and is advanced through each quantized layer in place;
    `types_of(i)` maps layer i's linear layers to be quantized (names relative to the layer)
    to their types; `load_layer(i, layer)` fills a layer's parameters from disk and
    `write_layer(i, layer, tensors)` stores it given the quantized tensors of each."""
    base = model.get_decoder()
    rotary = type(base.rotary_emb)(config=config)
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    cos_sin = rotary(hidden[:1], positions)
    micro = method.micro_batch
    for i, layer in enumerate(base.layers):
        layer.to_empty(device="cpu")
        load_layer(i, layer)
        types = types_of(i)
        linears = {n: m for n, m in layer.named_modules() if n in types}
        alphas = []
        if method.awq:
            alphas = _awq(layer, config, linears, types, hidden, cos_sin, method)
        tensors: dict[str, dict] = {}
        for stage in stages(layer, linears, hidden, cos_sin):
            # Rounding with searched ranges needs only the Hessian's diagonal: for a 7B
            # down_proj that is 74 KiB instead of 1.3 GiB.
            rec = _Inputs({n: linears[n] for n in stage}, full=method.gptq)
            _run(layer, hidden, cos_sin, micro)
            rec.remove()
            for name in stage:
                wt = types[name]
                tensors[name] = quantize_weight(wt, linears[name].weight.detach().numpy(),
                                                rec.mean(name), method)
                linears[name].weight.data.copy_(torch.from_numpy(dequantize(wt, tensors[name])))
        write_layer(i, layer, tensors)
        _run(layer, hidden, cos_sin, micro, out=hidden)
        layer.to("meta")
        extra = f" (awq alphas {', '.join(f'{a:.2f}' for a in alphas)})" if alphas else ""
        log(f"{method.name}: layer {i + 1}/{len(base.layers)} done{extra}")


def _awq(layer: nn.Module, config, linears: dict[str, nn.Linear], types: dict[str, WeightType],
         hidden: torch.Tensor, cos_sin, method: CalibratedMethod) -> list[float]:
    """Search and fold the AWQ scale of every group whose layers are all quantized, measuring
    on the full-precision layer (folding is exact, so one pass serves every group)."""
    groups = [g for g in decoder_scale_groups(layer, config)
              if all(m in types for m in g.modules)]
    if not groups:
        return []
    every = max(1, hidden.shape[0] * hidden.shape[1] // method.awq_tokens)
    rec = _Inputs({g.modules[0]: linears[g.modules[0]] for g in groups}, full=False,
                  sample_every=every)
    _run(layer, hidden, cos_sin, method.micro_batch)
    rec.remove()
    alphas = []
    for g in groups:
        x = torch.cat(rec.samples.pop(g.modules[0]))
        prev = layer.get_submodule(g.prev)
        prev_rows = prev.weight.shape[0]
        s, alpha = search_scale(x, [linears[m].weight.detach() for m in g.modules],
                                [types[m] for m in g.modules], g.channel_rows, prev_rows)
        apply_scale(layer, g, s)
        alphas.append(alpha)
    return alphas
