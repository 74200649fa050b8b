"""A LoRA-perturbed copy of a model: W + B A merged into every decoder linear layer.

SmolLM2's packaged weights were rounded to a 4-bit grid (GGUF Q4_1, blocks of 32), so int4
g32 looks lossless on them. A merged LoRA adapter moves the weights off that grid, as a real
fine-tune does; this makes such a model without training, for quantization comparisons:
B [out, r] and A [r, in] are Gaussian, scaled so that ||B A||_F = rel_norm * ||W||_F.

    python -m medrt_train.quant.perturb SRC OUT --rank 16 --rel-norm 0.05 --seed 0
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from medrt_train.quant.format import TensorIndex
from medrt_train.quant.writer import ShardWriter, copy_side_files

_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def perturb(src: Path, out: Path, rank: int = 16, rel_norm: float = 0.05, seed: int = 0
            ) -> int:
    """Write the perturbed copy; returns the number of matrices perturbed."""
    index = TensorIndex(src)
    gen = torch.Generator().manual_seed(seed)
    writer = ShardWriter(out)
    count = 0
    for name in index.names():
        t = torch.from_numpy(index.numpy(name))
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in _LINEARS:
            b = torch.randn(t.shape[0], rank, generator=gen)
            a = torch.randn(rank, t.shape[1], generator=gen)
            delta = b @ a
            t = t.float() + delta * (rel_norm * t.float().norm() / delta.norm())
            count += 1
        writer.add(name, t)
    writer.close()
    copy_side_files(src, out)
    shutil.copy2(Path(src) / "config.json", Path(out) / "config.json")
    (Path(out) / "perturbation.json").write_text(json.dumps(
        {"source": str(src), "rank": rank, "rel_norm": rel_norm, "seed": seed,
         "matrices": count}, indent=2) + "\n")
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rel-norm", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = perturb(args.src, args.out, args.rank, args.rel_norm, args.seed)
    print(f"perturbed {n} matrices -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
