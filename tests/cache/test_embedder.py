"""medrt.Embedder (the BERT encoder in medrt's C++ engine) against sentence-transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import medrt
import numpy as np
import pytest
from conftest import pubmedqa_sentences
from medrt.errors import InvalidCheckpoint, InvalidRequest


@pytest.fixture(scope="module")
def reference(encoder_dir: Path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    torch.set_num_threads(2)
    return st.SentenceTransformer(str(encoder_dir), device="cpu")


@pytest.fixture(scope="module")
def pubmedqa_reference(reference) -> tuple[list[str], np.ndarray]:
    texts = pubmedqa_sentences(200)
    return texts, reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def assert_parity(got: np.ndarray, texts: list[str], want: np.ndarray) -> None:
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, (cos.min(), texts[int(cos.argmin())])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers_on_pubmedqa(embedder, pubmedqa_reference) -> None:
    # The default: float16 weights for this float32 checkpoint (dtype="auto").
    assert embedder.dtype == "float16"
    texts, want = pubmedqa_reference
    # Mixed lengths in one batch: rows are packed, so each must come out as if alone.
    assert_parity(embedder.embed(texts), texts, want)


def test_float32_weights_match_too(encoder_dir: Path, embedder, pubmedqa_reference) -> None:
    f32 = medrt.Embedder(encoder_dir, num_threads=2, dtype="float32")
    assert f32.dtype == "float32" and f32.fingerprint != embedder.fingerprint
    texts, want = pubmedqa_reference
    got = f32.embed(texts)
    assert_parity(got, texts, want)
    # float16 weights are not float32 ones: the two differ, by less than the parity bound.
    half = embedder.embed(texts)
    assert not np.array_equal(got, half)
    assert float((got * half).sum(1).min()) >= 0.99999


def test_bad_dtype_is_named(encoder_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="dtype 'int8'"):
        medrt.Embedder(encoder_dir, dtype="int8")


def test_row_does_not_depend_on_batch(embedder) -> None:
    texts = ["What is the maximum dose of paracetamol for a child of 20 kg?",
             "Hi", "Is aspirin safe in pregnancy? " * 30]
    together = embedder.embed(texts)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(embedder.embed([t])[0], together[i])


def test_long_text_is_truncated_like_sentence_transformers(embedder, reference) -> None:
    text = "Metformin lowers hepatic glucose output. " * 200  # far past 256 tokens
    assert len(embedder.tokenize([text])[0]) == 256
    got = embedder.embed([text])[0]
    want = reference.encode([text], normalize_embeddings=True)[0]
    assert float(got @ want) >= 0.99999


def test_empty_batch_and_bad_input(embedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(InvalidRequest, match="not one string"):
        embedder.embed("one string")
    with pytest.raises(InvalidRequest, match="text 1 is int"):
        embedder.embed(["ok", 3])


def test_refuses_a_decoder_directory(tiny_llama: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match=r"config\.json: model_type 'llama'.*not a BERT"):
        medrt.Embedder(tiny_llama)


def test_names_missing_and_malformed_files(encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match="neither an encoder directory"):
        medrt.Embedder(tmp_path / "nowhere")
    bad = tmp_path / "bert"
    shutil.copytree(encoder_dir, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(InvalidCheckpoint, match=r"model\.safetensors: missing"):
        medrt.Embedder(bad)
    shutil.copy(encoder_dir / "model.safetensors", bad / "model.safetensors")
    config = json.loads((bad / "config.json").read_text())
    config["hidden_size"] = 768
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpoint, match="word_embeddings.weight' has shape"):
        medrt.Embedder(bad)
    with open(bad / "model.safetensors", "r+b") as f:  # truncated weights
        f.truncate(1000)
    config["hidden_size"] = 384
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpoint, match=r"model\.safetensors"):
        medrt.Embedder(bad)


def test_llm_embed_with_an_encoder_model(encoder_dir: Path, embedder, tiny_llama: Path) -> None:
    texts = ["How is gout treated?", "What is the normal blood pressure for an adult?"]
    with medrt.LLM(encoder_dir, num_threads=2) as llm:
        outs = llm.embed(texts)
        assert [o.prompt for o in outs] == texts and all(o.finished for o in outs)
        np.testing.assert_array_equal(np.array([o.outputs.embedding for o in outs],
                                               dtype=np.float32), embedder.embed(texts))
        assert outs[0].prompt_token_ids[0] == 101  # [CLS]
        assert len(llm.embed("one text")) == 1
        with pytest.raises(InvalidRequest, match="encoder.*use embed"):
            llm.generate("hello")
    with medrt.LLM(encoder_dir, num_threads=2, dtype="float32") as llm:
        f32 = medrt.Embedder(encoder_dir, num_threads=2, dtype="float32")
        np.testing.assert_array_equal(np.array(llm.embed(texts)[0].outputs.embedding,
                                               dtype=np.float32), f32.embed(texts)[0])
    with medrt.LLM(tiny_llama, num_threads=1) as llm, \
            pytest.raises(InvalidRequest, match="decoder; embed"):
        llm.embed(["x"])
