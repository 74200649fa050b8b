"""`medrt-train moe`: trains a contrastive LoRA-MoE on category-labelled medical text.

Data: JSONL records with `question` (and optionally `response`) and `category` (the
`medrt.medical` classifier fills it when absent), by default the 300 seed questions; plus
optionally PubMedQA `dev` entries (category from the classifier). Every fifth record is held
out; the run reports held-out routing accuracy (a sequence's expert = argmax of its mean router
probability; right when it is its category's expert), the LM loss, and the process's resident
memory over the steps (flat: the queue is preallocated)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import resource
import time
from pathlib import Path

import torch
from medrt.medical import classify

from ..lora import parse_targets
from .export import save_moe
from .model import MoeConfig, MoeModel

log = logging.getLogger(__name__)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "seed_questions.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model (Hugging Face directory)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL with question/category")
    p.add_argument("--pubmedqa", type=int, default=0,
                   help="also train on the first N PubMedQA dev entries (question + conclusion)")
    p.add_argument("--test", type=int, default=0,
                   help="report perplexity on the first N PubMedQA test entries (question + "
                        "conclusion) before and after training; never trained on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--no-rslora", action="store_true")
    p.add_argument("--targets", default="", help="comma list; default: the 7 projections")
    p.add_argument("--router-dim", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--con-weight", type=float, default=0.1)
    p.add_argument("--bal-weight", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def load_records(path: Path, pubmedqa: int = 0) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                text = rec["question"] + (" " + rec["response"] if rec.get("response") else "")
                records.append({"text": text,
                                "category": rec.get("category") or classify(rec["question"])})
    if pubmedqa:
        from ..data.pubmedqa import load_split

        for q in load_split("dev")[:pubmedqa]:
            records.append({"text": q.question + " " + q.long_answer,
                            "category": classify(q.question)})
    return records


def test_records(n: int) -> list[dict]:
    """The first n PubMedQA `test` entries in the training records' form (question +
    conclusion), for perplexity only."""
    from ..data.pubmedqa import load_split

    return [{"text": q.question + " " + q.long_answer, "category": classify(q.question)}
            for q in load_split("test")[:n]]


def _batch(tokenizer, records: list[dict], config: MoeConfig, max_len: int) -> dict:
    enc = tokenizer([r["text"] for r in records], return_tensors="pt", padding=True,
                    truncation=True, max_length=max_len)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    targets = torch.tensor([config.expert_of(r["category"]) for r in records])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels, "targets": targets}


@torch.no_grad()
def evaluate(model: MoeModel, tokenizer, records: list[dict], max_len: int,
             batch: int = 16) -> dict[str, float]:
    """Held-out routing accuracy over the records with a category, the mean LM loss of the
    batches, and the perplexity: exp of the mean next-token loss over every predicted token
    (the LM loss alone, no router or balance term)."""
    model.eval()
    right = total = 0
    losses = []
    nll = tokens = 0.0
    for i in range(0, len(records), batch):
        b = _batch(tokenizer, records[i:i + batch], model.config, max_len)
        out = model(**b)
        losses.append(float(out.lm_loss))
        n = float((b["labels"][:, 1:] != -100).sum())
        nll += float(out.lm_loss) * n
        tokens += n
        routed = out.seq_probs.argmax(-1)
        keep = b["targets"] >= 0
        right += int((routed[keep] == b["targets"][keep]).sum())
        total += int(keep.sum())
    model.train()
    return {"routing_accuracy": right / max(total, 1), "lm_loss": sum(losses) / len(losses),
            "perplexity": math.exp(nll / max(tokens, 1.0)), "labelled": total}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = MoeConfig(n_experts=args.experts, top_k=args.top_k, r=args.lora_r,
                       alpha=args.lora_alpha, rslora=not args.no_rslora,
                       targets=tuple(parse_targets(args.targets)), router_dim=args.router_dim,
                       temperature=args.temperature, queue_size=args.queue_size,
                       con_weight=args.con_weight, bal_weight=args.bal_weight)
    model = MoeModel(base, config)
    records = load_records(args.data, args.pubmedqa)
    random.Random(args.seed).shuffle(records)
    held_out, train_set = records[::5], [r for i, r in enumerate(records) if i % 5]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr)
    test = test_records(args.test) if args.test else []
    history = [{"step": 0, **evaluate(model, tokenizer, held_out, args.max_len)}]
    if test:
        history[0]["test_perplexity"] = evaluate(model, tokenizer, test, args.max_len)["perplexity"]
    log.info("before training: %s", history[0])
    rng = random.Random(args.seed + 1)
    start = time.time()
    for step in range(1, args.steps + 1):
        b = _batch(tokenizer, rng.sample(train_set, min(args.batch, len(train_set))), config,
                   args.max_len)
        out = model(**b, update_queue=True)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            row = {"step": step, "loss": out.loss.item(), "lm": out.lm_loss.item(),
                   "con": out.con_loss.item(), "bal": out.bal_loss.item(),
                   "max_rss_mib": round(_rss_mib(), 1), "seconds": round(time.time() - start, 1)}
            log.info("%s", row)
            history.append(row)
    final = {"step": args.steps, **evaluate(model, tokenizer, held_out, args.max_len),
             "trainable_parameters": sum(p.numel() for p in model.trainable_parameters())}
    if test:
        final["test_perplexity"] = evaluate(model, tokenizer, test, args.max_len)["perplexity"]
    history.append(final)
    log.info("after training: %s", final)
    save_moe(model, args.out, str(args.model))
    tokenizer.save_pretrained(args.out)
    (args.out / "train_log.json").write_text(json.dumps(history, indent=2))
    print(json.dumps(final))
    return 0
