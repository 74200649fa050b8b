"""Writes a medrt quantized model directory: safetensors shards, index, config, tokenizer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from medrt_train.quant.format import FORMAT_NAME, format_version, module_type

INDEX = "model.safetensors.index.json"
# Files of a Hugging Face directory that are weights or config, i.e. not copied verbatim.
_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


class ShardWriter:
    """Collects tensors and writes them in shards of at most `shard_bytes`, so that memory
    holds one shard, not the model."""

    def __init__(self, out_dir: Path, shard_bytes: int = 512 << 20) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"output {self.out_dir}: exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: np.ndarray | torch.Tensor) -> None:
        t = torch.from_numpy(np.ascontiguousarray(tensor)) if isinstance(tensor, np.ndarray) \
            else tensor.detach().contiguous()
        nbytes = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + nbytes > self.shard_bytes:
            self._flush()
        self._pending[name] = t
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        save_file(self._pending, self.out_dir / f"shard-{len(self._shards):05d}.tmp",
                  metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        """Write the last shard and name the files as Hugging Face does."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            (self.out_dir / "shard-00000.tmp").rename(self.out_dir / "model.safetensors")
            self._remove_stale({"model.safetensors"})
            return
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out_dir / f"shard-{i:05d}.tmp").rename(self.out_dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2))
        self._remove_stale({*weight_map.values(), INDEX})

    def _remove_stale(self, written: set[str]) -> None:
        """Deletes the weight files of an earlier save that this one did not write: a
        leftover index would win over the new model.safetensors (readers look for the index
        first), and leftover shards would be tensors no config describes."""
        for path in self.out_dir.iterdir():
            stale = path.name.endswith(".safetensors") or path.name == INDEX
            if stale and path.name not in written and path.is_file():
                path.unlink()


def copy_side_files(src: Path, out: Path) -> None:
    """Copy tokenizer and generation files (everything that is not weights or config.json)."""
    for path in Path(src).iterdir():
        if path.is_file() and path.name != "config.json" and not path.name.endswith(_NOT_COPIED):
            shutil.copy2(path, Path(out) / path.name)


def write_config(src_config: dict, out: Path, section: dict, tied: bool) -> None:
    """config.json of the source model plus medrt's `quantization` section."""
    config = {k: v for k, v in src_config.items() if k != "quantization_config"}
    config["tie_word_embeddings"] = tied
    # The lowest version that holds these types, so that older readers still read the file.
    version = format_version(module_type(e, m) for m, e in section["modules"].items())
    config["quantization"] = {"format": FORMAT_NAME, "version": version, **section}
    (Path(out) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
