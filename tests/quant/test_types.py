"""Weight types: error bounds, packing order, NF4 table (docs/quantized-format.md)."""
import numpy as np
import pytest
from medrt_train.quant.types import (
    NF4_TABLE,
    QuantFormatError,
    dequantize,
    pack_nibbles,
    parse_type,
    quantize_rtn,
    stored_bytes,
    unpack_nibbles,
)


def _matrix(rows=48, cols=256, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def test_nf4_table_is_the_published_one():
    # bitsandbytes' NF4 values (functional.py, get_4bit_type("nf4")), to float32 precision.
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    assert NF4_TABLE.dtype == np.float32
    assert NF4_TABLE.tolist() == np.array(published, dtype=np.float32).tolist()


def test_int8_error_within_half_a_step_per_row():
    w = _matrix()
    t = quantize_rtn(parse_type("int8"), w)
    assert t["qweight"].dtype == np.int8 and t["qweight"].shape == w.shape
    assert t["scales"].dtype == np.float32 and t["scales"].shape == (w.shape[0],)
    np.testing.assert_allclose(t["scales"], np.abs(w).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(dequantize(parse_type("int8"), t) - w)
    assert np.all(err <= t["scales"][:, None] / 2 + 1e-6)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_error_within_half_a_step_per_group(group):
    wt = parse_type(f"int4-g{group}")
    w = _matrix()
    t = quantize_rtn(wt, w)
    assert t["qweight"].dtype == np.uint8 and t["qweight"].shape == (48, 128)
    assert t["scales"].shape == t["zeros"].shape == (48, 256 // group)
    assert t["scales"].dtype == t["zeros"].dtype == np.float16
    # The 16 levels run from the group's minimum to its maximum: the zero point is fractional.
    scales, zeros = (t[k].astype(np.float32) for k in ("scales", "zeros"))
    groups = w.reshape(48, 256 // group, group)
    np.testing.assert_allclose(-zeros * scales, groups.min(axis=2), atol=5e-3)
    np.testing.assert_allclose((15 - zeros) * scales, groups.max(axis=2), atol=5e-3)
    step = np.repeat(scales, group, axis=1)
    err = np.abs(dequantize(wt, t) - w)
    # Half a step, plus the f16 rounding of the scale (15 * 2^-11 of a step at the far end)
    # and of the zero point (|zero| * 2^-11 of a step).
    slack = np.repeat(15 * 2**-11 + np.abs(zeros) * 2**-11, group, axis=1)
    assert np.all(err <= step * (0.5 + slack))


def test_nf4_error_within_half_the_gap_of_the_code():
    wt = parse_type("nf4")
    w = _matrix()
    t = quantize_rtn(wt, w)
    absmax = np.repeat(t["scales"].astype(np.float32), 64, axis=1)
    np.testing.assert_allclose(t["scales"].astype(np.float32),
                               np.abs(w).reshape(48, 4, 64).max(axis=2), rtol=1e-3)
    gaps = np.diff(NF4_TABLE)
    half_gap = np.maximum(np.r_[gaps[0], gaps], np.r_[gaps, gaps[-1]]) / 2
    codes = unpack_nibbles(t["qweight"])
    err = np.abs(dequantize(wt, t) - w)
    # f16 rounding of absmax may push |w|/absmax a hair past 1: allow 1e-3 of absmax.
    assert np.all(err <= (half_gap[codes] + 1e-3) * absmax)
    assert stored_bytes(wt, 48, 256) == 48 * 128 + 48 * 4 * 2


def test_packing_order_matches_the_spec():
    # Per 32-input chunk, byte j = element j (low nibble) | element j+16 (high nibble).
    codes = np.array([list(range(16)) + list(range(15, -1, -1)),
                      list(range(16)) * 2], dtype=np.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (2, 16)
    assert packed[0, :3].tolist() == [0xF0, 0xE1, 0xD2] and packed[0, 15] == 0x0F
    assert packed[1, :3].tolist() == [0x00, 0x11, 0x22] and packed[1, 15] == 0xFF
    np.testing.assert_array_equal(unpack_nibbles(packed), codes)


def test_int4_worked_example_from_the_spec():
    # docs/quantized-format.md, "Worked example": one row of 32 inputs, group 32.
    w = np.linspace(-1.0, 2.0, 32, dtype=np.float32)[None, :]
    t = quantize_rtn(parse_type("int4-g32"), w)
    assert t["scales"][0, 0] == np.float16(0.2)
    assert t["zeros"][0, 0] == 5
    assert t["qweight"][0, 0] == 0x80  # element 0 -> code 0, element 16 -> code 8
    assert np.abs(dequantize(parse_type("int4-g32"), t) - w).max() <= 0.1


@pytest.mark.parametrize("spec,message", [
    ("int4-g48", "not one of"), ("nf4-g32", "groups of 64"), ("int3", "unknown weight type"),
    ("int8-g48", "not one of"), ("f16-g32", "takes no group size"),
    ("nf4-g64-mins", "only int4 stores mins")])
def test_bad_type_specs_are_rejected(spec, message):
    with pytest.raises(QuantFormatError, match=message):
        parse_type(spec)


def test_group_size_must_divide_the_input_dimension():
    with pytest.raises(QuantFormatError, match="does not divide the input dimension 96"):
        quantize_rtn(parse_type("int4-g64"), _matrix(cols=96))
