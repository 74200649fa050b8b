"""The shipped YAML configs name only real settings of their stage; accelerate configs parse."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import yaml
from medrt_train import config as cfg
from medrt_train.cli import STAGES

CONFIGS = Path(__file__).parents[2] / "training" / "configs"
STAGE_OF = {"corpus_r1_70b.yaml": "corpus", "sft_teacher_qlora.yaml": "sft",
            "distill_r1_70b_to_7b.yaml": "distill"}


@pytest.mark.parametrize("name", sorted(STAGE_OF))
def test_stage_config_resolves(name: str) -> None:
    stage = STAGE_OF[name]
    parser = argparse.ArgumentParser()
    importlib.import_module(STAGES[stage][0]).add_arguments(parser)
    args = cfg.resolve(parser.parse_args(["--config", str(CONFIGS / name)]))
    values = yaml.safe_load((CONFIGS / name).read_text())
    for key, value in values.items():
        assert getattr(args, key) == (Path(value) if isinstance(getattr(args, key), Path)
                                      else value)


def test_accelerate_configs() -> None:
    single = yaml.safe_load((CONFIGS / "accelerate_single_gpu.yaml").read_text())
    assert single["num_processes"] == 1 and single["mixed_precision"] == "bf16"
    fsdp = yaml.safe_load((CONFIGS / "accelerate_fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["num_processes"] > 1
    assert fsdp["fsdp_config"]["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert "LlamaDecoderLayer" in fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    assert fsdp["fsdp_config"]["fsdp_use_orig_params"] is True
