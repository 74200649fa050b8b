"""Stage 2: teacher-to-student distillation.

Token-level KD (CE + KL + hidden-state MSE + entity term) when teacher and student share a
tokenizer. When they do not (a Llama teacher and a Qwen student), the student is trained on
the teacher's own generations (sequence-level KD, Kim & Rush 2016) with the terms that need
aligned teacher logits switched off; the reason is logged and written to OUT/kd_mode.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from accelerate import DistributedType
from accelerate.utils import set_seed

from . import config as cfg
from .curriculum import complexity, curriculum_order
from .entities import EntityLexicon
from .examples import Instruction, encode, load_instructions, prompt_text
from .generate import GenerationSettings, generate
from .lora import apply_lora, lora_config
from .losses import DistillLoss
from .merge import save_trained
from .models import (
    default_dtype,
    load_model,
    load_tokenizer,
    save_hf,
    student_from_teacher,
    tokenizers_match,
)
from .sft import make_accelerator
from .trainer import Objective, add_lora_arguments, add_train_arguments, train

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="teacher: Hugging Face directory or .gguf file")
    p.add_argument("--student", default=None, help="student model directory or .gguf")
    p.add_argument("--student-from-teacher", type=int, default=0, metavar="K",
                   help="instead of --student: initialise it from every K-th teacher layer")
    add_train_arguments(p)
    add_lora_arguments(p, default_mode="lora")
    p.add_argument("--ce", type=float, default=1.0, help="l1, weight of cross-entropy")
    p.add_argument("--kl", type=float, default=1.0, help="l2, weight of KL(teacher||student)")
    p.add_argument("--hidden", type=float, default=0.0, help="l3, weight of hidden-state MSE")
    p.add_argument("--entity", type=float, default=1.0, help="l4, weight of the entity term")
    p.add_argument("--temperature", type=float, default=2.0, help="KL temperature T")
    p.add_argument("--entities", default=None, help="entity lexicon JSON (default: shipped)")
    p.add_argument("--curriculum-stages", type=int, default=3,
                   help="basic-to-complex stages (0: no curriculum, shuffled order)")
    p.add_argument("--gen-max-new-tokens", type=int, default=256,
                   help="teacher generation length for sequence-level KD")
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--seq-kd-source", choices=("generate", "corpus"), default="generate",
                   help="sequence-level KD targets: generate them with the teacher, or use the "
                        "corpus responses as they are (when this teacher wrote the corpus)")
    cfg.add_config_argument(p)


def _sequence_level_data(teacher, t_tok, items: list[Instruction], args: argparse.Namespace,
                         out_dir: Path) -> list[Instruction]:
    """The items with responses replaced by the teacher's generations (cached in OUT, and
    reused only for the same items, teacher and generation settings: another teacher or
    --gen-max-new-tokens must not silently train on the old generations)."""
    cache = out_dir / "teacher_generations.jsonl"
    teacher_path = Path(args.teacher)
    source = {"teacher": str(teacher_path.resolve() if teacher_path.exists() else teacher_path),
              "gen_max_new_tokens": args.gen_max_new_tokens, "seed": args.seed}
    if cache.is_file():
        cached = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        if ([c["id"] for c in cached] == [it.id for it in items]
                and all(c.get("source") == source for c in cached)):
            log.info("sequence-level KD: reusing %s", cache)
            return [Instruction(it.question, c["response"], it.system, it.category, it.id)
                    for it, c in zip(items, cached)]
        log.info("sequence-level KD: %s is from other items, teacher or settings; "
                 "generating again", cache)
    settings = GenerationSettings(max_new_tokens=args.gen_max_new_tokens,
                                  batch_size=args.gen_batch_size, seed=args.seed)
    prompts = [prompt_text(t_tok, it.system, it.question) for it in items]
    responses = generate(teacher, t_tok, prompts, settings, desc="teacher generations")
    with open(cache, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": it.id, "response": r, "source": source}) + "\n"
                     for it, r in zip(items, responses))
    return [Instruction(it.question, r, it.system, it.category, it.id)
            for it, r in zip(items, responses)]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg.resolve(args, required=("teacher", "data", "out"))
    if bool(args.student) == bool(args.student_from_teacher):
        raise SystemExit("give exactly one of --student and --student-from-teacher")
    out_dir = Path(args.out)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    if accelerator.is_main_process:
        cfg.save(args, out_dir)

    t_tok = load_tokenizer(args.teacher)
    s_tok = load_tokenizer(args.student) if args.student else t_tok
    same, why = tokenizers_match(t_tok, s_tok)
    weights = {"ce": args.ce, "kl": args.kl, "hidden": args.hidden, "entity": args.entity}
    mode = "token"
    if not same:
        mode = "sequence"
        off = [k for k in ("kl", "hidden", "entity") if weights[k] > 0]
        weights.update(kl=0.0, hidden=0.0, entity=0.0, ce=args.ce or 1.0)
        log.warning("teacher and student tokenizers differ (%s): sequence-level KD on the "
                    "teacher's generations; switched off: %s", why, ", ".join(off) or "none")
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "kd_mode.json").write_text(json.dumps(
            {"mode": mode, "reason": why, "weights": weights}, indent=1) + "\n")

    items = load_instructions(args.data)
    if args.limit:
        items = items[:args.limit]
    needs_teacher_logits = mode == "token" and any(weights[k] > 0
                                                   for k in ("kl", "hidden", "entity"))
    teacher = None
    generate_targets = mode == "sequence" and args.seq_kd_source == "generate"
    if needs_teacher_logits or generate_targets or args.student_from_teacher:
        teacher = load_model(args.teacher, default_dtype()).eval().requires_grad_(False)

    # Full training keeps f32 master weights; a LoRA base may sit in bf16 on GPUs.
    student_dtype = torch.float32 if args.mode == "full" else default_dtype()
    student_base = args.student
    if args.student_from_teacher:
        student = student_from_teacher(teacher, args.student_from_teacher).to(student_dtype)
        student_base = str(out_dir / "student_init")
        if accelerator.is_main_process:
            save_hf(student, s_tok, student_base)
    else:
        student = load_model(args.student, student_dtype)
    if mode == "sequence" and args.seq_kd_source == "generate":
        teacher.to(accelerator.device)
        items = _sequence_level_data(teacher, t_tok, items, args, out_dir)
    elif mode == "sequence":
        log.info("sequence-level KD on the corpus responses as written by the teacher")
    if not needs_teacher_logits:
        teacher = None  # free it: nothing below needs the teacher any more
    if args.mode == "lora":
        student = apply_lora(student, lora_config(args.lora_r, args.lora_alpha,
                                                  args.lora_dropout, args.targets, args.rslora))

    lexicon = EntityLexicon.from_file(args.entities)
    if args.curriculum_stages > 0:
        order = curriculum_order([complexity(it, lexicon) for it in items],
                                 args.curriculum_stages, args.seed)
    else:
        order = torch.randperm(len(items),
                               generator=torch.Generator().manual_seed(args.seed)).tolist()
    examples = [encode(s_tok, items[i], args.max_len, lexicon) for i in order]

    s_width = student.config.hidden_size
    t_width = teacher.config.hidden_size if teacher is not None else s_width
    loss = DistillLoss(temperature=args.temperature, student_width=s_width,
                       teacher_width=t_width, **weights)
    teacher_fn = None
    if teacher is not None:
        if accelerator.distributed_type == DistributedType.FSDP:
            teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
        else:
            teacher.to(accelerator.device)
        want_hidden = weights["hidden"] > 0

        @torch.no_grad()
        def teacher_fn(batch):
            return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=want_hidden)

    objective = train(accelerator, Objective(student, loss), examples, s_tok.pad_token_id,
                      args, teacher_fn)
    target = save_trained(accelerator, objective, s_tok, out_dir, student_base, args.merge)
    if accelerator.is_main_process:
        print(f"distill ({mode}-level KD): wrote {target}")
    return 0
