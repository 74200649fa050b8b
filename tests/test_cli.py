"""The `medrt` command, run as a separate process on a tiny model, against medrt.LLM in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import medrt
import pytest

# The child process must import the same medrt as this one (installed, or python/ in a dev tree).
MEDRT_ROOT = Path(medrt.__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "medrt-home"


def run_medrt(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MEDRT_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(MEDRT_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "medrt", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _greedy(n: int) -> medrt.SamplingParams:
    return medrt.SamplingParams(max_tokens=n, temperature=0.0)


def test_models_lists_known_and_pulled(home: Path, tiny_llama: Path) -> None:
    r = run_medrt(home, "models")
    assert r.returncode == 0, r.stderr
    assert str(home) in r.stdout
    assert "smollm2-135m-instruct" in r.stdout and "(not pulled)" in r.stdout

    pulled = home / "models" / "my-tiny"
    shutil.copytree(tiny_llama, pulled)
    (pulled / ".medrt-complete").write_text("{}\n")
    r = run_medrt(home, "models")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("my-tiny"))
    assert str(pulled) in line and ("KB" in line or "MB" in line)


def test_generate_matches_llm(home: Path, tiny_llama: Path) -> None:
    with medrt.LLM(tiny_llama) as llm:
        want = llm.generate("The patient reports", _greedy(12))[0].outputs[0].text
    r = run_medrt(home, "generate", "--model", str(tiny_llama), "--max-tokens", "12",
                  "The", "patient", "reports")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    assert want


def test_generate_passes_penalty_and_min_p(home: Path, tiny_llama: Path) -> None:
    """--repetition-penalty and --min-p reach the sampler: the command prints what the API
    gives for the same parameters, and the penalty changes the greedy text."""
    params = medrt.SamplingParams(max_tokens=24, temperature=0.0, repetition_penalty=1.8,
                                  min_p=0.05)
    with medrt.LLM(tiny_llama) as llm:
        plain = llm.generate("The patient reports", _greedy(24))[0].outputs[0].text
        want = llm.generate("The patient reports", params)[0].outputs[0].text
    assert want != plain
    r = run_medrt(home, "generate", "--model", str(tiny_llama), "--max-tokens", "24",
                  "--repetition-penalty", "1.8", "--min-p", "0.05", "The patient reports")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = run_medrt(home, "generate", "--model", str(tiny_llama), "--repetition-penalty", "0",
                  "hi")
    assert r.returncode != 0 and "repetition_penalty" in r.stderr


def test_chat_one_shot_and_repl_keep_history(home: Path, tiny_qwen2: Path) -> None:
    first, second = "Is ibuprofen safe?", "And with food?"
    with medrt.LLM(tiny_qwen2) as llm:
        system = {"role": "system", "content": "Be brief."}
        a1 = llm.chat([system, {"role": "user", "content": first}],
                      _greedy(10))[0].outputs[0].text
        history = [system, {"role": "user", "content": first},
                   {"role": "assistant", "content": a1}, {"role": "user", "content": second}]
        a2 = llm.chat(history, _greedy(10))[0].outputs[0].text

    r = run_medrt(home, "chat", "--model", str(tiny_qwen2), "--max-tokens", "10",
                  "--system", "Be brief.", "--prompt", first)
    assert r.returncode == 0, r.stderr
    assert r.stdout == a1 + "\n"

    r = run_medrt(home, "chat", "--model", str(tiny_qwen2), "--max-tokens", "10",
                  "--system", "Be brief.", stdin=f"{first}\n\n{second}\n/exit\nnot read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == a1 + "\n" + a2 + "\n"

    # A turn the model cannot take (longer than its context) is reported and skipped; the
    # conversation goes on without it. End of input quits, with status 1 when input was piped,
    # so that a script feeding questions learns one got no answer.
    too_long = "pain " * 3000
    r = run_medrt(home, "chat", "--model", str(tiny_qwen2), "--max-tokens", "10",
                  "--system", "Be brief.", stdin=f"{too_long}\n{first}\n")
    assert r.returncode == 1 and r.stdout == a1 + "\n" and "[stopped]" in r.stderr
    assert "[stopped]" in r.stderr and "max_model_len" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_gguf(home: Path, tiny_qwen2: Path, tmp_path: Path) -> None:
    from test_gguf_import import write_gguf

    gguf_file = write_gguf(tiny_qwen2, tmp_path / "tiny.gguf")
    out = tmp_path / "converted"
    r = run_medrt(home, "import-gguf", str(gguf_file), str(out), "--dtype", "f32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    with medrt.LLM(out) as a, medrt.LLM(tiny_qwen2) as b:
        prompt = "Vaccination prevents influenza"
        assert a.generate(prompt, _greedy(8))[0].outputs[0].token_ids == \
            b.generate(prompt, _greedy(8))[0].outputs[0].token_ids


@pytest.mark.parametrize("args", [
    ("generate", "--model", "/nonexistent/model", "hello"),
    ("chat", "--model", "no-such-model", "--prompt", "hi"),
    ("pull", "no-such-model"),
    ("import-gguf", "/nonexistent.gguf", "/tmp/never-written"),
    ("import-gguf", "/nonexistent.gguf", "/"),  # not an empty directory
])
def test_errors_are_one_line(home: Path, args: tuple[str, ...]) -> None:
    r = run_medrt(home, *args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medrt: error: ")


def test_bad_sampling_value_is_an_error(home: Path, tiny_llama: Path) -> None:
    r = run_medrt(home, "generate", "--model", str(tiny_llama), "--temperature", "-1", "hi")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "temperature" in r.stderr


def test_pull_names_every_model_it_pulls(home: Path) -> None:
    r = run_medrt(home, "pull", "no-such-model")
    assert r.returncode != 0 and "known: all-minilm-l6-v2, smollm2-135m-instruct" in r.stderr
