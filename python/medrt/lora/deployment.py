"""Choosing between merged mode and adapter mode: the paper's D(M, E, R) from measured terms.

    D(M, E, R) = w1 P(M, E) + w2 F(M, R) - w3 C(M, E)

M is the mode of this LLM, E this machine, R the need: the k adapters that carry the traffic.
  P  decode throughput of the mode as a fraction of the better one, measured now on this
     machine: one decode step of c = 2k concurrent rows, on the base (what a merged model
     computes) and in adapter mode over the k adapters; t_base(c) / c against t_adapter(c) / c.
  F  the share of the k adapters the mode serves: merged mode folds one adapter into the
     weights, 1/k; adapter mode min(1, max_loras / k).
  C  memory as a share of the budget (MemAvailable): merged the model bytes; adapter the model
     plus the adapters' f32 bytes.
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
    t_base_s: float          # one decode step of c base rows (what a merged model runs)
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
    k = terms.adapters
    best = min(terms.t_base_s, terms.t_adapter_s)
    parts = {
        "merged": {"P": best / terms.t_base_s, "F": 1.0 / k,
                   "C": terms.model_bytes / terms.budget_bytes},
        "adapter": {"P": best / terms.t_adapter_s, "F": min(1.0, terms.max_loras / k),
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
            core: Any, steps: int = 8, rounds: int = 3) -> DeploymentTerms:
    """Measures the terms on `engine` (synchronous mode, adapters loaded under their ids).
    The two step times alternate over `rounds` and each keeps its fastest round, so load from
    other processes weighs on both alike."""
    ids = sorted(adapters)
    k = len(ids)
    c = 2 * k
    rows = [ids[i % k] for i in range(c)]
    t_base, t_adapter = [], []
    for _ in range(rounds):
        t_base.append(_decode_step_seconds(engine, [0] * c, steps, core))
        t_adapter.append(_decode_step_seconds(engine, rows, steps, core))
    model_bytes = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    adapter_bytes = sum(4 * (m.a.size + m.b.size) for a in adapters.values()
                        for m in a.modules.values())
    return DeploymentTerms(k, c, min(t_base), min(t_adapter), model_bytes, adapter_bytes,
                           memory_budget(), max_loras)


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
