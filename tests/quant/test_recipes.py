"""Recipes: built-ins, the YAML files in training/recipes, user rules, byte plans."""
import json
from pathlib import Path

import pytest
from medrt_train.quant.recipes import BUILTIN, load_recipe, recipe_from_dict
from medrt_train.quant.types import QuantFormatError, parse_type

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
MODULES = [("model.layers.3.self_attn.q_proj", "linear"),
           ("model.layers.3.mlp.down_proj", "linear"), ("model.layers.0.mlp.gate_proj", "linear"),
           ("model.embed_tokens", "embedding"),
           ("lm_head", "lm_head"), ("model.norm", "other")]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_yaml_files_equal_the_builtins(name):
    from_file = load_recipe(str(RECIPES / f"quant_{name}.yaml"))
    builtin = load_recipe(name)
    assert from_file.method == builtin.method
    for module, kind in MODULES:
        assert from_file.type_for(module, kind) == builtin.type_for(module, kind), module


def test_paper_recipe_types():
    paper = load_recipe("paper")
    assert [str(paper.type_for(m, k)) for m, k in MODULES] == \
        ["int8", "nf4", "nf4", "f16", "f16", "f32"]


def test_user_rules_first_match_wins():
    r = load_recipe(str(RECIPES / "quant_rules_example.yaml"))
    assert [str(r.type_for(m, k)) for m, k in MODULES] == \
        ["int8", "int4-g128", "int8", "f16", "int8", "f32"]
    assert r.method == "gptq"


def test_overrides_and_errors():
    assert load_recipe("paper").with_overrides(lm_head="int8").type_for("lm_head", "lm_head") \
        == parse_type("int8")
    with pytest.raises(QuantFormatError, match="rule 0 .*: int4 group size 48"):
        recipe_from_dict({"rules": [{"match": "*", "type": "int4", "group_size": 48}]})
    with pytest.raises(QuantFormatError, match="unknown keys"):
        recipe_from_dict({"rulez": []})
    with pytest.raises(QuantFormatError, match="neither a built-in"):
        load_recipe("no-such-recipe")
    assert recipe_from_dict({"method": "awq-gptq"}).method == "awq-gptq"
    with pytest.raises(QuantFormatError, match="method 'smoothquant' is not one of rtn, gptq"):
        recipe_from_dict({"method": "smoothquant"})


def test_paper_cut_on_7b_shapes(tmp_path):
    pytest.importorskip("transformers")
    from medrt_train.quant.sizes import plan_bytes, summarize

    # DeepSeek-R1-Distill-Qwen-7B shapes (docs/quantization.md); config only, no weights.
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
              "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
              "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    s = summarize(plan_bytes(tmp_path, load_recipe("paper")))
    assert s["linear_cut"] >= 0.647  # the paper's figure, on the linear layers
    per_layer_f16 = 2 * (2 * 3584 * 3584 + 2 * 512 * 3584 + 3 * 3584 * 18944)
    assert s["linear_f16_bytes"] == 28 * per_layer_f16 + 28 * 2 * (3584 + 512 + 512)
