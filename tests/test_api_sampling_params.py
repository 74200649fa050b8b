"""SamplingParams: vLLM names and defaults, and precise errors for bad values."""

from __future__ import annotations

import math
import subprocess
import sys

import medrt
import pytest
from medrt.errors import InvalidRequest


def test_defaults_follow_vllm() -> None:
    p = medrt.SamplingParams()
    assert (p.n, p.max_tokens, p.temperature, p.top_p, p.top_k) == (1, 16, 1.0, 1.0, 0)
    assert p.stop_strings == [] and p.stop_token_ids == []
    assert not p.include_stop_str_in_output and p.skip_special_tokens
    assert medrt.SamplingParams(stop="###").stop_strings == ["###"]
    assert medrt.SamplingParams(stop=["a", "b"]).stop_strings == ["a", "b"]


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2),
    ("max_tokens", -1),
    ("max_tokens", 0),
    ("max_tokens", 2.5),
    ("min_tokens", -3),
    ("temperature", math.nan),
    ("temperature", -0.1),
    ("temperature", math.inf),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_k", -2),
    ("min_p", 1.1),
    ("repetition_penalty", 0.0),
    ("frequency_penalty", 2.5),
    ("presence_penalty", -3.0),
    ("seed", -1),
    ("logprobs", -1),
    ("logprobs", 21),
    ("stop", ""),
    ("stop", ["ok", 3]),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [2**31]),
    ("max_tokens", 2**40),    # beyond the engine's 32-bit field: named, not a TypeError
    ("prompt_logprobs_start", 2**31),
    ("ignore_eos", "yes"),
])
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        medrt.SamplingParams(**{field: value})
    assert f"SamplingParams.{field}=" in str(info.value)
    assert repr(value) in str(info.value) or field == "stop"
    assert isinstance(info.value, ValueError)


def test_min_tokens_beyond_max_tokens() -> None:
    with pytest.raises(InvalidRequest, match="min_tokens.*max_tokens"):
        medrt.SamplingParams(max_tokens=4, min_tokens=5)


def test_changed_attributes_are_checked_again() -> None:
    p = medrt.SamplingParams()
    p.temperature = -1.0
    with pytest.raises(InvalidRequest, match="temperature"):
        p.validate()


def test_top_k_off_values_accepted() -> None:
    for k in (-1, 0, 40):
        assert medrt.SamplingParams(top_k=k).top_k == k
    assert medrt.SamplingParams(top_k=2**40).top_k == 2**40  # more than the vocabulary: all


def test_import_is_light() -> None:
    code = ("import sys, medrt; "
            "heavy = [m for m in ('torch', 'transformers', 'medrt._core', 'tokenizers', 'jinja2')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    assert medrt.__version__
    for name in ("LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "CompletionOutput",
                 "errors"):
        assert hasattr(medrt, name)
