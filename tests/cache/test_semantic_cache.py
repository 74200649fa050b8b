"""medrt.SemanticCache on the real embedder: tiers, scope, guard, PHI, limits, persistence."""

from __future__ import annotations

import time
from pathlib import Path

import medrt
import numpy as np
import pytest
from medrt import SamplingParams
from medrt.errors import InvalidRequest

GREEDY = SamplingParams(temperature=0, max_tokens=64)
Q = "What is the maximum daily dose of paracetamol for a child of 20 kg?"
PARA = "What's the max daily dose of paracetamol for a 20 kg child?"


@pytest.fixture
def cache(tmp_path: Path, embedder):
    c = medrt.SemanticCache(tmp_path / "c", embedder=embedder, a=0.3, threshold=0.8)
    yield c
    c.close()


def test_exact_then_paraphrase_then_disk_tier(cache, embedder, tmp_path: Path) -> None:
    assert cache.store(Q, "A20", sampling=GREEDY)
    exact = cache.lookup("  what is the MAXIMUM daily dose of paracetamol for a child of 20 kg ",
                         sampling=GREEDY).hit
    assert exact is not None and exact.tier == "exact" and exact.score == 1.0
    hit = cache.lookup(PARA, sampling=GREEDY).hit
    assert hit is not None and hit.tier == "memory" and hit.answer == "A20"
    assert hit.matched_question == Q and 0.8 <= hit.score < 1.0
    cache.close()
    # A new process: the memory tier is empty, the disk tier answers and promotes the entry.
    again = medrt.SemanticCache(tmp_path / "c", embedder=embedder, a=0.3, threshold=0.8)
    try:
        hit = again.lookup(PARA, sampling=GREEDY).hit
        assert hit is not None and hit.tier == "disk" and hit.answer == "A20"
        assert again.lookup(PARA, sampling=GREEDY).hit.tier == "memory"
    finally:
        again.close()


def test_a_new_answer_replaces_the_old_in_both_tiers(cache) -> None:
    cache.store(Q, "old", sampling=GREEDY)
    cache.store(Q, "new", sampling=GREEDY)  # cache="refresh" stores again under the same text
    assert len(cache) == 1 and len(cache.memory) == 1
    assert cache.lookup(Q, sampling=GREEDY).hit.answer == "new"
    assert cache.lookup(PARA, sampling=GREEDY).hit.answer == "new"


def test_guard_refuses_what_the_score_accepts(tmp_path: Path, embedder) -> None:
    # A low threshold lets every near-duplicate through the score; the guard must stop them.
    with medrt.SemanticCache(tmp_path, embedder=embedder, threshold=0.5) as c:
        c.store(Q, "A20", sampling=GREEDY)
        for q, reason in [
            (Q.replace("20 kg", "40 kg"), "number"),
            (Q.replace("20 kg", "20 lb"), "number"),
            (Q.replace("paracetamol", "ibuprofen"), "entity"),
            ("What is the maximum daily dose of paracetamol for an adult of 20 kg?",
             "population"),
            ("Why is paracetamol not given to a child of 20 kg?", "negation"),
        ]:
            r = c.lookup(q, sampling=GREEDY)
            assert r.hit is None and r.refused_hit == reason, (q, r)
        # The synonym is the same drug: a hit.
        r = c.lookup(Q.replace("paracetamol", "acetaminophen"), sampling=GREEDY)
        assert r.hit is not None and r.hit.answer == "A20"
    with medrt.SemanticCache(tmp_path / "noguard", embedder=embedder, threshold=0.5,
                             guard=False) as c:
        c.store(Q, "A20", sampling=GREEDY)
        assert c.lookup(Q.replace("20 kg", "40 kg"), sampling=GREEDY).hit is not None


def test_scope_keys_isolate_entries(cache) -> None:
    cache.store(Q, "A20", tenant="hospital-a", model="m1", category="medication",
                sampling=GREEDY)
    same = {"tenant": "hospital-a", "model": "m1", "category": "medication", "sampling": GREEDY}
    assert cache.lookup(Q, **same).hit is not None
    for change in ({"tenant": "hospital-b"}, {"model": "m2"}, {"category": "emergency"},
                   {"sampling": SamplingParams(temperature=0, max_tokens=65)}):
        assert cache.lookup(Q, **{**same, **change}).hit is None, change
    # The seed does not matter for greedy requests, but does for sampled ones.
    assert cache.lookup(Q, **{**same, "sampling": SamplingParams(temperature=0, max_tokens=64,
                                                                  seed=7)}).hit is not None


def test_adversarial_tenant_gets_no_hit(cache, embedder) -> None:
    questions = [f"What is the usual dose of drug number {i} for adults?" for i in range(40)]
    questions += [Q, PARA, "How long does a sprained ankle take to heal?"]
    cache.store_many([{"question": q, "answer": f"secret-{i}", "tenant": "A", "sampling": GREEDY}
                      for i, q in enumerate(questions)])
    for q in questions:  # tenant B sends tenant A's exact questions (and near copies)
        for probe in (q, q.upper(), q + " please"):
            r = cache.lookup(probe, tenant="B", sampling=GREEDY)
            assert r.hit is None
    assert all(cache.lookup(q, tenant="A", sampling=GREEDY).hit for q in questions)
    # A tenant that leaves is forgotten in both tiers.
    assert cache.delete_tenant("A") == len(questions) and len(cache) == 0
    assert len(cache.memory) == 0 and cache.lookup(Q, tenant="A", sampling=GREEDY).hit is None


