"""Each distillation term against a hand computation on small tensors."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from medrt_train.losses import DistillLoss, ce_loss, entity_loss, hidden_mse, kl_loss, layer_pairs

# batch 1, 3 positions, vocabulary 3. Labels: position 0 is prompt; tokens 1 and 2 are targets.
S = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [3.0, 0.0, 0.0]]
T = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0], [0.0, 0.0, 0.0]]
LABELS = torch.tensor([[-100, 1, 2]])


def softmax(row: list[float], temp: float = 1.0) -> list[float]:
    exps = [math.exp(x / temp) for x in row]
    return [e / sum(exps) for e in exps]


def logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([rows])


def test_cross_entropy() -> None:
    # Position 0 predicts token 1, position 1 predicts token 2; position 2 predicts nothing.
    expected = (-math.log(softmax(S[0])[1]) - math.log(softmax(S[1])[2])) / 2
    assert float(ce_loss(logits(S), LABELS)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kl_teacher_to_student_with_temperature(temp: float) -> None:
    def kl(t_row: list[float], s_row: list[float]) -> float:
        pt, ps = softmax(t_row, temp), softmax(s_row, temp)
        return sum(a * math.log(a / b) for a, b in zip(pt, ps))

    expected = temp ** 2 * (kl(T[0], S[0]) + kl(T[1], S[1])) / 2
    got = kl_loss(logits(S), logits(T), LABELS, temperature=temp)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(kl_loss(logits(T), logits(T), LABELS, temp)) == pytest.approx(0.0, abs=1e-7)


def test_kl_ignores_prompt_positions() -> None:
    only_last = torch.tensor([[-100, -100, 2]])
    pt, ps = softmax(T[1]), softmax(S[1])
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert float(kl_loss(logits(S), logits(T), only_last)) == pytest.approx(expected, rel=1e-5)


def test_hidden_mse_identity_and_projection() -> None:
    # Student: embeddings + 1 layer, width 2. Teacher: embeddings + 2 layers, width 3.
    s_h = (torch.zeros(1, 2, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    t_h = (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3),
           torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]))
    assert layer_pairs(1, 2) == [(1, 2)]
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # Only the first token is real: projected [1, 2, 3] vs teacher [1, 0, 1].
    mask = torch.tensor([[1, 0]])
    expected = ((1 - 1) ** 2 + (2 - 0) ** 2 + (3 - 1) ** 2) / 3
    assert float(hidden_mse(s_h, t_h, mask, proj).detach()) == pytest.approx(expected)
    same = (torch.zeros(1, 2, 2), torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))
    got = hidden_mse(s_h, same, torch.tensor([[1, 1]]), torch.nn.Identity())
    assert float(got) == pytest.approx((0 + 0 + 9 + 16) / 4)


def test_layer_pairs_map_student_layers_uniformly() -> None:
    assert layer_pairs(15, 30) == [(j, 2 * j) for j in range(1, 16)]
    assert layer_pairs(2, 4) == [(1, 2), (2, 4)]


def test_entity_term() -> None:
    weights = torch.tensor([[0.0, 2.0, 0.5]])  # both target tokens are entity tokens
    e1 = 2.0 * abs(softmax(S[0])[1] - softmax(T[0])[1])
    e2 = 0.5 * abs(softmax(S[1])[2] - softmax(T[1])[2])
    got = entity_loss(logits(S), logits(T), LABELS, weights)
    assert float(got) == pytest.approx((e1 + e2) / 2, rel=1e-6)
    none = entity_loss(logits(S), logits(T), LABELS, torch.zeros(1, 3))
    assert float(none) == 0.0


def test_weighted_total_and_projection_only_when_widths_differ() -> None:
    loss = DistillLoss(ce=0.5, kl=0.25, hidden=0.0, entity=2.0, temperature=1.0,
                       student_width=4, teacher_width=4)
    assert isinstance(loss.projection, torch.nn.Identity)
    assert isinstance(DistillLoss(student_width=4, teacher_width=8).projection, torch.nn.Linear)
    batch = {"labels": LABELS, "attention_mask": torch.ones(1, 3),
             "entity_weights": torch.tensor([[0.0, 1.0, 0.0]])}
    terms = loss(SimpleNamespace(logits=logits(S)), SimpleNamespace(logits=logits(T)), batch)
    assert set(terms) == {"ce", "kl", "entity", "total"}
    expected = 0.5 * terms["ce"] + 0.25 * terms["kl"] + 2.0 * terms["entity"]
    assert float(terms["total"]) == pytest.approx(float(expected))
    # The teacher's padded vocabulary rows beyond the student's are ignored.
    wide = logits([r + [9.0] for r in T])
    terms_wide = loss(SimpleNamespace(logits=logits(S)), SimpleNamespace(logits=wide), batch)
    assert float(terms_wide["kl"]) == pytest.approx(float(terms["kl"]))
