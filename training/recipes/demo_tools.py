"""Helpers of the CPU demonstration (cpu_demo.sh): GGUF -> HF conversion, the held-out split,
and the perplexity / KL table. Run by hand, not in CI."""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
from medrt_train.examples import collate, encode, load_instructions
from medrt_train.losses import ce_loss, kl_loss
from medrt_train.models import load_model, load_tokenizer, save_hf, student_from_teacher


def convert(args: argparse.Namespace) -> None:
    """Dequantizes the SmolLM2 GGUF into a Hugging Face directory (once)."""
    if (Path(args.out) / "model.safetensors").is_file():
        return
    save_hf(load_model(args.gguf, torch.float32), load_tokenizer(args.gguf), args.out)


def split(args: argparse.Namespace) -> None:
    """A fixed held-out split of the corpus by a seeded shuffle."""
    lines = [line for line in Path(args.corpus).read_text().splitlines() if line.strip()]
    idx = list(range(len(lines)))
    random.Random(args.seed).shuffle(idx)
    held = set(idx[:args.held_out])
    out = Path(args.out_dir)
    # Training lines in the shuffled order, so --limit takes a mix of categories.
    (out / "train.jsonl").write_text("".join(lines[i] + "\n" for i in idx[args.held_out:]))
    (out / "heldout.jsonl").write_text("".join(lines[i] + "\n" for i in sorted(held)))


@torch.no_grad()
def metrics(model, teacher, batches) -> tuple[float, float]:
    """Perplexity on the held-out responses and mean KL(teacher || model) per response token."""
    nll = kl = 0.0
    tokens = 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        nll += float(ce_loss(logits, batch["labels"])) * n
        kl += float(kl_loss(logits, t_logits, batch["labels"], 1.0)) * n
        tokens += n
    return math.exp(nll / tokens), kl / tokens


def report(args: argparse.Namespace) -> None:
    """The table of docs/training.md: teacher, student before, after KD, after CE only."""
    work = Path(args.work)
    tok = load_tokenizer(work / "sft" / "merged")
    items = load_instructions(work / "heldout.jsonl")
    enc = [encode(tok, it, args.max_len) for it in items]
    batches = [collate(enc[i:i + 8], tok.pad_token_id) for i in range(0, len(enc), 8)]
    teacher = load_model(work / "sft" / "merged", torch.float32).eval()
    base = load_model(work / "smollm2", torch.float32).eval()
    rows = [("teacher, base SmolLM2-135M-Instruct (30 layers)", base),
            ("teacher after LoRA SFT (the reference)", teacher),
            ("student before: every other teacher layer (15 layers)",
             student_from_teacher(teacher, 2).eval()),
            ("student after distillation (CE + KL + hidden + entity)",
             load_model(work / "kd" / "model", torch.float32).eval()),
            ("student after CE only (ablation)", load_model(work / "ce" / "model",
                                                            torch.float32).eval())]
    n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    lines = [f"Held-out split: {len(items)} corpus records, {n_tokens} response tokens.", "",
             "| model | perplexity | mean KL to teacher (nats/token) |", "|---|---|---|"]
    for name, model in rows:
        ppl, kl = metrics(model, teacher, batches)
        lines.append(f"| {name} | {ppl:.2f} | {kl:.4f} |")
    text = "\n".join(lines) + "\n"
    (work / "table.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--gguf", required=True)
    c.add_argument("--out", required=True)
    s = sub.add_parser("split")
    s.add_argument("--corpus", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--held-out", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--max-len", type=int, default=192)
    args = p.parse_args(argv)
    t0 = time.time()
    {"convert": convert, "split": split, "report": report}[args.cmd](args)
    print(f"[{args.cmd}] {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
