"""Every input a fuzz harness once crashed on (tests/fuzz/regressions/<harness>/) runs through
that harness's one_input again: it must end in a result or a medrt error, as the harness
requires (tests/fuzz/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
CASES = sorted(p for p in (FUZZ / "regressions").glob("*/*") if p.is_file())


def _harness(name: str):
    pytest.importorskip("atheris")
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_fuzz_finding_stays_fixed(case: Path) -> None:
    _harness(case.parent.name).one_input(case.read_bytes())


def test_there_are_regressions() -> None:
    assert {p.parent.name for p in CASES} >= {"tokenizer_files", "gguf_import"}
