"""Small medrt-quant directories for the format tests (tests/quant/test_format_v*.py): the
tiny tied Llama they quantize, and an in-place edit of a directory's quantization section."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path


def tiny_tied_llama(path: Path) -> Path:
    """A 1-layer Llama (hidden 64, vocab 128, tied embeddings) saved at `path`, seeded."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def edit_quant_section(model_dir: Path, edit: Callable[[dict], None]) -> None:
    """Apply `edit` to the `quantization` section of model_dir/config.json, in place."""
    config = json.loads((model_dir / "config.json").read_text())
    edit(config["quantization"])
    (model_dir / "config.json").write_text(json.dumps(config))


def edited_copy(model_dir: Path, out: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of model_dir at `out` whose quantization section `edit` has changed."""
    shutil.copytree(model_dir, out)
    edit_quant_section(out, edit)
    return out
