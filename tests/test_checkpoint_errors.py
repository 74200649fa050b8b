"""Malformed safetensors files and checkpoint directories raise medrt.errors.InvalidCheckpoint
naming the file and the tensor. Good files come from the `safetensors` package; bad ones are
those files with their bytes corrupted."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from medrt import _core
from medrt.errors import InvalidCheckpoint, MedrtError
from safetensors.numpy import save_file

TENSORS = {
    "model.embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "model.norm.weight": np.ones(4, dtype=np.float16),
}

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 3,
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "eos_token_id": [2, 0],
    "torch_dtype": "float32",
}


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    return path


def test_good_file_lists_tensors(good: Path) -> None:
    tensors = _core.open_safetensors(str(good))
    assert tensors == {
        "model.embed_tokens.weight": ("F32", [3, 4]),
        "model.norm.weight": ("F16", [4]),
    }


def test_good_sharded_checkpoint(tmp_path: Path) -> None:
    save_file(
        {"model.embed_tokens.weight": TENSORS["model.embed_tokens.weight"]},
        str(tmp_path / "model-00001-of-00002.safetensors"),
    )
    save_file(
        {"model.norm.weight": TENSORS["model.norm.weight"]},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                    "model.norm.weight": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    ck = _core.open_checkpoint(str(tmp_path))
    assert ck["tensors"] == {
        "model.embed_tokens.weight": ("F32", [3, 4]),
        "model.norm.weight": ("F16", [4]),
    }
    assert ck["config"]["architecture"] == "LlamaForCausalLM"
    assert ck["config"]["head_dim"] == 2
    assert ck["config"]["eos_token_ids"] == [2, 0]
    assert ck["config"]["tie_word_embeddings"] is True


def expect_invalid(path: Path, needle: str) -> str:
    with pytest.raises(InvalidCheckpoint) as info:
        _core.open_safetensors(str(path))
    message = str(info.value)
    assert str(path) in message
    assert needle in message
    return message


def test_truncated_file(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:5])
    expect_invalid(good, "shorter than the 8-byte")


def test_header_length_past_end(good: Path) -> None:
    raw = good.read_bytes()
    good.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    expect_invalid(good, "runs past the end of the file")


def test_truncated_data(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:-4])
    expect_invalid(good, "tensor 'model.norm.weight'")


def test_invalid_json(good: Path) -> None:
    raw = bytearray(good.read_bytes())
    raw[8] = ord("[")  # the header's opening brace
    good.write_bytes(bytes(raw))
    expect_invalid(good, "invalid JSON header")


def test_unknown_dtype(good: Path) -> None:
    header, data = split(good)
    header["model.norm.weight"]["dtype"] = "F8_E9M9"
    join(good, header, data)
    expect_invalid(good, "tensor 'model.norm.weight': unknown dtype \"F8_E9M9\"")


def test_shape_disagrees_with_span(good: Path) -> None:
    header, data = split(good)
    header["model.embed_tokens.weight"]["shape"] = [4, 4]
    join(good, header, data)
    expect_invalid(good, "tensor 'model.embed_tokens.weight'")


def test_span_outside_file(good: Path) -> None:
    header, data = split(good)
    begin, end = header["model.norm.weight"]["data_offsets"]
    header["model.norm.weight"]["data_offsets"] = [begin + 64, end + 64]
    join(good, header, data)
    message = expect_invalid(good, "tensor 'model.norm.weight'")
    assert "outside the data area" in message


def test_overlapping_spans(good: Path) -> None:
    header, data = split(good)
    embed = header["model.embed_tokens.weight"]["data_offsets"]
    header["model.norm.weight"]["data_offsets"] = [embed[0] + 8, embed[0] + 16]
    join(good, header, data)
    message = expect_invalid(good, "overlaps")
    assert "model.norm.weight" in message and "model.embed_tokens.weight" in message


def test_error_classes(good: Path) -> None:
    good.write_bytes(b"")
    with pytest.raises(ValueError):
        _core.open_safetensors(str(good))
    with pytest.raises(MedrtError):
        _core.open_safetensors(str(good))
    with pytest.raises(InvalidCheckpoint, match="cannot open"):
        _core.open_safetensors(str(good.parent / "absent.safetensors"))


def test_checkpoint_errors_name_file_and_tensor(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(InvalidCheckpoint, match="no model.safetensors"):
        _core.open_checkpoint(str(tmp_path))
    save_file(TENSORS, str(tmp_path / "model-00001-of-00001.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.embed_tokens.weight": "model-00001-of-00001.safetensors",
                    "lm_head.weight": "model-00001-of-00001.safetensors",
                }
            }
        )
    )
    with pytest.raises(InvalidCheckpoint, match=r"tensor 'lm_head.weight' is listed in .*00001"):
        _core.open_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG | {"architectures": ["GPTNeoX"]}))
    with pytest.raises(InvalidCheckpoint, match=r"config.json: .*unsupported architecture"):
        _core.open_checkpoint(str(tmp_path))
