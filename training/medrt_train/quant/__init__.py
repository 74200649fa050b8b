"""Mixed-precision quantization to medrt's format (docs/quantized-format.md).

`types` holds the weight types and the numpy reference dequantizer, `recipes` maps modules to
types, `gptq` is the calibrated method, `quantize` drives a model layer by layer, `writer`
and `format` write and validate a directory, `loader` builds a transformers model from one.
"""
from medrt_train.quant.format import FORMAT_NAME, FORMAT_VERSION
from medrt_train.quant.types import QuantFormatError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "QuantFormatError"]
