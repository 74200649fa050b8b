"""Generative scoring: the model answers in its own words and the answer is read from the text.

The prompt is the serving path's: the medical system message (P_base + S_category of the
question's category, medrt.medical) and the question as the user message, rendered with the
model's chat template (a model without one gets medrt.medical.build_prompt as plain text). The
user message is the question, its options as ``"A. text"`` lines (PubMedQA: the abstract first),
then one instruction line naming the allowed answers.

Reasoning models: text up to the last ``</think>`` is reasoning and is not searched. A model
that is still thinking after ``reasoning_budget`` tokens is stopped there; ``</think>`` is
appended and it gets ``answer_tokens`` more tokens to answer (budget forcing).

Answer extraction (first rule that matches wins; otherwise the answer is unparseable, counted
and scored wrong):
1. an explicit statement: ``answer is X``, ``answer: X``, ``answer is: (X)``, ``answer - X``
   (the word *answer* in any case);
2. the answer text starts with the choice: ``B``, ``(B)``, ``B.``, ``B)``, ``Yes,`` ...;
3. exactly one choice occurs as a word (letters: as a standalone capital letter; yes/no/maybe:
   in any case) or, for lettered options, exactly one option's text occurs verbatim.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medrt.eval.tasks import Question
from medrt.medical import build_prompt, system_prompt
from medrt.sampling_params import SamplingParams

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class GenerateConfig:
    max_tokens: int = 64            # answer tokens (after any reasoning)
    reasoning_budget: int = 0       # tokens of reasoning allowed before an answer is forced
    temperature: float = 0.0        # 0: greedy
    seed: int | None = None


@dataclass
class Answer:
    text: str                # what the model wrote (reasoning included)
    pred: int | None         # index into the question's choices; None: unparseable
    rule: str | None         # which extraction rule matched
    forced: bool             # the reasoning budget ran out and the answer was forced


def user_message(q: Question) -> str:
    """The question as the user sends it, with the line that names the allowed answers."""
    r = q.record
    lines = []
    if q.choices == ("yes", "no", "maybe"):
        lines += [f"Abstract: {r.context}", f"Question: {r.question}",
                  "Answer with one word: yes, no or maybe."]
    else:
        if r.context:
            lines.append(f"Context: {r.context}")
        lines.append(f"Question: {r.question}")
        lines += [f"{k}. {r.options[k]}" for k in q.choices]
        lines.append(f"Answer with the letter of the correct option ({', '.join(q.choices)}).")
    return "\n".join(lines)


def extract(q: Question, text: str) -> tuple[int | None, str | None]:
    """(choice index, rule name) read from the answer part of ``text``; (None, None) if none."""
    answer = text.rsplit(THINK_CLOSE, 1)[-1].strip()
    lettered = q.choices != ("yes", "no", "maybe")
    alt = "|".join(re.escape(c) for c in q.choices)
    flags = 0 if lettered else re.IGNORECASE
    m = re.search(rf"(?i:answer)(?:\s*(?:is|:|-))*\s*[(*\[]*\s*({alt})\b", answer, flags)
    if m:
        return _index(q, m.group(1)), "explicit"
    m = re.match(rf"[\s*(\[]*({alt})(?:[\s.,:;)\]*!]|$)", answer, flags)
    if m:
        return _index(q, m.group(1)), "leading"
    found = {c for c in q.choices
             if re.search(rf"(?<![\w'])({re.escape(c)})(?![\w'])", answer, flags)}
    if len(found) == 1:
        return q.choices.index(found.pop()), "sole-mention"
    if lettered:
        texts = [k for k in q.choices
                 if q.record.options[k].strip()
                 and q.record.options[k].strip().lower() in answer.lower()]
        if len(texts) == 1:
            return q.choices.index(texts[0]), "option-text"
    return None, None


def _index(q: Question, found: str) -> int:
    return [c.lower() for c in q.choices].index(found.lower())


def _prompt_ids(llm: Any, q: Question) -> list[int]:
    tok = llm.get_tokenizer()
    if tok.chat_template is None:
        return tok.encode(build_prompt(user_message(q), q.category))
    messages = [{"role": "system", "content": system_prompt(q.category)},
                {"role": "user", "content": user_message(q)}]
    text = tok.render_chat(messages, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


async def _complete(llm: Any, ids: list[int], max_tokens: int, cfg: GenerateConfig
                    ) -> tuple[list[int], str]:
    params = SamplingParams(max_tokens=max_tokens, temperature=cfg.temperature, seed=cfg.seed)
    final = None
    async for out in llm.generate({"prompt_token_ids": ids}, params):
        final = out
    assert final is not None
    return list(final.outputs[0].token_ids), final.outputs[0].text


async def answer_question(llm: Any, q: Question, cfg: GenerateConfig) -> Answer:
    ids = _prompt_ids(llm, q)
    tok = llm.get_tokenizer()
    prompt_text = tok.decode(ids, skip_special_tokens=False)
    thinks_in_prompt = prompt_text.rstrip().endswith(THINK_OPEN)
    budget = cfg.reasoning_budget
    out_ids, text = await _complete(llm, ids, budget + cfg.max_tokens, cfg)
    thinking = thinks_in_prompt or text.lstrip().startswith(THINK_OPEN)
    forced = False
    if budget > 0 and thinking and THINK_CLOSE not in text:
        # Still thinking: cut at the budget, close the reasoning, and ask for the answer.
        forced = True
        cut = out_ids[:budget] + tok.encode(f"\n{THINK_CLOSE}\n\n", add_special_tokens=False)
        _, more = await _complete(llm, ids + cut, cfg.max_tokens, cfg)
        text = tok.decode(cut, skip_special_tokens=False) + more
    pred, rule = extract(q, text)
    return Answer(text, pred, rule, forced)


async def answer_questions(llm: Any, questions: Sequence[Question], cfg: GenerateConfig,
                           on_done: Callable[[int], None] | None = None) -> list[Answer]:
    """Every question at once through ``llm`` (a medrt.AsyncLLM); ``on_done(i)`` hears each."""

    async def one(i: int, q: Question) -> Answer:
        a = await answer_question(llm, q, cfg)
        if on_done is not None:
            on_done(i)
        return a

    return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(questions))))
