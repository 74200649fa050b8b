"""Group parameters that minimise an importance-weighted rounding error, for the calibrated
methods (GPTQ, AWQ).

Round-to-nearest spans each group's full range, so one outlier stretches the step for every
other weight of the group. Here each group tries a grid of narrower ranges (clipping the ends)
and refits its scale and zero by weighted least squares on the codes they give, keeping the
pair with the least error `sum_i d_i (w_i - w'_i)^2`. The weight `d_i` is the mean square of
the input that multiplies `w_i` (the Hessian diagonal GPTQ already has), so an input that is
loud in the calibration text keeps its weights exact at the expense of quiet ones: the error
measured is the layer's output error, not the weight error. This is the role of AWQ's clip
search and of the weighted fits of llama.cpp's k-quants with an importance matrix.
"""
from __future__ import annotations

import numpy as np

from medrt_train.quant.types import (
    WeightType,
    decode,
    encode,
    fit_params,
    int4_min_params,
    int4_params,
)

# Fractions of the full range tried, full range first (so the result is never worse than RTN).
_SHRINK = np.linspace(1.0, 0.55, 19)
_REFITS = 2


def fit_params_weighted(wt: WeightType, w: np.ndarray, importance: np.ndarray | None = None
                        ) -> tuple[np.ndarray, ...]:
    """Parameters for the values `w` [rows, k] minimising the rounding error weighted by
    `importance` (broadcastable to `w`, non-negative; None: unweighted)."""
    w = np.asarray(w, dtype=np.float32)
    d = np.ones_like(w) if importance is None else np.broadcast_to(
        np.asarray(importance, dtype=np.float32), w.shape)
    # A group whose inputs never fire would get zero weight everywhere: fall back to equal
    # weights there rather than an arbitrary fit.
    d = np.where(d.sum(axis=1, keepdims=True) > 0, d, 1.0)
    best = fit_params(wt, w)
    best_err = _error(wt, w, d, best)
    for shrink in _SHRINK[1:]:
        best, best_err = _keep_better(wt, w, d, best, best_err, _refit(wt, w, d,
                                                                        _shrunk(wt, w, shrink)))
    for _ in range(_REFITS):
        best, best_err = _keep_better(wt, w, d, best, best_err, _refit(wt, w, d, best))
    return best


def _keep_better(wt: WeightType, w: np.ndarray, d: np.ndarray, best: tuple[np.ndarray, ...],
                 best_err: np.ndarray, cand: tuple[np.ndarray, ...]
                 ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Per row, the candidate parameters where they lower the error, else the best so far."""
    err = _error(wt, w, d, cand)
    better = err < best_err
    return (tuple(np.where(better, c, b) for c, b in zip(cand, best)),
            np.where(better, err, best_err))


def _shrunk(wt: WeightType, w: np.ndarray, shrink: float) -> tuple[np.ndarray, ...]:
    if wt.name == "int4":
        lo, hi = w.min(axis=1), w.max(axis=1)
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * shrink
        return (int4_min_params if wt.mins else int4_params)(mid - half, mid + half)
    (scale,) = fit_params(wt, w)
    return ((scale.astype(np.float32) * shrink).astype(scale.dtype),)


def _refit(wt: WeightType, w: np.ndarray, d: np.ndarray, params: tuple[np.ndarray, ...]
           ) -> tuple[np.ndarray, ...]:
    """Weighted least-squares scale (and offset, for int4: its zero point, or with `mins` its
    minimum) for the codes `params` give."""
    codes = encode(wt, w, params)
    if wt.name == "int4":
        q = codes.astype(np.float32)
        sd, sq, sw = d.sum(1), (d * q).sum(1), (d * w).sum(1)
        sqq, sqw = (d * q * q).sum(1), (d * q * w).sum(1)
        det = sd * sqq - sq * sq
        ok = det > 1e-12 * np.maximum(sd * sqq, 1e-30)
        scale = np.where(ok, (sd * sqw - sq * sw) / np.where(ok, det, 1.0), 0.0)
        ok &= scale > 0
        offset = (sw - scale * sq) / sd  # the value of code 0: w' = scale * q + offset
        old_scale, old_offset = (p.astype(np.float32) for p in params)
        new_scale = np.where(ok, scale, old_scale)
        # mins store that value itself; zeros store the code that maps to 0.
        new_offset = offset if wt.mins else -offset / np.where(ok, scale, 1.0)
        return new_scale.astype(np.float16), np.where(ok, new_offset, old_offset).astype(
            np.float16)
    # The codes' values in units of the scale: the table (nf4), code - 32 (int6), the code.
    t = decode(wt, codes, (np.ones(len(w), dtype=np.float32),))
    den = (d * t * t).sum(1)
    scale = np.where(den > 0, (d * t * w).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    old = params[0].astype(np.float32)
    scale = np.where(scale > 0, scale, old)
    return (scale.astype(params[0].dtype),)


def _error(wt: WeightType, w: np.ndarray, d: np.ndarray, params: tuple[np.ndarray, ...]
           ) -> np.ndarray:
    return (d * (w - decode(wt, encode(wt, w, params), params)) ** 2).sum(axis=1)
