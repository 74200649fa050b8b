"""Engine selection: which device runs the model, and why.

``device="auto"`` picks CUDA when this medrt was built with the CUDA backend and a usable
device is present, otherwise the CPU. ``MEDRT_DEVICE`` (auto, cpu or cuda) overrides what the
caller asked for. ``medrt info`` prints the choice and the reason (docs/cuda.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from medrt.errors import InvalidRequest

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    """The device the engine will use, the reason, and the CUDA status it was based on."""

    device: str
    reason: str
    requested: str
    cuda: dict[str, Any] = field(default_factory=dict)


def cuda_status() -> dict[str, Any]:
    """The CUDA backend's status as libmedrt reports it (built, available, reason, devices)."""
    from medrt import _core

    return dict(_core.cuda_status())


def engine_runs_cuda() -> bool:
    """Whether this build's engine takes a device in its config (the CUDA model runner)."""
    from medrt import _core

    return hasattr(_core.EngineConfig(), "device")


def select_device(requested: str = "auto", status: dict[str, Any] | None = None) -> DeviceChoice:
    """Resolves ``requested`` (or ``MEDRT_DEVICE``) to "cpu" or "cuda" with the reason.

    Raises InvalidRequest for an unknown name, or for "cuda" when CUDA cannot run here (the
    message says why).
    """
    env = os.environ.get("MEDRT_DEVICE", "").strip().lower()
    source = "device argument"
    if env:
        if env not in DEVICES:
            raise InvalidRequest(f"MEDRT_DEVICE={env!r}: expected one of {', '.join(DEVICES)}")
        requested, source = env, "MEDRT_DEVICE"
    requested = requested.lower()
    if requested not in DEVICES:
        raise InvalidRequest(f"device={requested!r}: expected one of {', '.join(DEVICES)}")
    st = cuda_status() if status is None else status
    usable, why_not = bool(st.get("available")), str(st.get("reason", ""))
    if usable and not engine_runs_cuda():
        usable = False
        why_not = "the CUDA backend is built but this engine's model runner takes no device yet"
    if requested == "cpu":
        return DeviceChoice("cpu", f"cpu requested ({source})", requested, st)
    if requested == "cuda":
        if not usable:
            raise InvalidRequest(f"device 'cuda' ({source}) cannot run here: {why_not}")
        return DeviceChoice("cuda", f"cuda requested ({source})", requested, st)
    if usable:
        dev = st["devices"][0]
        return DeviceChoice("cuda", f"auto: CUDA device 0 ({dev['name']}) is usable", requested, st)
    return DeviceChoice("cpu", f"auto: CUDA not usable ({why_not})", requested, st)


def describe(choice: DeviceChoice) -> list[str]:
    """Lines for ``medrt info``: the choice and reason, the build, and every CUDA device."""
    st = choice.cuda
    lines = [f"device: {choice.device}", f"reason: {choice.reason}"]
    if st.get("built"):
        rt = int(st.get("runtime_version", 0))
        drv = int(st.get("driver_version", 0))
        lines.append(
            f"build: CUDA backend built (runtime {rt // 1000}.{rt % 1000 // 10}, "
            f"sm {st.get('archs', '')}); driver "
            + (f"{drv // 1000}.{drv % 1000 // 10}" if drv else "none")
        )
    else:
        lines.append("build: CPU only (no CUDA backend in this build)")
    for d in st.get("devices", []):
        lines.append(
            f"cuda:{d['index']}: {d['name']}, compute capability {d['compute_capability']}, "
            f"{d['total_memory'] / 2**30:.1f} GiB ({d['free_memory'] / 2**30:.1f} GiB free), "
            f"{d['multiprocessors']} SMs"
        )
    return lines
