"""Log-likelihood scoring through the engine, as lm-evaluation-harness scores multiple choice.

Each choice's continuation ``" " + choice`` is tokenized as lm-eval does for causal models: the
context and context + continuation are encoded whole (the tokenizer's default special tokens),
and the continuation is what the whole has beyond the context, so a merge across the boundary
is scored the same way. The continuation's log-likelihood is the sum of its tokens' prompt
log-probabilities (SamplingParams.prompt_logprobs, scored from the context's end on).

acc picks the highest log-likelihood; acc_norm divides it by the choice's length in characters
(lm-eval's ``acc_norm``). Ties go to the first choice (numpy's argmax, as lm-eval).

Scheduling: the first choice of every question runs under a window of questions in flight;
when it finishes, the question's context sits in the prefix cache and its other choices run at
once, served from the cache, so each context is computed once. The window keeps the contexts
of the questions in flight within the KV pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medrt.errors import InvalidRequest
from medrt.eval.tasks import Question
from medrt.sampling_params import SamplingParams


@dataclass
class ChoiceScores:
    """One question's result: the log-likelihood of each choice and the two picks."""

    logliks: list[float]
    num_tokens: list[int]
    pred: int
    pred_norm: int


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by lm-eval's rule: trailing spaces of the context move to
    the continuation; the continuation is the whole's ids beyond the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def argmax_first(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def pick(question: Question, logliks: list[float]) -> tuple[int, int]:
    """(acc pick, acc_norm pick) for the choices' log-likelihoods."""
    norm = [ll / len(c) for ll, c in zip(logliks, question.choices)]
    return argmax_first(logliks), argmax_first(norm)


async def _score_choice(llm: Any, ctx: list[int], cont: list[int]) -> float:
    if not cont:
        raise InvalidRequest("a choice tokenized to no tokens beyond its context")
    # A context longer than the model's window loses its oldest tokens (lm-eval truncates on
    # the left too); the engine needs one position free beyond the prompt.
    keep = llm.max_model_len - 1
    if len(ctx) + len(cont) > keep:
        if len(cont) >= keep:
            raise InvalidRequest(f"a continuation of {len(cont)} tokens does not fit "
                             f"max_model_len {llm.max_model_len}")
        ctx = ctx[len(ctx) + len(cont) - keep:]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                            prompt_logprobs_start=len(ctx))
    ids = ctx + cont
    final = None
    async for out in llm.generate({"prompt_token_ids": ids}, params):
        final = out
    assert final is not None and final.prompt_logprobs is not None
    return sum(final.prompt_logprobs[p][ids[p]].logprob for p in range(len(ctx), len(ids)))


async def score_questions(llm: Any, questions: Sequence[Question], window: int,
                          on_done: Callable[[int], None] | None = None) -> list[ChoiceScores]:
    """Scores every question through ``llm`` (a medrt.AsyncLLM); ``on_done(i)`` hears each."""
    tok = llm.get_tokenizer()
    gate = asyncio.Semaphore(max(1, window))

    async def one(i: int, q: Question) -> ChoiceScores:
        pairs = [encode_pair(tok, q.prompt, " " + c) for c in q.choices]
        async with gate:
            first = await _score_choice(llm, *pairs[0])
            rest = await asyncio.gather(*(_score_choice(llm, *p) for p in pairs[1:]))
        logliks = [first, *rest]
        pred, pred_norm = pick(q, logliks)
        if on_done is not None:
            on_done(i)
        return ChoiceScores(logliks, [len(c) for _, c in pairs], pred, pred_norm)

    return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(questions))))
