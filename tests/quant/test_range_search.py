"""The weighted range search of the calibrated methods (range_search.py)."""
import numpy as np
import pytest
from medrt_train.quant.range_search import fit_params_weighted
from medrt_train.quant.types import decode, encode, fit_params, parse_type


def _groups(seed=0):
    rng = np.random.default_rng(seed)
    # Heavy-tailed weights, as trained layers have: a few outliers stretch round-to-nearest.
    w = rng.standard_t(3, size=(256, 64)).astype(np.float32)
    importance = rng.gamma(0.5, size=(1, 64)).astype(np.float32)  # loud and quiet inputs
    return w, importance


def _error(wt, w, d, params):
    return (d * (w - decode(wt, encode(wt, w, params), params)) ** 2).sum(axis=1)


# 255 levels leave little to gain by clipping: int8 is only required to improve.
@pytest.mark.parametrize("spec,gain", [("int4-g64", 0.9), ("int4-g64-mins", 0.9), ("nf4", 0.9),
                                       ("int6", 0.9), ("int8", 0.97)])
def test_search_never_loses_to_round_to_nearest_and_wins_on_average(spec, gain):
    wt = parse_type(spec)
    w, d = _groups()
    rtn = _error(wt, w, d, fit_params(wt, w))
    params = fit_params_weighted(wt, w, d)
    searched = _error(wt, w, d, params)
    assert np.all(searched <= rtn * (1 + 1e-6))
    assert searched.sum() < gain * rtn.sum()
    # Stored dtypes are those of the format (f16 for 4- and 6-bit types, f32 for int8).
    assert [p.dtype for p in params] == [p.dtype for p in fit_params(wt, w)]


def test_importance_moves_the_error_onto_quiet_inputs():
    wt = parse_type("int4-g64")
    w, _ = _groups(1)
    loud = np.zeros((1, 64), dtype=np.float32)
    loud[0, :8] = 1.0
    loud[0, 8:] = 1e-3
    err_weighted = (w - decode(wt, encode(wt, w, p := fit_params_weighted(wt, w, loud)), p)) ** 2
    err_plain = (w - decode(wt, encode(wt, w, q := fit_params_weighted(wt, w)), q)) ** 2
    assert err_weighted[:, :8].sum() < 0.5 * err_plain[:, :8].sum()


def test_silent_groups_fall_back_to_equal_weights():
    wt = parse_type("int4-g64")
    w, _ = _groups(2)
    params = fit_params_weighted(wt, w, np.zeros((1, 64), dtype=np.float32))
    assert all(np.all(np.isfinite(p.astype(np.float32))) for p in params)
    plain = _error(wt, w, np.ones_like(w), fit_params(wt, w))
    assert np.all(_error(wt, w, np.ones_like(w), params) <= plain * (1 + 1e-6))
