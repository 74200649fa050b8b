"""medrt.Embedder: sentence embeddings computed by medrt's own engine (a BERT encoder in C++).

Text is tokenized here with the model's tokenizer.json (the `tokenizers` library: BERT
WordPiece, lower-casing, [CLS] ... [SEP]), truncated to the model's max_seq_length
(sentence_bert_config.json, else 256) and never padded: the rows of a batch go to the engine
packed one after another, each at its own length. The engine computes without the GIL.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.hf_tokenizer import load_hf_tokenizer, panics_as_invalid

DEFAULT_MAX_SEQ_LENGTH = 256

# Spellings of Embedder(dtype=...) (torch's and vLLM's names, and the short ones) -> the
# safetensors name the engine takes.
_DTYPES = {"auto": "auto", "float32": "F32", "f32": "F32", "float": "F32",
           "float16": "F16", "f16": "F16", "half": "F16", "bfloat16": "BF16", "bf16": "BF16"}
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class Embedder:
    """An L2-normalised sentence encoder: ``embed(texts) -> float32 array [len(texts), dim]``.

    ``model`` is an encoder directory (Hugging Face layout, ``"model_type": "bert"``) or a known
    encoder name (``"all-minilm-l6-v2"``, pulled on first use). ``num_threads`` 0 uses the
    physical cores. ``dtype`` is the type the linear weights are held in ("float32",
    "float16", "bfloat16"); "auto", as vLLM's, runs a float32 checkpoint with float16 weights
    (activations stay float32; cosine to the float32 embeddings above 0.999999 on PubMedQA
    text, and a faster forward: docs/semantic-cache.md) and others as stored.
    """

    def __init__(self, model: str | os.PathLike = "all-minilm-l6-v2", *,
                 num_threads: int = 0, dtype: str = "auto") -> None:
        from medrt import _core
        from medrt.models.encoder_pull import resolve_encoder

        if not isinstance(dtype, str) or dtype.lower() not in _DTYPES:
            raise InvalidRequest(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
        self.model_dir = resolve_encoder(model)
        self._engine = _core.Encoder(str(self.model_dir), num_threads, _DTYPES[dtype.lower()])
        #: The type the linear weights are held in, "auto" resolved ("float16", ...).
        self.dtype = _DTYPE_NAMES[self._engine.weight_dtype]
        tok_path = self.model_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise InvalidCheckpoint(f"{tok_path}: missing (the encoder's tokenizer)")
        self._tok = load_hf_tokenizer(tok_path)
        self._tok_path = tok_path
        self.max_seq_length = min(_max_seq_length(self.model_dir), self._engine.max_tokens)
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.max_seq_length)
        # Embeddings in float16 and float32 differ slightly: a cache built with one is rebuilt
        # for the other.
        self.fingerprint = f"{model_fingerprint(self.model_dir)}-{self.dtype}"

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return int(self._engine.dim)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids each text is embedded from ([CLS] ... [SEP], truncated)."""
        if isinstance(texts, str):
            raise InvalidRequest("embed takes a list of texts, not one string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidRequest(f"text {i} is {type(t).__name__}, not str")
        with panics_as_invalid(self._tok_path, "encoding"):
            return [e.ids for e in self._tok.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings [len(texts), dim] (float32, unit L2 norm), one row per text."""
        ids = self.tokenize(texts)
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in ids], out=offsets[1:])
        tokens = np.fromiter((t for r in ids for t in r), dtype=np.int32, count=int(offsets[-1]))
        return self._engine.embed(tokens, offsets)


def _max_seq_length(model_dir: Path) -> int:
    path = model_dir / "sentence_bert_config.json"
    if path.is_file():
        try:
            value = json.loads(path.read_text()).get("max_seq_length")
        except (OSError, ValueError) as e:
            raise InvalidCheckpoint(f"{path}: cannot read: {e}") from e
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_SEQ_LENGTH


def model_fingerprint(model_dir: str | os.PathLike, sample_bytes: int = 1 << 20) -> str:
    """A short hash that changes when a model directory's weights, config or tokenizer do.

    Hashes config.json, tokenizer.json, and per weight file its size plus its first and last
    `sample_bytes` (the safetensors header sits at the start, so a changed tensor layout or
    dtype always shows; hashing every byte of a multi-GB model on each start would not pay).
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        p = d / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    for p in sorted(d.glob("*.safetensors")):
        size = p.stat().st_size
        h.update(p.name.encode() + b"\0" + str(size).encode())
        with open(p, "rb") as f:
            h.update(f.read(sample_bytes))
            f.seek(max(0, size - sample_bytes))
            h.update(f.read(sample_bytes))
    return h.hexdigest()[:16]


@dataclass
class EmbeddingOutput:
    """One text's embedding (vLLM's name)."""

    embedding: list[float]


@dataclass
class EmbeddingRequestOutput:
    """What LLM.embed returns per text, shaped like vLLM's."""

    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True


def is_encoder(model: str | os.PathLike) -> bool:
    """True for a known encoder name or a directory whose config.json names an encoder entry of
    medrt's architecture registry (``_core.architectures()``, looked up as the C++ loaders do:
    by model_type, else by architectures[0])."""
    from medrt import _core
    from medrt.models.registry import KNOWN_ENCODERS

    if str(model) in KNOWN_ENCODERS:
        return True
    config = Path(model).expanduser() / "config.json"
    try:
        cfg = json.loads(config.read_text())
        keys = {"model_type": cfg.get("model_type"), "name": (cfg.get("architectures") or [""])[0]}
    except (OSError, ValueError, AttributeError, LookupError):
        return False
    entries = _core.architectures()
    for key, value in keys.items():
        for entry in entries:
            if entry[key] == value:
                return entry["kind"] == "encoder"
    return False


def embed_outputs(embedder: Embedder, texts: Sequence[str] | str,
                  request_ids: Iterator[int]) -> list[EmbeddingRequestOutput]:
    """LLM.embed's result: one EmbeddingRequestOutput per text, in order (request ids drawn
    from `request_ids`)."""
    batch = [texts] if isinstance(texts, str) else list(texts)
    vectors = embedder.embed(batch)
    tokens = embedder.tokenize(batch)
    return [EmbeddingRequestOutput(str(next(request_ids)), t, ids, EmbeddingOutput(v.tolist()))
            for t, ids, v in zip(batch, tokens, vectors)]
