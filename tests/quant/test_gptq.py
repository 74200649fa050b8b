"""GPTQ on a tiny layer: lower output error than round-to-nearest on the same inputs."""
import numpy as np
import pytest
from medrt_train.quant.gptq import GPTQOptions, gptq_quantize
from medrt_train.quant.types import dequantize, parse_type, quantize_rtn


def _layer(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    # Correlated inputs with a few loud channels, as real activations have.
    mix = (0.4 * rng.standard_normal((128, 128)) + np.eye(128)).astype(np.float32)
    x = rng.standard_normal((1024, 128)).astype(np.float32) @ mix
    x[:, :4] *= 8
    return w, x


def _output_error(x, w, wq):
    return float(np.mean((x @ (wq - w).T) ** 2))


@pytest.mark.parametrize("spec", ["int4-g64", "int4-g32", "nf4", "int6", "int8"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_the_calibration_inputs(spec, act_order):
    wt = parse_type(spec)
    w, x = _layer()
    h = x.T @ x / len(x)
    rtn = _output_error(x, w, dequantize(wt, quantize_rtn(wt, w)))
    tensors = gptq_quantize(wt, w, h, GPTQOptions(act_order=act_order, block_size=32))
    gptq = _output_error(x, w, dequantize(wt, tensors))
    assert gptq < 0.7 * rtn
    # Same storage as RTN: GPTQ only picks different codes (and, in natural order, groups).
    assert {k: v.shape for k, v in tensors.items()} == \
        {k: v.shape for k, v in quantize_rtn(wt, w).items()}


def test_gptq_ignores_inputs_that_never_fire():
    wt = parse_type("int4-g32")
    w, x = _layer(1)
    x[:, 40:72] = 0
    tensors = gptq_quantize(wt, w, x.T @ x / len(x))
    wq = dequantize(wt, tensors)
    # A zero Hessian diagonal must not turn into NaN or inf through the Cholesky factor; the
    # weights of silent inputs can take any value of their group's grid (they multiply 0).
    assert np.all(np.isfinite(wq))
    assert _output_error(x, w, wq) < _output_error(x, w, dequantize(wt, quantize_rtn(wt, w)))
