"""A LoRA-MoE adapter (medrt-train moe) served by the engine equals the training module's
forward: the router per token, the top-k experts' deltas, in a batch with the base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
moe = pytest.importorskip("medrt_train.moe")

import medrt
from helpers.tiny_models import MODEL_VOCAB
from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.lora import LoRARequest

TOL = 1e-4


def _moe_model(base_dir: Path, **kw):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager")
    torch.manual_seed(3)
    model = moe.MoeModel(base, moe.MoeConfig(**kw)).eval()
    with torch.no_grad():
        for m in model.expert_modules().values():
            m.lora_B.normal_(0, 0.1)
        for r in model.routers:
            r.proj.weight.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("top_k", [1, 2])
def test_engine_matches_the_training_module(tiny_llama: Path, tmp_path: Path, top_k: int) -> None:
    model = _moe_model(tiny_llama, n_experts=4, top_k=top_k, r=4, alpha=8.0)
    moe.save_moe(model, tmp_path / "moe", str(tiny_llama))
    rng = np.random.default_rng(top_k)
    prompts = [[int(t) for t in rng.integers(3, MODEL_VOCAB, size=n)] for n in (9, 14)]
    params = medrt.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=20)
    req = LoRARequest("moe", 1, str(tmp_path / "moe"))
    with medrt.LLM(str(tiny_llama), num_threads=2, enable_lora=True) as llm:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                            lora_request=[req, None])
    routed = set()
    with torch.no_grad():
        for prompt, out, adapted in zip(prompts, outs, (True, False)):
            ids = list(prompt)
            for entry in out.outputs[0].logprobs:
                if adapted:
                    logits = model(torch.tensor([ids])).logits[0, -1]
                    routed.update(model._routing[1].topk[0, -1].tolist())
                else:
                    logits = _base_logits(model, ids)
                ref = torch.log_softmax(logits.double(), -1).numpy()
                for tid, lp in entry.items():
                    assert abs(lp.logprob - ref[tid]) < TOL, (tid, lp.logprob, ref[tid])
                ids.append(int(ref.argmax()))
            assert out.outputs[0].token_ids == ids[len(prompt):]
    assert len(routed) > 1  # the router really chose between experts


def _base_logits(model, ids: list[int]):
    """The base alone: every expert's B zeroed for one forward."""
    saved = {n: m.lora_B.detach().clone() for n, m in model.expert_modules().items()}
    for m in model.expert_modules().values():
        m.lora_B.zero_()
    logits = model(torch.tensor([ids])).logits[0, -1]
    for n, m in model.expert_modules().items():
        m.lora_B.copy_(saved[n])
    return logits


def test_bad_moe_files_name_what_is_wrong(tiny_llama: Path, tmp_path: Path) -> None:
    import json

    model = _moe_model(tiny_llama, n_experts=2, top_k=1, r=4)
    moe.save_moe(model, tmp_path / "moe")
    meta = json.loads((tmp_path / "moe" / "moe_config.json").read_text())
    (tmp_path / "moe" / "moe_config.json").write_text(json.dumps({**meta, "version": 9}))
    with medrt.LLM(str(tiny_llama), num_threads=1, enable_lora=True, max_lora_rank=8) as llm, \
            pytest.raises(InvalidCheckpoint, match="version 9"):
        llm.generate("chest pain", lora_request=LoRARequest("m", 1, str(tmp_path / "moe")))
    with pytest.raises(InvalidRequest, match="run in adapter mode only, not merged"):
        medrt.LLM(str(tiny_llama), lora=str(tmp_path / "moe"), merge=True)
