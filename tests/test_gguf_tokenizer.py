"""Tokenizers from GGUF metadata on small hand-made vocabularies: SentencePiece BPE (merges
rebuilt from scores, byte fallback, the leading space), special and user-defined tokens, and
the errors for what cannot be converted. Real vocabularies are checked against llama.cpp's test
vectors in test_tokenizer_vectors.py."""

from __future__ import annotations

from typing import Any

import pytest
from medrt.errors import InvalidCheckpoint
from medrt.models.gguf_tokenizer import build_tokenizer, tokenizer_config

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
PIECES = [  # (piece, score): a higher score merges first
    ("\u2581", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0),
    ("r", -2.0), ("d", -2.0), ("ll", -3.0), ("he", -4.0), ("\u2581h", -5.0), ("hell", -6.0),
    ("hello", -7.0), ("\u2581hello", -8.0), ("or", -9.0), ("\u2581w", -10.0),
]


def spm_meta(**extra: Any) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for piece, score in PIECES:
        tokens.append(piece)
        types.append(NORMAL)
        scores.append(score)
    tokens.append("<think>")
    types.append(USER_DEFINED)
    scores.append(0.0)
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    meta.update(extra)
    return meta


def ids_of(meta: dict[str, Any], *pieces: str) -> list[int]:
    tokens = meta["tokenizer.ggml.tokens"]
    return [tokens.index(p) for p in pieces]


def test_sentencepiece_merges_by_score_with_leading_space() -> None:
    meta = spm_meta()
    tok = build_tokenizer(meta)
    enc = tok.encode("hello world", add_special_tokens=False)
    # "▁hello" is reached through ll, he, hell, hello; "▁world" has no merges past "or".
    assert enc.ids == ids_of(meta, "\u2581hello", "\u2581w", "or", "l", "d")
    assert tok.decode(enc.ids) == "hello world"
    # SentencePiece adds the leading space even when the text starts with one.
    assert tok.encode(" hello", add_special_tokens=False).ids == \
        ids_of(meta, "\u2581", "\u2581hello")


def test_sentencepiece_byte_fallback_and_bos() -> None:
    meta = spm_meta()
    tok = build_tokenizer(meta)
    ids = tok.encode("hé").ids
    assert ids == [1] + ids_of(meta, "\u2581h", "<0xC3>", "<0xA9>")  # BOS by default
    assert tok.decode(ids, skip_special_tokens=True) == "hé"
    assert tokenizer_config(meta, None)["add_bos_token"] is True


def test_without_space_prefix_or_bos() -> None:
    meta = spm_meta(**{"tokenizer.ggml.add_space_prefix": False,
                       "tokenizer.ggml.add_bos_token": False})
    tok = build_tokenizer(meta)
    assert tok.encode("hello").ids == ids_of(meta, "hello")
    assert tok.encode(" hello").ids == ids_of(meta, "\u2581hello")
    assert tokenizer_config(meta, None)["add_bos_token"] is False


def test_special_and_user_defined_tokens() -> None:
    meta = spm_meta(**{"tokenizer.ggml.add_bos_token": False})
    tok = build_tokenizer(meta)
    ids = tok.encode("<s>hello<think>").ids
    assert ids == ids_of(meta, "<s>", "\u2581hello", "<think>")
    # Control tokens are special (dropped by skip_special_tokens); user-defined ones are text.
    assert tok.decode(ids, skip_special_tokens=True) == "hello<think>"
    cfg = tokenizer_config(meta, 2048)
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"]) == ("<s>", "</s>", "<unk>")


@pytest.mark.parametrize("meta, message", [
    ({}, "has no tokenizer"),
    ({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}, "'bert' is not supported"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "jina-es",
      "tokenizer.ggml.tokens": ["a"]}, "'jina-es' is not supported"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, "no tokenizer.ggml.scores"),
    # A merge that is not two tokens (found by fuzz_gguf_import: tokenizers raised TypeError).
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
      "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b", "ab"]},
     r"merges entry 1 \('ab'\) is not two tokens separated by a space"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
      "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b", " b"]},
     r"merges entry 1 \(' b'\) is not two tokens"),
])
def test_unsupported_vocabularies(meta: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCheckpoint, match=message):
        build_tokenizer(meta)