def test_patient_context_is_never_stored_or_served(cache) -> None:
    assert not cache.store(Q, "A20", sampling=GREEDY, patient_context=True)
    assert len(cache) == 0
    cache.store(Q, "A20", sampling=GREEDY)
    r = cache.lookup(Q, sampling=GREEDY, patient_context=True)
    assert r.hit is None and r.refused == "patient_context"
    phi_q = "Mr. Jones (MRN 4471223) asks: " + Q
    assert not cache.store(phi_q, "x", sampling=GREEDY)
    assert cache.lookup(phi_q, sampling=GREEDY).refused == "phi"
    assert len(cache) == 1


def test_only_deterministic_requests_are_stored(cache, tmp_path, embedder) -> None:
    sampled = SamplingParams(temperature=0.8, max_tokens=64)
    assert not cache.store(Q, "A", sampling=sampled)
    assert cache.lookup(Q, sampling=sampled).refused == "nondeterministic"
    seeded = SamplingParams(temperature=0.8, max_tokens=64, seed=3)
    assert cache.store(Q, "A", sampling=seeded)
    assert cache.lookup(Q, sampling=seeded).hit is not None
    with medrt.SemanticCache(tmp_path / "any", embedder=embedder,
                             store_nondeterministic=True) as c:
        assert c.store(Q, "A", sampling=sampled)


def test_memory_tier_lru_bounds_and_ttl(tmp_path: Path, embedder) -> None:
    with medrt.SemanticCache(tmp_path, embedder=embedder, memory_entries=3) as c:
        qs = [f"How is condition {i} treated in adults?" for i in range(5)]
        c.store_many([{"question": q, "answer": str(i), "sampling": GREEDY} for i, q in enumerate(qs)])
        assert len(c.memory) == 3 and len(c) == 5
        assert c.lookup(qs[0], sampling=GREEDY).hit.tier == "exact"  # from disk, promoted
        assert qs[0] in {e.question for e in c.memory._lru.values()}
    with medrt.SemanticCache(tmp_path / "b", embedder=embedder, memory_bytes=5000) as c:
        c.store_many([{"question": f"Question number {i} about asthma inhalers?",
                           "answer": "x" * 500, "sampling": GREEDY} for i in range(10)])
        assert c.memory.bytes <= 5000 and len(c.memory) < 10
    with medrt.SemanticCache(tmp_path / "ttl", embedder=embedder, ttl_seconds=0.3) as c:
        c.store(Q, "A20", sampling=GREEDY)
        assert c.lookup(PARA, sampling=GREEDY).hit is not None
        time.sleep(0.4)
        assert c.lookup(PARA, sampling=GREEDY).hit is None
        assert c.lookup(Q, sampling=GREEDY).hit is None


def test_model_change_invalidates_everything(tmp_path: Path, embedder) -> None:
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:
        c.bind_model("fp-1")
        c.store(Q, "A20", sampling=GREEDY)
        assert c.lookup(Q, sampling=GREEDY).hit is not None
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:
        c.bind_model("fp-2")
        assert len(c) == 0 and c.lookup(Q, sampling=GREEDY).hit is None


def test_bad_settings_are_refused(tmp_path: Path, embedder) -> None:
    for kw, msg in [({"a": 1.5}, "a must be"), ({"threshold": 2}, "threshold"),
                    ({"top_k": 0}, "positive"), ({"ttl_seconds": 0}, "ttl_seconds"),
                    ({"ivf_min_entries": 0}, "positive"), ({"nprobe": 0}, "positive")]:
        with pytest.raises(InvalidRequest, match=msg):
            medrt.SemanticCache(tmp_path, embedder=embedder, **kw)
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c, \
            pytest.raises(InvalidRequest, match="tenant"):
        c.lookup(Q, tenant="", sampling=GREEDY)


def test_lookup_latency_does_not_depend_on_other_tenants(tmp_path: Path, embedder) -> None:
    """Two-sample KS test over 500 probes: does tenant B's cache content show in tenant A's
    lookup times? Tenant B holds 2,000 entries, among them exactly (text and vector) half of
    the questions tenant A then asks; A's probes of both halves are asked in one random
    order, so load on the machine falls on both alike. Query vectors are precomputed so the
    timing is the cache's own work."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    dim = embedder.dim

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    own, filler, probes = unit(200), unit(1750), unit(500)
    probe_q = [f"probe question {i}" for i in range(len(probes))]
    held = rng.permutation(len(probes)) < len(probes) // 2  # the probes B also holds
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:
        c.store_many([{"question": f"tenant a question {i}", "answer": "a", "tenant": "A",
                       "sampling": GREEDY} for i in range(len(own))], own)
        b_q = [q for q, h in zip(probe_q, held) if h]
        b_q += [f"tenant b question {i}" for i in range(len(filler))]
        c.store_many([{"question": q, "answer": "b", "tenant": "B", "sampling": GREEDY}
                      for q in b_q], np.concatenate([probes[held], filler]))
        for i in rng.permutation(len(probes))[:50]:  # warm up
            c.lookup(probe_q[i], tenant="A", sampling=GREEDY, embedding=probes[i])
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in rng.permutation(len(probes)):
            t = time.perf_counter()
            r = c.lookup(probe_q[i], tenant="A", sampling=GREEDY, embedding=probes[i])
            times[bool(held[i])].append(time.perf_counter() - t)
            assert r.hit is None or r.hit.answer == "a"
    assert len(times[False]) == len(times[True]) == 250
    # A real side channel over 250 + 250 probes drives p far below 0.001; at 0.05 the test
    # failed one run in twenty on equal distributions (it did: medians 59.91 and 59.93 us).
    p = ks_2samp(times[False], times[True]).pvalue
    assert p > 0.001, (p, np.median(times[False]), np.median(times[True]))
