"""SparseDoctor LoRA-MoE: router top-k, the bounded expert memory queue, the loss terms against
hand computation, training, export (each expert a peft adapter) and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from medrt_train.moe import ExpertMemoryQueue, MoeConfig, MoeModel, TopKRouter, load_moe, save_moe
from medrt_train.moe.losses import contrastive_loss, load_balance_loss


def _student(tiny_pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pair["student"], dtype=torch.float32)


def _tokens(tiny_pair, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair["student"])
    return tok(texts, return_tensors="pt", padding=True)


def test_router_gates_are_renormalised_top_k() -> None:
    torch.manual_seed(0)
    router = TopKRouter(hidden=16, n_experts=5, top_k=2, dim=8, temperature=0.5)
    h = torch.randn(3, 7, 16)
    r = router(h)
    assert r.gates.shape == (3, 7, 5) and r.topk.shape == (3, 7, 2)
    assert torch.all((r.gates > 0).sum(-1) == 2)
    assert torch.allclose(r.gates.sum(-1), torch.ones(3, 7))
    order = r.probs.argsort(-1, descending=True)[..., :2]
    assert torch.equal(r.topk, order)
    top = r.probs.gather(-1, order)
    assert torch.allclose(r.gates.gather(-1, order), top / top.sum(-1, keepdim=True))
    # The logits are cosines over a temperature: probabilities from q and the keys by hand.
    q = torch.nn.functional.normalize(h @ router.proj.weight.T, dim=-1)
    k = router.keys / router.keys.norm(dim=-1, keepdim=True)
    assert torch.allclose(r.probs, torch.softmax(q @ k.T / 0.5, -1), atol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        TopKRouter(16, 3, 4)


def test_queue_keeps_the_latest_size_entries_per_expert() -> None:
    q = ExpertMemoryQueue(n_experts=3, size=4, dim=2)
    ptr, nbytes = q.memory.data_ptr(), q.memory.numel()
    keys = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    q.push(keys, torch.zeros(10, dtype=torch.long))
    q.push(keys[:1] + 100, torch.tensor([2]))
    assert q.count.tolist() == [4, 0, 1]
    assert torch.equal(q.latest(0), keys[6:10])  # oldest first, the six before dropped
    assert torch.equal(q.latest(2), keys[:1] + 100)
    stored, owners = q.entries()
    assert stored.shape == (5, 2) and sorted(owners.tolist()) == [0, 0, 0, 0, 2]
    for _ in range(50):  # memory stays where and as large as it was
        q.push(torch.randn(8, 2), torch.randint(0, 3, (8,)))
    assert q.memory.data_ptr() == ptr and q.memory.numel() == nbytes
    assert q.count.tolist() == [4, 4, 4]


def test_contrastive_loss_matches_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    targets = torch.tensor([0, 1, -1])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    owners = torch.tensor([0, 1, 0])
    tau = 0.5
    got = contrastive_loss(a, targets, keys, owners, tau)

    def term(anchor, positives):
        logits = [sum(x * y for x, y in zip(anchor, k)) / tau for k in keys.tolist()]
        z = math.log(sum(math.exp(v) for v in logits))
        return -sum(logits[p] - z for p in positives) / len(positives)

    want = (term([1.0, 0.0], [0, 2]) + term([0.6, 0.8], [1])) / 2  # third anchor unsupervised
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert float(contrastive_loss(a, torch.tensor([-1, -1, -1]), keys, owners, tau)) == 0.0


def test_load_balance_loss_matches_hand_computation() -> None:
    n = 4
    uniform = torch.full((2, 3, n), 1 / n)
    topk = torch.tensor([[[0], [1], [2]], [[3], [0], [1]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # f = (2, 2, 1, 0 counted over 5 tokens... masked token (1, 2) excluded) / 5; p = 1/4 each.
    f = torch.tensor([2, 2, 1, 0]) / 5
    assert float(load_balance_loss(uniform, topk, mask)) == pytest.approx(n * float(f.sum()) / 4)
    collapsed = torch.zeros(1, 2, n)
    collapsed[..., 0] = 1.0
    assert float(load_balance_loss(collapsed, torch.zeros(1, 2, 1, dtype=torch.long),
                                   torch.ones(1, 2))) == pytest.approx(n)


def test_zero_experts_equal_the_base_and_training_lowers_the_loss(tiny_pair) -> None:
    torch.manual_seed(0)
    batch = _tokens(tiny_pair, ["take aspirin with food", "call the emergency number now",
                                "get the flu vaccine every year"])
    base_logits = _student(tiny_pair)(**batch).logits
    model = MoeModel(_student(tiny_pair), MoeConfig(n_experts=3, top_k=2, r=4, queue_size=8))
    assert len(model.expert_modules()) == 7 * 2
    assert all(not p.requires_grad for p in model.base.parameters()
               if not any(p is q for q in model.trainable_parameters()))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    targets = torch.tensor([0, 1, 2])
    torch.testing.assert_close(model(**batch).logits, base_logits)  # B starts at zero
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        out = model(**batch, labels=labels, targets=targets, update_queue=True)
        on_target = out.seq_probs.gather(1, targets[:, None]).mean()
        first = first or (out.lm_loss.item(), on_target.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.lm_loss.item() < 0.95 * first[0]
    # The contrastive term pulls each sequence's routing toward its category's expert.
    assert on_target.item() > first[1] + 0.1
    assert out.con_loss.item() > 0 and out.bal_loss.item() > 0
    # 12 steps of 3 sequences entered each layer's queues, bounded at 8 per expert.
    for q in model.queues:
        assert 8 <= int(q.count.sum()) <= 3 * 8 and max(q.count.tolist()) <= 8


def _randomised(tiny_pair, **kw) -> MoeModel:
    torch.manual_seed(1)
    model = MoeModel(_student(tiny_pair), MoeConfig(**kw))
    with torch.no_grad():
        for m in model.expert_modules().values():
            m.lora_B.normal_(0, 0.05)
    return model


def test_export_round_trip_and_experts_as_peft_adapters(tiny_pair, tmp_path) -> None:
    from peft import PeftModel

    model = _randomised(tiny_pair, n_experts=3, top_k=2, r=4, alpha=8.0)
    batch = _tokens(tiny_pair, ["which drugs interact with warfarin", "is it a stroke"])
    want = model(**batch).logits
    save_moe(model, tmp_path / "moe", "student")
    meta = json.loads((tmp_path / "moe" / "moe_config.json").read_text())
    assert meta["format"] == "medrt-lora-moe" and meta["n_experts"] == 3
    assert meta["category_experts"]["emergency"] == 4 % 3
    again = load_moe(_student(tiny_pair), tmp_path / "moe")
    torch.testing.assert_close(again(**batch).logits, want)
    # Every token routed to expert e is exactly peft's LoRA with expert e's adapter.
    for e in range(3):
        model.force_expert = e
        moe_logits = model(**batch).logits
        peft = PeftModel.from_pretrained(_student(tiny_pair),
                                         str(tmp_path / "moe" / "experts" / f"expert_{e}"))
        torch.testing.assert_close(peft(**batch).logits, moe_logits, atol=1e-5, rtol=1e-5)
    model.force_expert = None


def test_cli_trains_and_reports(tiny_pair, tmp_path) -> None:
    from medrt_train.cli import main

    out = tmp_path / "moe_run"
    from medrt_train.data.pubmedqa import default_path

    test = ["--test", "4"] if default_path() is not None else []
    rc = main(["moe", "--model", str(tiny_pair["student"]), "--out", str(out), "--steps", "6",
               "--batch", "4", "--experts", "5", "--lora-r", "2", "--queue-size", "4", *test])
    assert rc == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log[0]["step"] == 0 and log[-1]["step"] == 6
    assert 0.0 <= log[-1]["routing_accuracy"] <= 1.0 and log[-1]["labelled"] == 60
    # Perplexity is exp of the token-weighted loss: at least 1, and finite.
    assert 1.0 <= log[-1]["perplexity"] < float("inf")
    if test:  # PubMedQA test perplexity before and after, never trained on
        assert all(1.0 <= log[i]["test_perplexity"] < float("inf") for i in (0, -1))
    assert (out / "moe_model.safetensors").is_file()
    assert (out / "experts" / "expert_4" / "adapter_config.json").is_file()
