"""Loading teachers and students: Hugging Face directories or GGUF files, any causal LM."""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)


def default_dtype() -> torch.dtype:
    """bf16 on GPUs, f32 on the CPU (bf16 matmuls on CPUs are slow and imprecise)."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


# "name" or "org/name" as the Hugging Face Hub spells repository ids.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_model_path(path: str | Path, need: tuple[str, ...] = ("config.json",)) -> None:
    """Refuses a model that is neither on disk nor a Hub id with a message that names it;
    transformers would answer a missing local folder with a puzzling 'Repo id' error, and an
    empty one with a tokenizer error. A local directory must hold one of the files `need`."""
    p = Path(path)
    if p.exists():
        if p.is_file() and p.suffix != ".gguf":
            raise ValueError(f"model {path}: a file, not a model directory or .gguf file")
        if p.is_dir() and not any((p / name).is_file() for name in need):
            hint = " (a LoRA adapter: merge it first, medrt-train merge)" \
                if (p / "adapter_config.json").is_file() else ""
            raise ValueError(f"model {path}: not a Hugging Face model directory, it has no "
                             f"{' or '.join(need)}{hint}")
        return
    if p.suffix == ".gguf" or not _HUB_ID.fullmatch(str(path)) or str(path).startswith("."):
        raise FileNotFoundError(f"model {path}: no such directory or file (and not a "
                                f"Hugging Face Hub id such as org/name)")


def _split_gguf(path: str | Path) -> tuple[str, str | None]:
    p = Path(path)
    if p.suffix == ".gguf":
        return str(p.parent), p.name
    return str(p), None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory or GGUF file, with a pad token set."""
    # An adapter directory carries a tokenizer and no config.json.
    check_model_path(path, need=("config.json", "tokenizer_config.json", "tokenizer.json"))
    directory, gguf_file = _split_gguf(path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: torch.dtype | None = None,
               load_in_4bit: bool = False, device_map: str | None = None) -> PreTrainedModel:
    """A causal LM from a directory or a .gguf file (dequantized), in `dtype`.

    `load_in_4bit` is the QLoRA path: the base weights in NF4 through bitsandbytes, on a GPU.
    `device_map="auto"` spreads a model too large for one GPU over all of them (generation).
    """
    check_model_path(path)
    directory, gguf_file = _split_gguf(path)
    dtype = dtype or default_dtype()
    kwargs: dict = {"dtype": dtype}
    if device_map:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        if not torch.cuda.is_available():
            raise RuntimeError("QLoRA (--qlora) needs a CUDA GPU: bitsandbytes NF4 has no CPU path")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, **kwargs)
    if gguf_file is not None:
        # The GGUF tensors are dequantized on load; dropping the quantizer marker makes the
        # model an ordinary one that can be trained and saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def save_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            out_dir: str | Path) -> None:
    """Saves a model and its tokenizer as a Hugging Face directory (safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def tokenizers_match(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> tuple[bool, str]:
    """Whether token-level KD is possible: the same vocabulary and end-of-sequence token."""
    if a.get_vocab() != b.get_vocab():
        return False, (f"the vocabularies differ ({len(a)} vs {len(b)} tokens, "
                       f"{type(a).__name__} vs {type(b).__name__})")
    if a.eos_token != b.eos_token:
        return False, f"the end-of-sequence tokens differ ({a.eos_token!r} vs {b.eos_token!r})"
    return True, "same vocabulary"


def student_from_teacher(teacher: PreTrainedModel, keep_every: int = 2) -> PreTrainedModel:
    """A shallower student initialised from every `keep_every`-th teacher layer (0, k, 2k...).

    Embeddings, final norm and head are copied; the layer indices in the attention modules are
    renumbered so KV caching keeps working.
    """
    if keep_every < 1:
        raise ValueError("keep_every must be at least 1")
    student = copy.deepcopy(teacher)
    layers = student.model.layers
    kept = [layers[i] for i in range(0, len(layers), keep_every)]
    for new_idx, layer in enumerate(kept):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_idx
    student.model.layers = torch.nn.ModuleList(kept)
    student.requires_grad_(True)  # the teacher may have been frozen before the copy
    student.config.num_hidden_layers = len(kept)
    if getattr(student.config, "layer_types", None) is not None:
        student.config.layer_types = [student.config.layer_types[i]
                                      for i in range(0, len(layers), keep_every)]
    log.info("student: %d of %d teacher layers", len(kept), len(layers))
    return student
