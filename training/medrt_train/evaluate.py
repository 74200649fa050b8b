"""`medrt-train eval`: what quantization cost. Perplexity and mean per-token KL divergence to
the unquantized model on PubMedQA `test` text, PubMedQA `test` accuracy scored as
lm-evaluation-harness does (log-likelihood of " yes", " no", " maybe" after its prompt), and
weight bytes by type. Several models are scored in one pass so the reference runs once.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from medrt_train.data.pubmedqa import ANSWERS, Question, load_split


@torch.no_grad()
def score_texts(models: dict, reference, tokenizer, texts: list[str], max_len: int = 512,
                log=None) -> dict[str, dict]:
    """Per model: perplexity, mean per-token KL(reference || model) in nats, token count.

    Each text is scored alone, truncated to `max_len` tokens; every token after the first is
    predicted. `reference` may be None (then no KL). `log` (a callable) hears progress.
    """
    if not texts:
        raise ValueError("no texts to score")
    sums = {name: {"nll": 0.0, "kl": 0.0} for name in models}
    ref_nll, count = 0.0, 0
    progress = _Progress("texts", len(texts), log)
    for text in texts:
        progress.step()
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_len]
        if ids.shape[1] < 2:
            continue
        target = ids[0, 1:]
        ref_logp = None
        if reference is not None:
            ref_logp = torch.log_softmax(reference(ids).logits[0, :-1].float(), dim=-1)
            ref_nll -= ref_logp.gather(1, target[:, None]).sum().item()
        for name, model in models.items():
            logp = ref_logp if model is reference else \
                torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            sums[name]["nll"] -= logp.gather(1, target[:, None]).sum().item()
            if ref_logp is not None:
                sums[name]["kl"] += (ref_logp.exp() * (ref_logp - logp)).sum().item()
        count += target.numel()
    progress.done()
    out = {}
    for name, s in sums.items():
        out[name] = {"perplexity": math.exp(s["nll"] / count), "tokens": count}
        if reference is not None:
            out[name]["kl_mean"] = s["kl"] / count
            out[name]["reference_perplexity"] = math.exp(ref_nll / count)
    return out


class _Progress:
    """A line every 10% of a long scoring loop, so an hour-long eval on a CPU is not silent."""

    def __init__(self, what: str, total: int, log):
        self.what, self.total, self.log = what, total, log
        self.done_count, self.start = 0, time.monotonic()

    def step(self) -> None:
        if self.log and self.done_count and self.done_count % max(self.total // 10, 1) == 0:
            self._report()
        self.done_count += 1

    def done(self) -> None:
        if self.log:
            self._report()

    def _report(self) -> None:
        elapsed = time.monotonic() - self.start
        self.log(f"{self.what}: {self.done_count}/{self.total} scored, {elapsed:.0f} s")


def perplexity_and_kl(model, reference, tokenizer, texts: list[str], max_len: int = 512
                      ) -> dict:
    """Perplexity of `model` on `texts` and its mean per-token KL divergence (nats) from
    `reference` (None: perplexity only): keys perplexity, kl_mean, reference_perplexity,
    tokens."""
    return score_texts({"model": model}, reference, tokenizer, texts, max_len)["model"]


def _choice_tokens(tokenizer, prompt: str) -> tuple[list[int], list[list[int]]]:
    # As lm-evaluation-harness: encode context+continuation whole and split off the context,
    # so a tokenizer that merges across the boundary is scored the same way.
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    conts = []
    for answer in ANSWERS:
        whole = tokenizer(f"{prompt} {answer}", add_special_tokens=False)["input_ids"]
        conts.append(whole[len(ctx):])
    return ctx, conts


def _pick(model, ctx: list[int], conts: list[list[int]]) -> str:
    """The answer whose continuation has the highest log-likelihood after `ctx`."""
    if all(len(c) == 1 for c in conts):
        logits = model(torch.tensor([ctx]), logits_to_keep=1).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        scores = [logp[c[0]].item() for c in conts]
    else:
        scores = []
        for c in conts:
            ids = torch.tensor([ctx + c])
            lp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1:-1].float(), -1)
            scores.append(lp.gather(1, torch.tensor(c)[:, None]).sum().item())
    return ANSWERS[max(range(len(ANSWERS)), key=scores.__getitem__)]


@torch.no_grad()
def pubmedqa_accuracy(models: dict, tokenizer, questions: list[Question], log=None,
                      reference=None) -> dict[str, dict]:
    """Per model: accuracy and answer counts, picking the answer of highest log-likelihood;
    with a `reference` model also `agreement`, the share of questions where the model picks
    what the reference picks (paired, so far less noisy than two accuracies side by side)."""
    results = {name: {"correct": 0, "agree": 0, "predicted": dict.fromkeys(ANSWERS, 0)}
               for name in models}
    progress = _Progress("questions", len(questions), log)
    for q in questions:
        progress.step()
        ctx, conts = _choice_tokens(tokenizer, q.prompt())
        ref_pick = _pick(reference, ctx, conts) if reference is not None else None
        for name, model in models.items():
            pick = ref_pick if model is reference else _pick(model, ctx, conts)
            results[name]["predicted"][pick] += 1
            results[name]["correct"] += int(pick == q.answer)
            results[name]["agree"] += int(pick == ref_pick)
    progress.done()
    for r in results.values():
        r["accuracy"] = r["correct"] / max(len(questions), 1)
        r["questions"] = len(questions)
        agree = r.pop("agree")
        if reference is not None:
            r["agreement"] = agree / max(len(questions), 1)
    return results


def load_model(model_dir: Path, engine: str = "transformers",
               activation_precision: str = "int8", kv_cache_dtype: str = "f32"):
    """A model to score: through transformers (a plain Hugging Face directory, or a medrt
    quantized one dequantized to f32), or through medrt's own decoder (engine="medrt": every
    weight type at its own precision, as the runtime serves it, its quantized kernels reading
    activations at `activation_precision`, its KV cache holding `kv_cache_dtype`)."""
    if engine == "medrt":
        from medrt_train.engine_model import MedrtCausalLM

        return MedrtCausalLM(model_dir, activation_precision=activation_precision,
                             kv_cache_dtype=kv_cache_dtype)
    from transformers import AutoModelForCausalLM

    from medrt_train.quant.loader import is_quantized_dir, load_dequantized

    if is_quantized_dir(model_dir):
        return load_dequantized(model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def check_model_dir(model_dir: Path) -> None:
    """A scorable model directory, or an error naming it (before any scoring is spent)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if not (model_dir / "config.json").is_file():
        hint = " (a LoRA adapter: merge it into its base first, medrt-train merge)" \
            if (model_dir / "adapter_config.json").is_file() else ""
        raise ValueError(f"{model_dir}: not a model directory, it has no config.json{hint}")


