"""The fixture the C++ quantized kernels are tested against (cpp/tests/data) is what the numpy
reference dequantizer and RTN quantizer produce today."""
import importlib.util
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

DATA = Path(__file__).resolve().parents[2] / "cpp" / "tests" / "data"


def test_fixture_matches_the_numpy_reference() -> None:
    spec = importlib.util.spec_from_file_location("make_ref", DATA / "make_quant_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stored = load_file(str(DATA / "quant_reference.safetensors"))
    fresh = module.build()
    assert sorted(stored) == sorted(fresh)
    for name, t in fresh.items():
        assert stored[name].dtype == t.dtype, name
        np.testing.assert_array_equal(stored[name], t, err_msg=name)
