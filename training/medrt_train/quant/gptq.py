"""GPTQ (Frantar et al., 2022): quantize a weight column by column and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's calibration inputs, so the layer's output error is what gets minimised.

Groups stay contiguous along the input dimension, as the format requires. With activation
order the columns are visited by decreasing Hessian diagonal, so group parameters are fixed
up front from the original weights ("static groups"); without it each group's parameters are
fitted when its first column is reached, on the already-updated weights. Either way a group's
scale and zero come from the weighted range search (range_search.py) with the Hessian
diagonal as the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medrt_train.quant.range_search import fit_params_weighted
from medrt_train.quant.types import WeightType, assemble, check_shape, decode, encode, fit_params


@dataclass(frozen=True)
class GPTQOptions:
    act_order: bool = True
    block_size: int = 128
    damp: float = 0.01  # fraction of the mean Hessian diagonal added for stability

    def to_json(self) -> dict:
        return {"act_order": self.act_order, "block_size": self.block_size, "damp": self.damp}


def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    h = h.astype(np.float64, copy=True)
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    h_inv = np.linalg.inv(h)
    return np.linalg.cholesky(h_inv).T  # upper factor U with U^T U = H^-1


def gptq_quantize(wt: WeightType, weight: np.ndarray, hessian: np.ndarray,
                  options: GPTQOptions | None = None) -> dict[str, np.ndarray]:
    """Quantize `weight` [out, in] given the input Hessian `hessian` [in, in] (X^T X / n)."""
    options = options or GPTQOptions()
    w = np.array(weight, dtype=np.float32)
    rows, cols = w.shape
    check_shape(wt, rows, cols, "weight")
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    gs = wt.group_size or cols
    n_groups = cols // gs
    params = [np.zeros((rows, n_groups), dtype=p.dtype) for p in fit_params(wt, w[:1, :gs])]
    fitted = np.zeros(n_groups, dtype=bool)
    importance = np.diag(h).astype(np.float32)
    if options.act_order:
        for g in range(n_groups):
            span = slice(g * gs, (g + 1) * gs)
            for arr, p in zip(params, fit_params_weighted(wt, w[:, span], importance[span])):
                arr[:, g] = p
        fitted[:] = True
        perm = np.argsort(-np.diag(h), kind="stable")
    else:
        perm = np.arange(cols)
    w = w[:, perm]
    u = _inverse_cholesky_upper(h[np.ix_(perm, perm)], options.damp).astype(np.float32)

    codes = np.zeros((rows, cols), dtype=np.int16)
    bs = options.block_size
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = perm[i1 + i]
            g = col // gs
            if not fitted[g]:
                # Natural order: this is the group's first column and the block holds all of it.
                span = w1[:, i:i + gs] if i + gs <= i2 - i1 else w[:, i1 + i:i1 + i + gs]
                for arr, p in zip(params, fit_params_weighted(wt, span,
                                                              importance[col:col + gs])):
                    arr[:, g] = p
                fitted[g] = True
            p = tuple(arr[:, g] for arr in params)
            q = encode(wt, w1[:, i:i + 1], p)
            codes[:, col] = q[:, 0]
            err = (w1[:, i] - decode(wt, q, p)[:, 0]) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return assemble(wt, codes, params)