def describe_dir(model_dir: Path) -> dict:
    """Recipe, method and weight bytes (linear layers, whole model, by type, cuts vs f16)."""
    from medrt_train.quant.sizes import dir_bytes, summarize

    config = json.loads((Path(model_dir) / "config.json").read_text())
    section = config.get("quantization") or {}
    method = section.get("method", {}).get("name", "-") if section else "-"
    return {"recipe": section.get("recipe", "unquantized"), "method": method,
            **summarize(dir_bytes(model_dir))}


def evaluate(models: dict[str, Path], reference: Path | None, data: Path, texts: int,
             questions: int, max_len: int, split: str = "test", log=None,
             engine: str = "transformers", activation_precision: str = "int8",
             kv_cache_dtype: str = "f32") -> list[dict]:
    """One row per model, with every figure of the table, on PubMedQA `split`; every model
    (the reference too) is scored through `engine` ("transformers" or "medrt")."""
    from transformers import AutoTokenizer

    # Every directory is checked and described first: a bad one found after an hour of
    # scoring would lose the figures of all the others.
    for path in [*models.values(), *([reference] if reference is not None else [])]:
        check_model_dir(path)
    entries = load_split(split, data)
    described = {name: describe_dir(path) for name, path in models.items()}
    tokenizer = AutoTokenizer.from_pretrained(reference or next(iter(models.values())))
    def load(path: Path):
        return load_model(path, engine, activation_precision, kv_cache_dtype)

    ref_model = load(reference) if reference is not None else None
    # The reference listed as a row too (for its accuracy) is the same object, scored once.
    loaded = {name: ref_model if reference is not None and Path(path).resolve() ==
              Path(reference).resolve() else load(path)
              for name, path in models.items()}
    ppl = score_texts(loaded, ref_model, tokenizer, [q.text() for q in entries[:texts]], max_len,
                      log) \
        if texts else {name: {} for name in models}
    acc = pubmedqa_accuracy(loaded, tokenizer, entries[:questions], log, ref_model) \
        if questions else {}
    rows = []
    for name, path in models.items():
        row = {"model": name, "path": str(path), "split": split, "engine": engine,
               **({"activation_precision": activation_precision,
                   "kv_cache_dtype": kv_cache_dtype} if engine == "medrt" else {}),
               **described[name],
               **ppl[name]}
        if name in acc:
            row.update(pubmedqa_accuracy=acc[name]["accuracy"],
                       pubmedqa_questions=acc[name]["questions"],
                       pubmedqa_predicted=acc[name]["predicted"])
            if "agreement" in acc[name]:
                row["pubmedqa_agreement"] = acc[name]["agreement"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The evaluation rows as a Markdown table."""
    head = ("| model | recipe | method | perplexity | Δppl | KL nats/token | PubMedQA acc | "
            "same answer as reference | linear MiB | model MiB | cut linear | cut model | "
            "bytes by type |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ref = r.get("reference_perplexity")
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else "-"
        dppl = f"{100 * (r['perplexity'] / ref - 1):+.2f}%" if ref else "-"
        kl = f"{r['kl_mean']:.4f}" if "kl_mean" in r else "-"
        acc = f"{100 * r['pubmedqa_accuracy']:.1f}%" if "pubmedqa_accuracy" in r else "-"
        agree = f"{100 * r['pubmedqa_agreement']:.1f}%" if "pubmedqa_agreement" in r else "-"
        types = ", ".join(f"{t} {b / 2**20:.1f}M" for t, b in sorted(r["bytes_by_type"].items()))
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['method']} | {ppl} | {dppl} | "
            f"{kl} | {acc} | {agree} | {r['linear_bytes'] / 2**20:.1f} | "
            f"{r['total_bytes'] / 2**20:.1f} | "
            f"{100 * r['linear_cut']:.1f}% | {100 * r['total_cut']:.1f}% | {types} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+",
                   help="model directories (Hugging Face or medrt quantized), as PATH or NAME=PATH")
    p.add_argument("--reference", type=Path, help="unquantized model for KL and Δppl")
    p.add_argument("--data", type=Path, default=None,
                   help="PubMedQA ori_pqal.json (default: $MEDRT_DATA, else shared/data beside "
                        "the working directory or the package)")
    p.add_argument("--texts", type=int, default=200,
                   help="PubMedQA test entries scored for perplexity/KL (of 200; 0: skip)")
    p.add_argument("--questions", type=int, default=200,
                   help="PubMedQA test questions scored for accuracy (of 200; 0: skip)")
    p.add_argument("--max-len", type=int, default=512, help="tokens per perplexity text")
    p.add_argument("--split", choices=("test", "dev-held-out"), default="test",
                   help="test for reported figures; dev-held-out (the 200 dev entries "
                        "calibration never reads) for choosing methods and settings")
    p.add_argument("--engine", choices=("transformers", "medrt"), default="transformers",
                   help="score through transformers (quantized weights dequantized to f32) or "
                        "through medrt's C++ decoder (the runtime's own kernels)")
    p.add_argument("--activation-precision", choices=("int8", "int8x2"), default="int8",
                   help="--engine medrt: how its quantized kernels read activations (int8 as "
                        "served by default; int8x2 about 15 bits)")
    p.add_argument("--kv-cache-dtype", choices=("f32", "f16"), default="f32",
                   help="--engine medrt: the element type of its KV cache")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")


def run(args: argparse.Namespace) -> int:
    models = {}
    for spec in args.models:
        name, sep, path = spec.partition("=")
        models[name if sep else Path(spec).name] = Path(path if sep else spec)
    try:
        rows = evaluate(models, args.reference, args.data, args.texts, args.questions,
                        args.max_len, args.split,
                        log=lambda line: print(f"medrt-train eval: {line}", file=sys.stderr,
                                               flush=True), engine=args.engine,
                        activation_precision=args.activation_precision,
                        kv_cache_dtype=args.kv_cache_dtype)
    except (ValueError, OSError) as exc:
        print(f"medrt-train eval: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
