"""Choosing between merged mode and adapter mode: the paper's D(M, E, R) from measured terms.

    D(M, E, R) = w1 P(M, E) + w2 F(M, R) - w3 C(M, E)

M is the mode, E this machine, R the need: k adapters carrying the traffic. Here
  P  decode throughput of the mode, measured now on this machine for c = 2k concurrent requests
     spread over the k adapters, as a fraction of the better mode. Merged mode folds one adapter
     per model copy, so k adapters are k engines taking turns on the same cores, each decoding
     c/k rows: cost k * t_base(c/k) per c tokens (a merged model computes exactly what the base
     does). Adapter mode decodes all c rows in one batch with the deltas: t_adapter(c) per c.
  F  the share of the k adapters the mode can serve at once: merged, the model copies that fit
     in the memory budget over k; adapter, max_loras over k (each capped at 1).
  C  memory as a share of the budget: merged k * model bytes; adapter model + adapter bytes.
Weights default to 1. The decision and every term are logged (logger "medrt.lora") and kept on
the LLM as `deployment`; docs/adapters.md has the measured terms of our machines."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medrt.lora.adapter import LoraAdapter

log = logging.getLogger("medrt.lora")


@dataclass
class DeploymentTerms:
    adapters: int            # k
    concurrency: int         # c
    t_base_s: float          # one decode step of c/k base rows (what a merged copy runs)
    t_adapter_s: float       # one decode step of c rows over the k adapters
    model_bytes: int
    adapter_bytes: int
    budget_bytes: int
    max_loras: int


@dataclass
class DeploymentChoice:
    mode: str                # "merged" or "adapter"
    scores: dict[str, float]
    parts: dict[str, dict[str, float]]
    terms: DeploymentTerms

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scores": self.scores, "parts": self.parts,
                "terms": asdict(self.terms)}


def score(terms: DeploymentTerms, w: tuple[float, float, float] = (1.0, 1.0, 1.0)
          ) -> DeploymentChoice:
    k, c = terms.adapters, terms.concurrency
    cost = {"merged": k * terms.t_base_s / c, "adapter": terms.t_adapter_s / c}  # s per token
    best = min(cost.values())
    copies = terms.budget_bytes // max(terms.model_bytes, 1)
    parts = {
        "merged": {"P": best / cost["merged"], "F": min(1.0, copies / k),
                   "C": k * terms.model_bytes / terms.budget_bytes},
        "adapter": {"P": best / cost["adapter"], "F": min(1.0, terms.max_loras / k),
                    "C": (terms.model_bytes + terms.adapter_bytes) / terms.budget_bytes},
    }
    scores = {m: w[0] * p["P"] + w[1] * p["F"] - w[2] * p["C"] for m, p in parts.items()}
    mode = max(scores, key=lambda m: (scores[m], m == "merged"))
    return DeploymentChoice(mode, scores, parts, terms)


def memory_budget() -> int:
    """MemAvailable of this machine (bytes); the physical memory when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _decode_step_seconds(engine: Any, lora_ids: list[int], steps: int, core: Any) -> float:
    """Median time of one decode step of len(lora_ids) rows (after their prefill)."""
    prompt = [3 + i % 50 for i in range(16)]
    for lora_id in lora_ids:
        engine.add_request(prompt, core.SamplingParams(max_tokens=steps + 1, temperature=0.0,
                                                       ignore_eos=True, lora_id=lora_id))
    engine.step()  # the prefills
    times = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def measure(engine: Any, model_dir: Path, adapters: dict[int, LoraAdapter], max_loras: int,
            core: Any, steps: int = 8) -> DeploymentTerms:
    """Measures the terms on `engine` (synchronous mode, adapters loaded under their ids)."""
    ids = sorted(adapters)
    k = len(ids)
    c = 2 * k
    rows = [ids[i % k] for i in range(c)]
    t_base = _decode_step_seconds(engine, [0] * (c // k), steps, core)
    t_adapter = _decode_step_seconds(engine, rows, steps, core)
    model_bytes = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    adapter_bytes = sum(4 * (m.a.size + m.b.size) for a in adapters.values()
                        for m in a.modules.values())
    return DeploymentTerms(k, c, t_base, t_adapter, model_bytes, adapter_bytes, memory_budget(),
                           max_loras)


def choose(make_engine: Callable[[], Any], model_dir: Path, adapters: dict[int, LoraAdapter],
           max_loras: int, core: Any) -> DeploymentChoice:
    engine = make_engine()
    for lora_id, a in adapters.items():
        engine.add_lora(lora_id, [(m.name, m.a, m.b) for m in a.modules.values()], a.scale)
    choice = score(measure(engine, model_dir, adapters, max_loras, core))
    log.info("deployment=auto chose %s mode: D = %s from P, F, C = %s; terms %s", choice.mode,
             {m: round(s, 4) for m, s in choice.scores.items()},
             {m: {t: round(v, 4) for t, v in p.items()} for m, p in choice.parts.items()},
             asdict(choice.terms))
    return choice
