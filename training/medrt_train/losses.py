"""The distillation objective, one function per term.

L = l1 * CE + l2 * KL(teacher || student, T) + l3 * MSE(hidden) + l4 * ENT, where every term
is taken over the response tokens (labels != -100) and

- CE: mean next-token cross-entropy of the student on the labels;
- KL: mean over tokens of sum_v p_T(v) (log p_T(v) - log p_S(v)), both softmaxes at
  temperature T, times T^2 so the gradient scale does not shrink with T (Hinton et al. 2015);
- MSE: for each student layer j (1..Ls) and teacher layer round(j * Lt / Ls), the mean squared
  difference between the projected student hidden state and the teacher's over the real
  (unpadded) tokens, averaged over the layer pairs; the projection is a learned linear map when
  the widths differ, the identity otherwise;
- ENT: over the tokens of key medical entities, sum w_e |P_S(e) - P_T(e)| divided by the number
  of such tokens, where P(e) is the probability (temperature 1) of the entity token itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .examples import IGNORE


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Position i predicts token i + 1.
    return logits[:, :-1, :], labels[:, 1:]


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100."""
    lg, lb = _shift(logits, labels)
    return F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), lb.reshape(-1),
                           ignore_index=IGNORE)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over response tokens of KL(p_T || p_S) at temperature T."""
    s, lb = _shift(student_logits, labels)
    t, _ = _shift(teacher_logits, labels)
    mask = lb != IGNORE
    if not mask.any():
        return student_logits.sum() * 0.0
    log_ps = F.log_softmax(s[mask].float() / temperature, dim=-1)
    log_pt = F.log_softmax(t[mask].float() / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return kl.mean() * temperature ** 2


def layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student index, teacher index) into hidden_states tuples (0 = embeddings)."""
    return [(j, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


def hidden_mse(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
               attention_mask: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Mean over layer pairs of the masked MSE between projected student and teacher states."""
    pairs = layer_pairs(len(student_hidden) - 1, len(teacher_hidden) - 1)
    mask = attention_mask.bool()
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for j, m in pairs:
        hs = projection(student_hidden[j][mask]).float()
        total = total + F.mse_loss(hs, teacher_hidden[m][mask].float())
    return total / len(pairs)


def entity_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor, entity_weights: torch.Tensor) -> torch.Tensor:
    """sum_e w_e |P_S(e) - P_T(e)| over entity tokens, divided by their number."""
    s, lb = _shift(student_logits, labels)
    t, _ = _shift(teacher_logits, labels)
    w = entity_weights[:, 1:]
    mask = (w > 0) & (lb != IGNORE)
    if not mask.any():
        return student_logits.sum() * 0.0
    target = lb[mask].unsqueeze(-1)
    p_s = F.softmax(s[mask].float(), dim=-1).gather(-1, target).squeeze(-1)
    p_t = F.softmax(t[mask].float(), dim=-1).gather(-1, target).squeeze(-1)
    return (w[mask] * (p_s - p_t).abs()).sum() / mask.sum()


class DistillLoss(nn.Module):
    """The weighted sum of the four terms; owns the hidden-state projection."""

    def __init__(self, ce: float = 1.0, kl: float = 1.0, hidden: float = 0.0,
                 entity: float = 0.0, temperature: float = 2.0, student_width: int = 0,
                 teacher_width: int = 0) -> None:
        super().__init__()
        self.weights = {"ce": ce, "kl": kl, "hidden": hidden, "entity": entity}
        self.temperature = temperature
        self.projection: nn.Module = (nn.Linear(student_width, teacher_width, bias=False)
                                      if student_width != teacher_width else nn.Identity())

    def needs_teacher(self) -> bool:
        return any(self.weights[k] > 0 for k in ("kl", "hidden", "entity"))

    def forward(self, student_out, teacher_out, batch: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        s_logits = student_out.logits
        terms = {"ce": ce_loss(s_logits, labels)}
        if teacher_out is not None:
            vocab = min(s_logits.size(-1), teacher_out.logits.size(-1))
            s_cut, t_cut = s_logits[..., :vocab], teacher_out.logits[..., :vocab]
            if self.weights["kl"] > 0:
                terms["kl"] = kl_loss(s_cut, t_cut, labels, self.temperature)
            if self.weights["hidden"] > 0:
                terms["hidden"] = hidden_mse(student_out.hidden_states, teacher_out.hidden_states,
                                             batch["attention_mask"], self.projection)
            if self.weights["entity"] > 0:
                terms["entity"] = entity_loss(s_cut, t_cut, labels, batch["entity_weights"])
        total = sum(self.weights[k] * v for k, v in terms.items())
        terms["total"] = total
        return terms
