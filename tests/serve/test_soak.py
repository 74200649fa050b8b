"""The CI run of scripts/soak.py (60 s, 64 clients): concurrent gRPC and HTTP clients with
disconnects, deadlines and bad requests; every request ends with an allowed status, no KV
block leaks, the server drains and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import medrt

REPO = Path(__file__).resolve().parents[2]


def test_short_soak(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(medrt.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--model", str(tiny_llama),
         "--clients", "64", "--duration", "60", "--threads", "1", "--max-tokens", "32",
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=400,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["unexpected"] == {} and report["leaked_kv_blocks"] == 0
    kinds = {k.split(":")[0] for k in report["outcomes"]}
    assert kinds >= {"stream", "disconnect", "deadline", "bad", "http_stream",
                     "http_disconnect", "http_bad"}
    assert report["requests"] > 200 and report["server_exit_status"] == 0
