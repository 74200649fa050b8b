"""A tiny model through quantize -> medrt directory -> dequantizing loader, and the checks a
loader makes on config.json."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from medrt_train.quant.format import FORMAT_NAME, FORMAT_VERSION, validate
from medrt_train.quant.gptq import GPTQOptions
from medrt_train.quant.loader import load_dequantized
from medrt_train.quant.quantize import quantize_model
from medrt_train.quant.recipes import load_recipe
from medrt_train.quant.types import QuantFormatError, dequantize, parse_type, quantize_rtn

TOKENS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def _tiny(path: Path, arch: str = "llama", tied: bool = True) -> Path:
    torch.manual_seed(0)
    kw = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "tie_word_embeddings": tied}
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    model.save_pretrained(path)
    return path


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("src") / "llama")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("recipe,tol", [("int8", 0.02), ("paper", 0.15), ("int4", 0.25)])
def test_rtn_roundtrip_matches_the_fake_quantized_model(tmp_path, arch, recipe, tol):
    src = _tiny(tmp_path / "src", arch)
    out = tmp_path / "q"
    quantize_model(src, out, load_recipe(recipe), "rtn", log=lambda _: None)
    loaded = _logits(load_dequantized(out))

    # The same model with each linear weight quantized and dequantized in place.
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ref = _logits(original)
    rec = load_recipe(recipe)
    for name, module in original.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            wt = rec.type_for(name, "linear")
            w = dequantize(wt, quantize_rtn(wt, module.weight.detach().numpy()))
            module.weight.data = torch.from_numpy(w)
    np.testing.assert_allclose(loaded, _logits(original), atol=2e-3)
    # And close to the unquantized model, within what the type costs.
    assert (loaded - ref).abs().max() < tol * ref.abs().max()


CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["gptq", "awq", "awq-gptq"])
def test_calibrated_roundtrip_writes_calibration_and_beats_rtn(tmp_path, arch, method):
    src = _tiny(tmp_path / "src", arch)
    out = tmp_path / "q"
    info = {"data": "unit", "source": "random", "samples": 8, "seq_len": 32, "sha256": "x"}
    section = quantize_model(src, out, load_recipe("int4"), method, CALIB, info,
                             GPTQOptions(block_size=32), log=lambda _: None)
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    # No version 2 type (grouped int8, int4 with mins): the writer keeps version 1.
    assert (q["format"], q["version"]) == (FORMAT_NAME, 1)
    assert q["method"]["name"] == method and q["calibration"] == info
    assert ("awq" in q["method"]) == method.startswith("awq")
    assert ("act_order" in q["method"]) == method.endswith("gptq")
    assert q["modules"]["model.layers.1.mlp.down_proj"] == \
        {"type": "int4", "group_size": 64, "shape": [64, 128]}
    assert section["modules"] == q["modules"]
    assert validate(out)["model.embed_tokens"] == parse_type("f16")
    rtn = tmp_path / "rtn"
    quantize_model(src, rtn, load_recipe("int4"), "rtn", log=lambda _: None)

    # On the text it was calibrated on, the calibrated model is closer to the original.
    def error(path):
        with torch.no_grad():
            return (load_dequantized(path)(CALIB).logits - original(CALIB).logits).pow(2).mean()
    original = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    # GPTQ compensates rounding error (about 0.35x RTN's here); AWQ alone only rescales and
    # clips, which gains less on a random model without loud activation channels (~0.9x).
    assert error(out) < (0.97 if method == "awq" else 0.5) * error(rtn)


def test_untied_lm_head_can_be_quantized(tmp_path, llama):
    out = tmp_path / "q"
    recipe = load_recipe("int8").with_overrides(lm_head="int8")
    quantize_model(llama, out, recipe, "rtn", log=lambda _: None)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["quantization"]["modules"]["lm_head"]["type"] == "int8"
    assert config["quantization"]["modules"]["model.embed_tokens"]["type"] == "f16"
    load_dequantized(out)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, llama) -> Path:
    out = tmp_path_factory.mktemp("q") / "paper"
    quantize_model(llama, out, load_recipe("paper"), "rtn", log=lambda _: None)
    return out


def _broken(quantized: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(quantized, bad)
    config = json.loads((bad / "config.json").read_text())
    edit(config["quantization"])
    (bad / "config.json").write_text(json.dumps(config))
    return bad


def test_validation_rejects_a_missing_tensor(quantized, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(quantized, bad)
    tensors = load_file(bad / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.scales"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(QuantFormatError,
                       match=r"model.layers.0.mlp.up_proj: tensor .*up_proj.scales is missing"):
        load_dequantized(bad)


def test_validation_rejects_a_wrong_version(quantized, tmp_path):
    bad = _broken(quantized, tmp_path, lambda q: q.update(version=FORMAT_VERSION + 97))
    with pytest.raises(QuantFormatError,
                       match=f"quantization.version is {FORMAT_VERSION + 97}; this reader "
                             f"understands versions 1 to {FORMAT_VERSION}"):
        validate(bad)


def test_validation_rejects_a_group_size_that_does_not_divide_the_input(quantized, tmp_path):
    def edit(q):
        q["modules"]["model.layers.1.mlp.gate_proj"] = {"type": "int4", "group_size": 128,
                                                         "shape": [128, 64]}
    bad = _broken(quantized, tmp_path, edit)
    with pytest.raises(QuantFormatError, match="model.layers.1.mlp.gate_proj: group size 128 "
                                               "does not divide the input dimension 64"):
        validate(bad)


def test_validation_rejects_a_wrong_shape_and_unknown_type(quantized, tmp_path):
    def shape(q):
        q["modules"]["model.layers.0.self_attn.q_proj"]["shape"] = [64, 32]
    with pytest.raises(QuantFormatError, match=r"q_proj.qweight is I8\[64, 64\], expected I8"):
        validate(_broken(quantized, tmp_path, shape))
    shutil.rmtree(tmp_path / "bad")

    def kind(q):
        q["modules"]["model.norm"] = {"type": "int3"}
    with pytest.raises(QuantFormatError, match="module model.norm: unknown weight type"):
        validate(_broken(quantized, tmp_path, kind))


def test_shards_and_index_are_written_and_read_back(tmp_path):
    from medrt_train.quant.format import TensorIndex
    from medrt_train.quant.writer import ShardWriter

    writer = ShardWriter(tmp_path, shard_bytes=256)
    arrays = {f"t{i}": np.full((8, 8), i, dtype=np.float16) for i in range(3)}  # 128 B each
    for name, a in arrays.items():
        writer.add(name, a)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"t0": "model-00001-of-00002.safetensors",
                                   "t1": "model-00001-of-00002.safetensors",
                                   "t2": "model-00002-of-00002.safetensors"}
    read = TensorIndex(tmp_path)
    assert read.meta("t2") == ((8, 8), "F16")
    np.testing.assert_array_equal(read.numpy("t1"), arrays["t1"])


def test_quantize_over_an_older_sharded_save_leaves_a_valid_model(tmp_path, llama):
    from medrt_train.cli import main

    out = tmp_path / "out"
    # A previous save in OUT, sharded: its index would otherwise win over the new weights.
    transformers.LlamaForCausalLM.from_pretrained(llama).save_pretrained(
        out, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert main(["quantize", str(llama), str(out), "--recipe", "int8"]) == 0
    assert not (out / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    validate(out)
    model = load_dequantized(out)
    ref = transformers.LlamaForCausalLM.from_pretrained(llama)
    assert (_logits(model) - _logits(ref)).abs().max() < 0.05


def test_quantize_refuses_its_source_as_output_and_names_bad_calibration(tmp_path, llama,
                                                                       capsys):
    from medrt_train.cli import main

    assert main(["quantize", str(llama), str(llama), "--recipe", "int8"]) == 2
    assert "is the source directory" in capsys.readouterr().err
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    assert main(["quantize", str(llama), str(tmp_path / "q"), "--recipe", "int4",
                 "--method", "gptq", "--calib-data", str(bad)]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
