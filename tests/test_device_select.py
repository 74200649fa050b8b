"""Engine selection (medrt.device) and `medrt info`, on this build and with given statuses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from medrt import _core
from medrt.device import describe, select_device
from medrt.errors import InvalidRequest

NO_CUDA = {"built": False, "available": False, "reason": "built without CUDA", "devices": []}
GPU = {
    "built": True,
    "available": True,
    "reason": "ok",
    "archs": "80,90",
    "runtime_version": 13000,
    "driver_version": 13000,
    "devices": [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0",
                 "total_memory": 150 * 2**30, "free_memory": 140 * 2**30,
                 "multiprocessors": 132}],
}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDRT_DEVICE", raising=False)


def test_this_build_reports_its_cuda_status_and_auto_falls_back_to_cpu() -> None:
    st = _core.cuda_status()
    assert set(st) >= {"built", "available", "reason", "devices"}
    if not st["available"]:
        choice = select_device("auto")
        assert choice.device == "cpu"
        assert st["reason"] in choice.reason
        with pytest.raises(InvalidRequest, match="cannot run here"):
            select_device("cuda")
    if not st["built"]:
        assert "MEDRT_CUDA=ON" in st["reason"]


def test_auto_picks_cuda_only_when_the_engine_can_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medrt.device.engine_runs_cuda", lambda: True)
    choice = select_device("auto", GPU)
    assert choice.device == "cuda" and "H200" in choice.reason
    monkeypatch.setattr("medrt.device.engine_runs_cuda", lambda: False)
    choice = select_device("auto", GPU)
    assert choice.device == "cpu" and "runner" in choice.reason
    assert select_device("auto", NO_CUDA).device == "cpu"


def test_medrt_device_overrides_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medrt.device.engine_runs_cuda", lambda: True)
    monkeypatch.setenv("MEDRT_DEVICE", "cpu")
    choice = select_device("cuda", GPU)
    assert choice.device == "cpu" and "MEDRT_DEVICE" in choice.reason
    monkeypatch.setenv("MEDRT_DEVICE", "cuda")
    with pytest.raises(InvalidRequest, match="MEDRT_DEVICE.*built without CUDA"):
        select_device("auto", NO_CUDA)
    monkeypatch.setenv("MEDRT_DEVICE", "tpu")
    with pytest.raises(InvalidRequest, match="MEDRT_DEVICE='tpu'"):
        select_device("auto", GPU)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="device='gpu0'"):
        select_device("gpu0", NO_CUDA)


def test_describe_names_device_memory_compute_capability_and_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("medrt.device.engine_runs_cuda", lambda: True)
    text = "\n".join(describe(select_device("auto", GPU)))
    assert "device: cuda" in text
    assert "compute capability 9.0" in text and "150.0 GiB" in text
    assert "runtime 13.0, sm 80,90" in text
    assert "CPU only" in "\n".join(describe(select_device("auto", NO_CUDA)))


def test_medrt_info_prints_the_choice_and_why() -> None:
    out = subprocess.run([sys.executable, "-m", "medrt", "info"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.startswith("device: ")
    assert "reason: " in out and "build: " in out
    bad = subprocess.run([sys.executable, "-m", "medrt", "info", "--device", "x"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "device='x'" in bad.stderr


def test_the_engine_refuses_a_bad_device_or_device_map(tiny_llama: Path) -> None:
    def engine(**kw: object) -> object:
        return _core.Engine(_core.EngineConfig(model_dir=str(tiny_llama), num_blocks=8, **kw))

    with pytest.raises(InvalidRequest, match="device 'tpu'"):
        engine(device="tpu")
    with pytest.raises(InvalidRequest, match="device_map 'everywhere'"):
        engine(device_map="everywhere")
    with pytest.raises(InvalidRequest, match="device_map 'auto:-5'"):
        engine(device="cuda", device_map="auto:-5")
    if not _core.cuda_status()["available"]:  # the reason CUDA cannot run, from cuda_status()
        with pytest.raises(InvalidRequest, match=re.escape(_core.cuda_status()["reason"][:20])):
            engine(device="cuda")
    stats = engine(device="cpu").stats()
    assert stats["device_layers"] == 0 and stats["graph_replays"] == 0
