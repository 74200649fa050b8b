"""AWQ scaling and the calibrated layer loop on tiny layers (awq.py, calibrated.py)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from medrt_train.quant.awq import apply_scale, decoder_scale_groups, search_scale
from medrt_train.quant.calibrated import stages
from medrt_train.quant.types import dequantize, parse_type, quantize_rtn


def _loud_inputs(n=2048, width=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    x[:, :6] *= 20  # a few loud channels, as real activations have
    return x


@pytest.mark.parametrize("spec", ["int4-g64", "nf4", "int6"])
def test_awq_scale_lowers_the_output_error_of_rounding(spec):
    wt = parse_type(spec)
    x = _loud_inputs()
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(1))
    ref = x @ w.T

    def err(w_scaled, s_in):
        wq = torch.from_numpy(dequantize(wt, quantize_rtn(wt, w_scaled.numpy())))
        return float(((x / s_in) @ wq.T - ref).pow(2).mean())

    s, alpha = search_scale(x, [w], [wt])
    assert alpha > 0 and s.shape == (128,)
    assert err(w * s, s) < 0.8 * err(w, torch.ones(128))


def _layer(arch):
    kw = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    base = model.get_decoder()
    for p in base.layers[0].parameters():  # non-trivial norms and biases
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 8, 64)
    cos_sin = base.rotary_emb(x, torch.arange(8)[None])
    return cfg, base.layers[0], x, cos_sin


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_folding_scales_keeps_the_full_precision_layer_unchanged(arch):
    cfg, layer, x, cos_sin = _layer(arch)
    with torch.no_grad():
        before = layer(x, position_embeddings=cos_sin)
        for group in decoder_scale_groups(layer, cfg):
            rows = layer.get_submodule(group.prev).weight.shape[0]
            apply_scale(layer, group, torch.rand(rows) * 3 + 0.2)
        after = layer(x, position_embeddings=cos_sin)
    before = before[0] if isinstance(before, tuple) else before
    after = after[0] if isinstance(after, tuple) else after
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_value_heads_shared_by_query_heads_share_their_scale():
    cfg, layer, _, _ = _layer("llama")
    o_group = decoder_scale_groups(layer, cfg)[1]
    # 4 query heads of 16 read 2 value heads: query heads 0,1 read value head 0.
    assert o_group.prev == "self_attn.v_proj" and o_group.modules == ("self_attn.o_proj",)
    rows = o_group.channel_rows
    assert rows.shape == (64,) and rows[0] == rows[16] == 0 and rows[32] == rows[48] == 16
    assert rows[17] == 1 and rows.max() == 31


def test_stages_follow_the_order_modules_run_and_the_inputs_they_share():
    _, layer, x, cos_sin = _layer("llama")
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert stages(layer, linears, x, cos_sin) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
