"""The architecture registry as Python sees it: _core.architectures() lists each entry's kind,
and is_encoder (which LLM uses to route a directory to the embedder) reads it instead of
naming BERT itself."""

import json

from medrt import _core
from medrt.embedder import is_encoder


def test_registry_lists_decoders_and_encoders():
    kinds = {a["name"]: (a["model_type"], a["kind"]) for a in _core.architectures()}
    assert kinds["LlamaForCausalLM"] == ("llama", "decoder")
    assert kinds["Qwen2ForCausalLM"] == ("qwen2", "decoder")
    assert kinds["BertModel"] == ("bert", "encoder")


def test_is_encoder_looks_up_model_type_then_class(tmp_path):
    cases = {
        "bert": ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, True),
        "class_only": ({"architectures": ["BertModel"]}, True),
        "llama": ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, False),
        "unknown": ({"model_type": "gpt2"}, False),
        "not_a_dict": ([1, 2], False),
    }
    for name, (config, want) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        assert is_encoder(tmp_path / name) is want, name
    assert is_encoder(tmp_path / "missing") is False
