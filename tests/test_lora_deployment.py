"""deployment="auto": the D(M, E, R) score against hand computation, and the choice made from
terms measured on this machine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("peft")

import medrt
from helpers.lora_adapters import build_adapter
from medrt.errors import InvalidRequest
from medrt.lora import LoRARequest
from medrt.lora.deployment import DeploymentTerms, score

GiB = 1 << 30


def test_score_by_hand() -> None:
    # One adapter: merged decodes faster (no deltas) and needs no adapter memory.
    one = DeploymentTerms(adapters=1, concurrency=2, t_base_s=0.010, t_adapter_s=0.011,
                          model_bytes=1 * GiB, adapter_bytes=GiB // 64, budget_bytes=16 * GiB,
                          max_loras=8)
    c = score(one)
    assert c.mode == "merged"
    assert c.parts["merged"] == pytest.approx({"P": 1.0, "F": 1.0, "C": 1 / 16})
    assert c.parts["adapter"] == pytest.approx({"P": 0.010 / 0.011, "F": 1.0,
                                                "C": (1 + 1 / 64) / 16})
    assert c.scores["merged"] == pytest.approx(1 + 1 - 1 / 16)
    # Four adapters: a merged model serves one of them; adapter mode all four, a bit slower.
    four = DeploymentTerms(adapters=4, concurrency=8, t_base_s=0.010, t_adapter_s=0.014,
                           model_bytes=1 * GiB, adapter_bytes=GiB // 16, budget_bytes=6 * GiB,
                           max_loras=8)
    c = score(four)
    assert c.mode == "adapter"
    assert c.parts["merged"] == pytest.approx({"P": 1.0, "F": 0.25, "C": 1 / 6})
    assert c.scores["adapter"] == pytest.approx(0.010 / 0.014 + 1 - (1 + 1 / 16) / 6)
    # Fewer slots than adapters lowers adapter mode's fitness; deltas 4x slower lose to merged.
    slow = DeploymentTerms(4, 8, 0.010, 0.040, 1 * GiB, GiB // 16, 6 * GiB, 2)
    assert score(slow).parts["adapter"]["F"] == pytest.approx(0.5)
    assert score(slow).mode == "merged"


def test_auto_picks_adapter_mode_for_several_adapters(tiny_llama: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    reqs = [LoRARequest(name, i + 1, str(build_adapter(tiny_llama, tmp_path / name, seed=i)))
            for i, name in enumerate(["cardiology", "paediatrics", "pharmacy"])]
    with caplog.at_level(logging.INFO, logger="medrt.lora"), \
            medrt.LLM(str(tiny_llama), num_threads=1, lora=reqs, deployment="auto") as llm:
        assert llm.deployment["mode"] == "adapter"
        terms = llm.deployment["terms"]
        assert terms["adapters"] == 3 and terms["t_adapter_s"] > 0 and terms["t_base_s"] > 0
        assert sorted(llm.list_loras()) == [1, 2, 3]
        params = medrt.SamplingParams(temperature=0.0, max_tokens=2)
        out = llm.generate(["chest pain"] * 2, params, lora_request=["pharmacy", None])
        assert len(out) == 2
    assert "deployment=auto chose adapter mode" in caplog.text
    with pytest.raises(InvalidRequest, match="merged mode folds one adapter"):
        medrt.LLM(str(tiny_llama), lora=reqs, deployment="merged")
    with pytest.raises(InvalidRequest, match="deployment must be"):
        medrt.LLM(str(tiny_llama), lora=reqs, deployment="fastest")
