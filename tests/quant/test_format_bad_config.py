"""A medrt-quant directory whose config.json is not readable JSON is a QuantFormatError naming
the file (found by tests/fuzz/fuzz_quant_section.py: it raised JSONDecodeError)."""

from pathlib import Path

import pytest
from medrt_train.quant.format import validate
from medrt_train.quant.types import QuantFormatError


@pytest.mark.parametrize("content", [b"", b"{\"quantization\": ", b"\xff\xfe{}", b"[1, 2]",
                                     b"null"])
def test_unreadable_config_is_a_format_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(QuantFormatError, match="config.json"):
        validate(tmp_path)
