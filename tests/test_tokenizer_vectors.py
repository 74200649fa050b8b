"""Tokenizers built from GGUF vocabularies reproduce llama.cpp's tokenizer test vectors
(test-tokenizer-0 format: inputs separated by "__ggml_vocab_test__" lines, expected ids one
line per input). As in llama.cpp's test, text is encoded without adding BOS/EOS."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from medrt.models.gguf_metadata import read_metadata
from medrt.models.gguf_tokenizer import build_tokenizer, write_tokenizer_files
from medrt.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tokenizers"
SEPARATOR = "\n__ggml_vocab_test__\n"
VOCABS = ["ggml-vocab-qwen2.gguf", "ggml-vocab-llama-bpe.gguf"]


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    inputs = (DATA / f"{name}.inp").read_text(encoding="utf-8").split(SEPARATOR)
    outputs = (DATA / f"{name}.out").read_text(encoding="utf-8").split("\n")
    # Each input, the empty one included, is followed by a separator; each output by "\n".
    assert inputs[-1] == "" and outputs[-1] == ""
    assert len(inputs) == len(outputs)
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(inputs[:-1], outputs[:-1])]


@pytest.fixture(scope="module", params=VOCABS)
def vocab(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    path = DATA / request.param
    if not path.is_file():
        pytest.skip(f"tokenizer data not found at {DATA} (the shared data folder is absent)")
    return request.param, read_metadata(path)


def test_every_vector(vocab: tuple[str, dict[str, Any]]) -> None:
    name, meta = vocab
    tok = build_tokenizer(meta)
    vectors = _vectors(name)
    assert len(vectors) >= 40
    failures = [(text, tok.encode(text, add_special_tokens=False).ids, want)
                for text, want in vectors
                if tok.encode(text, add_special_tokens=False).ids != want]
    assert not failures, failures[:3]
    # Decoding gives the text back for every vector (byte-level BPE is lossless, and the
    # vectors hold no special tokens). Qwen2 normalizes to NFC, so compare normalized text.
    for text, want in vectors:
        assert tok.decode(want, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_model_dir_files(vocab: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """tokenizer.json + tokenizer_config.json as medrt's Tokenizer reads them."""
    name, meta = vocab
    write_tokenizer_files(meta, tmp_path, 4096)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok = Tokenizer(tmp_path)
    text, want = _vectors(name)[11]  # "Hello world"
    if name == "ggml-vocab-llama-bpe.gguf":
        # Llama 3 adds <|begin_of_text|> (llama.cpp's default when the GGUF does not say).
        assert cfg["add_bos_token"] is True and cfg["bos_token"] == "<|begin_of_text|>"
        assert tok.encode(text) == [128000] + want
    else:
        assert cfg["add_bos_token"] is False and cfg["eos_token"] == "<|endoftext|>"
        assert tok.encode(text) == want
        assert "<|im_start|>" in cfg["chat_template"]
        ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True)
        assert ids[:3] == [151644, 8948, 198]  # <|im_start|>system\n: control tokens parsed
    assert tok.encode(text, add_special_tokens=False) == want
    assert cfg["model_max_length"] == 4096
