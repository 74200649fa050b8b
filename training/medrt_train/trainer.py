"""The training loop shared by SFT and distillation: accelerate, gradient accumulation and
clipping, the cosine-restart schedule, checkpoints and resume, per-term JSONL logging."""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .examples import collate
from .losses import DistillLoss
from .schedule import make_scheduler

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags common to every training stage."""
    p.add_argument("--data", type=Path, help="instruction JSONL (output of `corpus`)")
    p.add_argument("--out", type=Path, help="output directory")
    p.add_argument("--max-len", type=int, default=512, help="tokens per example")
    p.add_argument("--batch-size", type=int, default=4, help="examples per device step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps (0: by epochs)")
    p.add_argument("--lr-max", type=float, default=2e-4, help="peak learning rate")
    p.add_argument("--lr-min", type=float, default=2e-5, help="floor of each cosine cycle")
    p.add_argument("--restarts", type=int, default=0, help="warm restarts of the cosine")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: off)")
    p.add_argument("--resume", default=None,
                   help="checkpoint directory to resume from, or 'latest' under OUT/checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only the first N examples")


def add_lora_arguments(p: argparse.ArgumentParser, default_mode: str) -> None:
    """LoRA/RSLoRA flags."""
    p.add_argument("--mode", choices=("lora", "full"), default=default_mode,
                   help="train LoRA adapters or all weights")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--targets", default="",
                   help="comma list of modules (default: q,k,v,o,gate,up,down projections)")
    p.add_argument("--rslora", action=argparse.BooleanOptionalAction, default=True,
                   help="scale adapters by alpha/sqrt(r) (RSLoRA) instead of alpha/r")
    p.add_argument("--merge", action="store_true",
                   help="also write the adapter merged into the base under OUT/merged")


class Objective(nn.Module):
    """The trained model and the loss (with its projection) as one module, so DDP and FSDP
    synchronise every trained parameter."""

    def __init__(self, model: nn.Module, loss: DistillLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], teacher_out: Any = None
                ) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=self.loss.weights["hidden"] > 0 and
                         teacher_out is not None)
        return self.loss(out, teacher_out, batch)


class StepLog:
    """Per-step JSONL of every loss term, mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "train_log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard not installed: logging to %s only", self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])

    def truncate(self, step: int) -> None:
        """Drops the rows after `step`: a resumed run writes them again, and an earlier run
        in OUT that went past its checkpoint must not leave duplicate steps behind."""
        if not self.enabled or not self.path.is_file():
            return
        rows = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= step]
        if len(kept) != len(rows):
            self.path.write_text("".join(kept), encoding="utf-8")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _find_checkpoint(out_dir: Path, resume: str) -> Path:
    if resume != "latest":
        return Path(resume)
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"),
                   key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        raise SystemExit(f"--resume latest: no checkpoint under {out_dir / 'checkpoints'}")
    return ckpts[-1]


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def train(accelerator: Accelerator, objective: Objective, examples: list[dict[str, Any]],
          pad_id: int, args: argparse.Namespace,
          teacher_fn: Callable[[dict[str, torch.Tensor]], Any] | None = None) -> Objective:
    """Runs the optimizer over `examples` in the given order; returns the prepared objective."""
    out_dir = Path(args.out)
    if not examples:
        raise ValueError(f"{args.data}: no training examples left to train on")
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr_max, weight_decay=0.0)
    loader = DataLoader(examples, batch_size=args.batch_size, shuffle=False,
                        collate_fn=partial(collate, pad_id=pad_id))
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / args.grad_accum))
    total = args.max_steps or steps_per_epoch * args.epochs
    epochs = math.ceil(total / steps_per_epoch)
    # Stepped by hand once per optimizer step: total counts optimizer steps on this process.
    scheduler = make_scheduler(optimizer, total, args.lr_min, args.lr_max, args.restarts,
                               args.warmup_steps)
    accelerator.register_for_checkpointing(scheduler)

    step, start_epoch, skip = 0, 0, 0
    rng_at_checkpoint = None
    if args.resume:
        ckpt = _find_checkpoint(out_dir, args.resume)
        if not ckpt.is_dir():
            raise FileNotFoundError(f"--resume {ckpt}: no such checkpoint directory")
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        step, start_epoch, skip = state["step"], state["epoch"], state["batches_in_epoch"]
        rng_at_checkpoint = _rng_state()
        log.info("resumed from %s at step %d", ckpt, step)

    steplog = StepLog(out_dir, accelerator.is_main_process)
    if args.resume:
        steplog.truncate(step)
    bar = tqdm(total=total, initial=step, disable=not accelerator.is_main_process,
               desc=out_dir.name)
    sums: dict[str, float] = {}
    micro = 0
    for epoch in range(start_epoch, epochs):
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        seen = skip
        skip = 0
        for batch in epoch_loader:
            if rng_at_checkpoint is not None:
                # Starting the data loader draws a seed from torch's generator; the checkpoint
                # was taken after the first run had drawn it, so the draw of the resumed run
                # must not shift LoRA dropout. Put the generator back where it was saved.
                _set_rng_state(rng_at_checkpoint)
                rng_at_checkpoint = None
            seen += 1
            with accelerator.accumulate(objective):
                teacher_out = teacher_fn(batch) if teacher_fn is not None else None
                terms = objective(batch, teacher_out)
                accelerator.backward(terms["total"])
                grad_norm = None
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(objective.parameters(),
                                                            args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            micro += 1
            if not accelerator.sync_gradients:
                continue
            row = {"step": step + 1, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
            row.update({k: v / micro for k, v in sums.items()})
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            scheduler.step()
            step += 1
            sums, micro = {}, 0
            steplog.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['total']:.4f}")
            if args.save_every and step % args.save_every == 0 and step < total:
                ckpt = out_dir / "checkpoints" / f"step-{step}"
                accelerator.save_state(str(ckpt))
                if accelerator.is_main_process:
                    (ckpt / STATE_FILE).write_text(json.dumps(
                        {"step": step, "epoch": epoch, "batches_in_epoch": seen}))
            if step >= total:
                break
        if step >= total:
            break
    bar.close()
    steplog.close()
    accelerator.wait_for_everyone()
    return objective
