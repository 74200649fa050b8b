"""medrt's decoder against transformers on the same tiny random weights.

Tolerances: medrt computes in f32 whatever the stored weight type, so every case compares with
transformers running the same stored weights upcast to f32 (eager attention). Prefill logits
must agree within 1e-4 absolute, greedy tokens exactly. Measured max |diff| for f32, bf16 and
f16 weights alike: 2.3e-5 on the tied Llama (its logits have std ~9), <= 2e-6 on the others.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.tiny_models import DTYPES, MODEL_VOCAB, SPECS, TinyModels
from medrt import _core

LOGIT_TOL = 1e-4
N_GREEDY = 32


def _prompt(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, MODEL_VOCAB, size=n)]


PROMPT = _prompt(20, seed=1)


def _hf(path: Path) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _hf_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def _hf_greedy(model: torch.nn.Module, tokens: list[int], n: int) -> list[int]:
    # No eos: a random model may emit it, and the comparison wants all n tokens.
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            torch.tensor([tokens]),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(tokens) :].tolist()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


Pair = tuple[_core.Model, "torch.nn.Module"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The reference models are tiny: extra torch threads only contend with medrt's pool.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tiny_models: TinyModels) -> Callable[[str, str], Pair]:
    """models(name, dtype) -> (medrt model, transformers model), each loaded once."""
    cache: dict[tuple[str, str], Pair] = {}

    def get(name: str, dtype: str) -> Pair:
        if (name, dtype) not in cache:
            path = tiny_models.path(name, dtype)
            cache[(name, dtype)] = (_core.Model(str(path)), _hf(path))
        return cache[(name, dtype)]

    return get


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_prefill_logits_match_transformers(models, name: str, dtype: str) -> None:
    ours, ref = models(name, dtype)
    got = ours.prefill_logits(PROMPT)
    want = _hf_logits(ref, PROMPT)
    assert got.dtype == np.float32 and got.shape == (len(PROMPT), MODEL_VOCAB)
    # Guard against a vacuous pass: logits of a working model spread over several units.
    assert float(np.std(want)) > 0.3
    assert _max_diff(got, want) <= LOGIT_TOL


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_greedy_tokens_match_transformers(models, name: str, dtype: str) -> None:
    ours, ref = models(name, dtype)
    want = _hf_greedy(ref, PROMPT, N_GREEDY)
    assert len(want) == N_GREEDY
    assert ours.greedy(PROMPT, N_GREEDY) == want
    # Another block size puts the same positions in other blocks; the tokens must not move.
    assert ours.greedy(PROMPT, N_GREEDY, block_size=5) == want


def test_config_reports_the_checkpoint(models) -> None:
    ours, _ = models("llama", "float32")
    cfg = ours.config
    assert cfg["architecture"] == "LlamaForCausalLM"
    assert (cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["vocab_size"] == MODEL_VOCAB and cfg["tie_word_embeddings"] is True
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    assert cfg["eos_token_ids"] == [2]


# Positions far past original_max_position_embeddings (64): the slow, factor-divided frequencies
# now turn through large angles, so an error in the llama3 scaling shows in the logits.
LONG_PROMPT = _prompt(400, seed=2)


def test_tiny_llama_rope_spans_all_llama3_bands(models) -> None:
    """Some frequencies are kept, some interpolated, some divided: all code paths run."""
    cfg = models("llama", "float32")[0].config
    scaling = cfg["rope_scaling"]
    head_dim = cfg["head_dim"]
    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    original = scaling["original_max_position_embeddings"]
    high = original / scaling["high_freq_factor"]
    low = original / scaling["low_freq_factor"]
    assert (wavelen < high).any()
    assert ((wavelen >= high) & (wavelen <= low)).any()
    assert (wavelen > low).any()


def test_llama3_scaling_at_long_positions(models) -> None:
    ours, ref = models("llama", "float32")
    want = _hf_logits(ref, LONG_PROMPT)
    assert _max_diff(ours.prefill_logits(LONG_PROMPT), want) <= LOGIT_TOL
    assert ours.greedy(LONG_PROMPT, 16) == _hf_greedy(ref, LONG_PROMPT, 16)


def test_long_positions_are_sensitive_to_the_scaling(tiny_models: TinyModels, tmp_path: Path) -> None:
    """The same weights without rope scaling give other logits: the test above has teeth."""
    src = tiny_models.path("llama", "float32")
    unscaled = tmp_path / "unscaled"
    shutil.copytree(src, unscaled)
    cfg = json.loads((unscaled / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (unscaled / "config.json").write_text(json.dumps(cfg))
    scaled = _core.Model(str(src)).prefill_logits(LONG_PROMPT)
    plain = _core.Model(str(unscaled)).prefill_logits(LONG_PROMPT)
    assert _max_diff(scaled, plain) > 100 * LOGIT_TOL


def test_bad_input_is_refused(models) -> None:
    ours, _ = models("qwen2", "float32")
    from medrt import errors
    with pytest.raises(errors.InvalidRequest):
        ours.prefill_logits([])
    with pytest.raises(errors.InvalidRequest):
        ours.prefill_logits([1, MODEL_VOCAB])
    with pytest.raises(errors.InvalidRequest):
        ours.greedy([1, 2], -1)
    assert ours.greedy([1, 2], 0) == []
