"""Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from GGUF metadata
(the dict medrt.models.gguf_metadata.read_metadata returns).

Two vocabulary kinds are supported:
- byte-level BPE (``tokenizer.ggml.model == "gpt2"``: Llama 3, Qwen2, SmolLM). The
  pre-tokenizer follows llama.cpp's choice for each ``tokenizer.ggml.pre`` value: a sequence
  of regex splits applied one after the other, each match kept as its own piece, then the
  GPT-2 byte-to-unicode mapping.
- SentencePiece BPE (``"llama"``: Llama 2, TinyLlama, Mistral). GGUF keeps only token scores,
  so the merges are rebuilt from them as transformers does (a pair merges with the rank of
  the merged token's score); spaces become "▁", with a leading one when
  ``tokenizer.ggml.add_space_prefix`` says so, and bytes outside the vocabulary fall back to
  the <0xXX> tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from medrt.errors import InvalidCheckpoint

# The token_type values llama.cpp writes (llama_token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is not merged (Llama 3)
    nfc: bool = False  # the original Hugging Face tokenizer normalizes to NFC (Qwen2)


_LLAMA3 = _PreTokenizer((_LLAMA3_RE,), ignore_merges=True)
_QWEN2 = _PreTokenizer((_QWEN2_RE,), nfc=True)
_DIGITS_THEN_GPT2 = _PreTokenizer((r"\p{N}", _GPT2_RE))
_GPT2 = _PreTokenizer((_GPT2_RE,))
# llama.cpp's fallback for a byte-level BPE vocabulary without a known pre-tokenizer name.
_DEFAULT = _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"))

# tokenizer.ggml.pre -> pre-tokenizer, grouped as llama.cpp's llama-vocab.cpp groups them.
_PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), _DIGITS_THEN_GPT2
    ),
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais"), _GPT2),
    "default": _DEFAULT,
}


def _pre_tokenizer_for(meta: Mapping[str, Any]) -> _PreTokenizer:
    pre = meta.get("tokenizer.ggml.pre", "default")
    spec = _PRE_TOKENIZERS.get(pre)
    if spec is None:
        known = ", ".join(sorted(_PRE_TOKENIZERS))
        raise InvalidCheckpoint(
            f"GGUF tokenizer.ggml.pre '{pre}' is not supported (known: {known})"
        )
    return spec


def build_tokenizer(meta: Mapping[str, Any]) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's tokenizer for this GGUF's vocabulary."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise InvalidCheckpoint("GGUF file has no tokenizer (tokenizer.ggml.model is missing)")
    if kind not in ("gpt2", "llama"):
        raise InvalidCheckpoint(
            f"GGUF tokenizer model '{kind}' is not supported; only byte-level BPE ('gpt2': "
            "Llama 3, Qwen2, SmolLM) and SentencePiece BPE ('llama') can be imported"
        )
    tokens: list[str] = meta.get("tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated string keeps its first id, as llama.cpp does
    tok = _byte_level_bpe(meta, vocab) if kind == "gpt2" else _sentencepiece_bpe(meta, vocab)

    # Control tokens become special added tokens (skipped when decoding with
    # skip_special_tokens); user-defined ones (e.g. <think>) plain added tokens, which llama.cpp
    # matches in any text.
    added = [
        AddedToken(tokens[i], special=(t != _USER_DEFINED), normalized=False)
        for i, t in enumerate(types)
        if t in (_CONTROL, _USER_DEFINED, _UNKNOWN) and vocab[tokens[i]] == i
    ]
    tok.add_tokens(added)
    post = _post_processor(meta, tokens)
    if post is not None:
        tok.post_processor = post
    return tok


def _byte_level_bpe(meta: Mapping[str, Any], vocab: dict[str, int]) -> Tokenizer:
    spec = _pre_tokenizer_for(meta)
    merges: list[str] = meta.get("tokenizer.ggml.merges") or []
    pairs = []
    for i, m in enumerate(merges):
        pair = tuple(m.split(" ", 1)) if isinstance(m, str) else ()
        if len(pair) != 2 or not all(pair):
            raise InvalidCheckpoint(f"GGUF tokenizer.ggml.merges entry {i} ({m!r}) is not two "
                                    "tokens separated by a space")
        pairs.append(pair)
    # A merge naming a token the vocabulary lacks is tokenizers' bare Exception, which the
    # importer turns into an InvalidCheckpoint naming the file (panics_as_invalid).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges))
    if spec.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(meta: Mapping[str, Any], vocab: dict[str, int]) -> Tokenizer:
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None:
        raise InvalidCheckpoint("GGUF SentencePiece vocabulary has no tokenizer.ggml.scores")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = []
    for merged, i in vocab.items():
        local = [(merged[:k], merged[k:]) for k in range(1, len(merged))
                 if merged[:k] in vocab and merged[k:] in vocab]
        local.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        merges += [(scores[i], p) for p in local]
    merges.sort(key=lambda m: -m[0])  # stable: equal scores keep vocabulary order
    unk = _special(meta, tokens, "unknown")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[p for _, p in merges], unk_token=unk,
                               fuse_unk=True, byte_fallback=True))
    space = "\u2581"
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", space)
    tok.normalizer = (normalizers.Sequence([normalizers.Prepend(space), replace]) if prefix
                      else replace)
    steps = [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _special(meta: Mapping[str, Any], tokens: list[str], name: str) -> str | None:
    idx = meta.get(f"tokenizer.ggml.{name}_token_id")
    return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None


def _adds_bos(meta: Mapping[str, Any]) -> bool:
    # llama.cpp's default when the key is absent: SentencePiece and Llama 3 vocabularies add
    # BOS, other byte-level ones do not.
    sentencepiece = meta.get("tokenizer.ggml.model") == "llama"
    default = sentencepiece or _pre_tokenizer_for(meta) is _LLAMA3
    return bool(meta.get("tokenizer.ggml.add_bos_token", default))


def _post_processor(
    meta: Mapping[str, Any], tokens: list[str]
) -> processors.PostProcessor | None:
    bos_id = meta.get("tokenizer.ggml.bos_token_id") if _adds_bos(meta) else None
    eos_id = meta.get("tokenizer.ggml.eos_token_id") if meta.get("tokenizer.ggml.add_eos_token") \
        else None
    if bos_id is None and eos_id is None:
        byte_level = meta.get("tokenizer.ggml.model") == "gpt2"
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    head = f"{tokens[bos_id]} " if bos_id is not None else ""
    tail = f" {tokens[eos_id]}" if eos_id is not None else ""
    specials = [(tokens[i], i) for i in dict.fromkeys((bos_id, eos_id)) if i is not None]
    return processors.TemplateProcessing(
        single=f"{head}$A:0{tail}",
        pair=f"{head}$A:0{tail} {head}$B:1{tail}",
        special_tokens=specials,
    )


def eos_token_ids(meta: Mapping[str, Any]) -> list[int]:
    """End-of-sequence id plus the end-of-turn / end-of-message ids when the GGUF names them."""
    ids: list[int] = []
    for key in ("eos", "eot", "eom"):
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        if idx is not None and idx not in ids:
            ids.append(int(idx))
    return ids


def tokenizer_config(meta: Mapping[str, Any], model_max_length: int | None) -> dict[str, Any]:
    """tokenizer_config.json content: special tokens, BOS/EOS policy and the chat template."""
    tokens: list[str] = meta.get("tokenizer.ggml.tokens")
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": _adds_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        tok = _special(meta, tokens, key)
        if tok is not None:
            cfg[f"{name}_token"] = tok
    if model_max_length:
        cfg["model_max_length"] = int(model_max_length)
    template = meta.get("tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    return cfg


def write_tokenizer_files(
    meta: Mapping[str, Any], out_dir: Path, model_max_length: int | None = None
) -> None:
    """Writes tokenizer.json and tokenizer_config.json for the GGUF's vocabulary into out_dir."""
    build_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    cfg = tokenizer_config(meta, model_max_length)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
