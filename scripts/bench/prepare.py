"""The benchmark models, built once into a work directory and reused by later runs.

- SmolLM2-135M-Instruct: the Q4_1 GGUF that `medrt pull` fetches, imported to an f16 Hugging
  Face directory with medrt's own importer. Every engine reads these same f16 values.
- Random-weight DeepSeek-R1-Distill-Qwen-1.5B shapes: transformers' Qwen2ForCausalLM with
  its default random init, saved in f16. It borrows SmolLM2's tokenizer files only so that
  llama.cpp's converter accepts the directory; the benchmarks feed token ids.
- llama.cpp reads each directory converted to an F16 GGUF by llama.cpp's convert_hf_to_gguf.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SMOL = "smollm2-135m-f16"
QWEN = "qwen2-1.5b-shape-random-f16"

# DeepSeek-R1-Distill-Qwen-1.5B's shapes (its config.json), weights random.
QWEN_SHAPES = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 131072,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def smollm2(work: Path) -> Path:
    """The f16 SmolLM2 directory (imported from the GGUF `medrt pull` uses)."""
    out = work / SMOL
    if (out / "config.json").exists():
        return out
    from medrt.models.gguf_import import import_gguf
    from medrt.models.pull import fetch_gguf

    gguf_path = fetch_gguf("smollm2-135m-instruct", progress=False)
    _log(f"importing {gguf_path} -> {out} (f16)")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    import_gguf(gguf_path, tmp, dtype="f16")
    tmp.rename(out)
    return out


def qwen_random(work: Path, tokenizer_dir: Path) -> Path:
    """A Qwen2 model with DeepSeek-R1-Distill-Qwen-1.5B's shapes and seeded random weights."""
    out = work / QWEN
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _log(f"building random {QWEN} -> {out}")
    torch.manual_seed(0)
    # Token ids 1 and 2 exist in the borrowed tokenizer; Qwen's own ids would not.
    config = Qwen2Config(**QWEN_SHAPES, bos_token_id=1, eos_token_id=2)
    model = Qwen2ForCausalLM(config).to(torch.float16)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    del model
    for name in _TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, tmp / name)
    tmp.rename(out)
    return out


def _converter_view(hf_dir: Path, work: Path) -> Path:
    """A directory of links to hf_dir whose config.json has no model_type.

    llama.cpp's converter identifies a BPE tokenizer by hashing what AutoTokenizer makes of a
    test text. With model_type "qwen2", transformers 5 builds the borrowed SmolLM2 tokenizer as
    a Qwen2Tokenizer with Qwen's pre-tokenizer, whose hash the converter does not know; without
    it, the tokenizer is loaded as written in tokenizer_config.json and recognised. The
    converter picks the architecture from "architectures", so nothing else changes.
    """
    view = work / "convert-view" / hf_dir.name
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for f in hf_dir.iterdir():
        if f.name != "config.json":
            (view / f.name).symlink_to(f.resolve())
    config = json.loads((hf_dir / "config.json").read_text())
    config.pop("model_type", None)
    (view / "config.json").write_text(json.dumps(config, indent=2))
    return view


def to_gguf(hf_dir: Path, work: Path, llama_src: Path) -> Path:
    """hf_dir converted to an F16 GGUF with llama.cpp's own converter."""
    out = work / "gguf" / f"{hf_dir.name}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _log(f"converting {hf_dir} -> {out} with convert_hf_to_gguf.py")
    src = hf_dir if hf_dir.name == SMOL else _converter_view(hf_dir, work)
    tmp = out.with_suffix(".tmp")
    subprocess.run(
        [
            sys.executable,
            str(llama_src / "convert_hf_to_gguf.py"),
            str(src),
            "--outtype",
            "f16",
            "--outfile",
            str(tmp),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp.rename(out)
    return out


def weight_bytes(hf_dir: Path) -> int:
    """Bytes of the tensors in the directory's safetensors files (headers excluded)."""
    total = 0
    for path in sorted(hf_dir.glob("*.safetensors")):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        total += sum(
            v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items()
            if k != "__metadata__"
        )
    return total
