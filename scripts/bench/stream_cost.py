"""Python streaming cost per token at the start and the end of a long completion.

Feeds 4,000 engine outputs of real text (one token each, as the engine sends them while
decoding) through the per-request state that every streaming API uses (incremental
detokenization, stop strings, logprobs, RequestOutput building) and prints the median time
per token over tokens 10-210 and 3,800-4,000. Linear streaming keeps the two equal.

    PYTHONPATH=python:tests python scripts/bench/stream_cost.py [TOKENIZER_DIR]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams
from medrt.tokenizer import Tokenizer

N = 4000
TEXT = ("Hypertension is diagnosed when blood pressure stays above 140/90 mmHg on repeated "
        "readings. Sepsis is a life-threatening organ dysfunction caused by a dysregulated "
        "host response to infection. ") * 300


def per_token_us(tok: Tokenizer, ids: list[int], delta: bool, logprobs: int | None) -> tuple:
    state = RequestState("r", None, ids[:3], SamplingParams(max_tokens=N, logprobs=logprobs), tok)
    times = []
    for t in ids[:N]:
        raw = SimpleNamespace(finished=False, num_cached_tokens=0, new_token_ids=[t],
                              finish_reason="", stop_token_id=-1,
                              logprobs=[(-1.0, [(t, -1.0), (ids[0], -2.0)])])
        t0 = time.perf_counter()
        state.process(raw, 0.0)
        state.output(delta=delta)
        times.append(time.perf_counter() - t0)
    return (statistics.median(times[10:210]) * 1e6, statistics.median(times[N - 200:]) * 1e6)


def main() -> None:
    if len(sys.argv) > 1:
        tok = Tokenizer(sys.argv[1])
    else:
        from helpers.tiny_models import build_tiny_tokenizer

        tok = Tokenizer(build_tiny_tokenizer(tempfile.mkdtemp()))
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert len(ids) >= N, len(ids)
    print("| output mode | logprobs | us/token, tokens 10-210 | us/token, tokens 3800-4000 | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for delta in (False, True):
        for logprobs in (None, 2):
            a, b = per_token_us(tok, ids, delta, logprobs)
            print(f"| {'delta' if delta else 'cumulative'} | {logprobs} | {a:.1f} | {b:.1f} "
                  f"| {b / a:.2f} |")


if __name__ == "__main__":
    main()
