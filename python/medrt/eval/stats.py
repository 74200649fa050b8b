"""Accuracy intervals and paired comparisons, in the standard library only.

- Wilson score interval (95%: z = 1.959964) for a proportion: unlike the normal approximation it
  stays inside [0, 1] and is sensible for small n and accuracies near 0 or 1.
- McNemar's exact test for two models scored on the same questions: among the discordant
  questions (one right, the other wrong), b and c, the two-sided p-value of b under
  Binomial(b + c, 1/2): min(1, 2 * P(X <= min(b, c))).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of correct / n (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (1.0 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired(correct_a: Sequence[bool], correct_b: Sequence[bool],
           pred_a: Sequence[object], pred_b: Sequence[object]) -> dict[str, float | int]:
    """Agreement and McNemar's test of two models over the same questions, in the same order."""
    n = len(correct_a)
    if not n == len(correct_b) == len(pred_a) == len(pred_b):
        raise ValueError("paired results need the same questions on both sides")
    both = sum(a and b for a, b in zip(correct_a, correct_b))
    only_a = sum(a and not b for a, b in zip(correct_a, correct_b))
    only_b = sum(b and not a for a, b in zip(correct_a, correct_b))
    same = sum(x == y for x, y in zip(pred_a, pred_b))
    lo, hi = wilson_interval(same, n)
    return {"questions": n, "agreement": same / n if n else 0.0, "agreement_ci95": [lo, hi],
            "both_correct": both, "only_a_correct": only_a, "only_b_correct": only_b,
            "both_wrong": n - both - only_a - only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}
