"""RSLoRA scaling, the default targets, and the cosine schedule with warm restarts."""
from __future__ import annotations

import math

import pytest
import torch
from medrt_train.lora import DEFAULT_TARGETS, apply_lora, lora_config, rslora_scaling
from medrt_train.schedule import cosine_with_restarts, make_scheduler
from peft.tuners.lora import LoraLayer


def test_rslora_scaling_is_alpha_over_sqrt_r(tiny_pair) -> None:
    from transformers import AutoModelForCausalLM

    assert rslora_scaling(32, 16) == pytest.approx(8.0)
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["student"])
    peft_model = apply_lora(model, lora_config(r=4, alpha=6.0, dropout=0.0))
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    # All seven projections of both layers carry an adapter.
    assert len(layers) == 7 * 2
    for layer in layers:
        assert layer.scaling["default"] == pytest.approx(6.0 / math.sqrt(4))
    plain = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_pair["student"]),
                       lora_config(r=4, alpha=6.0, rslora=False, targets="q_proj,v_proj"))
    scaled = [m.scaling["default"] for m in plain.modules() if isinstance(m, LoraLayer)]
    assert len(scaled) == 2 * 2 and all(s == pytest.approx(1.5) for s in scaled)


def test_default_targets_and_unknown_target(tiny_pair) -> None:
    from transformers import AutoModelForCausalLM

    assert DEFAULT_TARGETS == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj")
    model = AutoModelForCausalLM.from_pretrained(tiny_pair["student"])
    with pytest.raises(ValueError, match="c_attn"):
        apply_lora(model, lora_config(targets="q_proj,c_attn"))


def test_cosine_values_with_restarts() -> None:
    # 100 steps, 1 restart: two cycles of 50 steps from 1e-3 down towards 1e-5.
    lr = lambda s: cosine_with_restarts(s, 100, 1e-5, 1e-3, restarts=1)
    assert lr(0) == pytest.approx(1e-3)
    assert lr(25) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half way: cos(pi/2) = 0
    assert lr(49) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 49 / 50)) / 2)
    assert lr(50) == pytest.approx(1e-3)  # the warm restart
    assert lr(75) == pytest.approx(lr(25))
    assert lr(99) == pytest.approx(lr(49))
    # Three restarts: four cycles of 25 steps.
    assert cosine_with_restarts(75, 100, 0.0, 1.0, restarts=3) == pytest.approx(1.0)
    assert cosine_with_restarts(87.5, 100, 0.0, 1.0, restarts=3) == pytest.approx(0.5)


def test_warmup_then_cosine_and_scheduler_follows() -> None:
    assert cosine_with_restarts(0, 20, 0.0, 1.0, warmup_steps=4) == pytest.approx(0.25)
    assert cosine_with_restarts(3, 20, 0.0, 1.0, warmup_steps=4) == pytest.approx(1.0)
    assert cosine_with_restarts(4, 20, 0.0, 1.0, warmup_steps=4) == pytest.approx(1.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched = make_scheduler(opt, 10, 0.1, 1.0, restarts=1)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([cosine_with_restarts(s, 10, 0.1, 1.0, 1) for s in range(10)])
    assert seen[5] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_with_restarts(0, 0, 0.0, 1.0)
