"""The medrt.v1 stubs are generated from proto/medrt/v1/medrt.proto (never committed): into
the medrt home on first import, again when the .proto changes, and from the copy of the
.proto that an installed wheel carries inside the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import medrt

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto" / "medrt" / "v1" / "medrt.proto"
PRINT_STUBS = ("from medrt.v1 import medrt_pb2, medrt_pb2_grpc; "
               "print(medrt_pb2.__file__); "
               "print(' '.join(m.name for m in "
               "medrt_pb2.DESCRIPTOR.services_by_name['Medrt'].methods))")


def _run(pythonpath: Path, home: Path) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), MEDRT_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", PRINT_STUBS], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.split("\n")


def test_no_generated_code_in_the_tree() -> None:
    package = Path(medrt.__file__).parent
    assert not list(package.rglob("*_pb2*.py"))


def test_generated_into_the_home_from_the_proto(tmp_path: Path) -> None:
    rpcs = re.findall(r"^\s*rpc (\w+)\(", PROTO.read_text(), flags=re.MULTILINE)
    path, methods = _run(Path(medrt.__file__).parent.parent, tmp_path)[:2]
    assert Path(path).is_relative_to(tmp_path / "proto")
    assert methods.split() == rpcs


def test_installed_layout_and_regeneration(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(Path(medrt.__file__).parent, site / "medrt",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    installed = site / "medrt" / "proto" / "medrt" / "v1" / "medrt.proto"
    installed.parent.mkdir(parents=True, exist_ok=True)  # an installed medrt carries it
    shutil.copy(PROTO, installed)
    first = _run(site, tmp_path / "home")[0]
    # an edited .proto (a new RPC) gets new stubs, not the cached ones
    text = installed.read_text().replace(
        "  rpc Abort(AbortRequest) returns (AbortResponse);",
        "  rpc Abort(AbortRequest) returns (AbortResponse);\n"
        "  rpc Ping(AbortRequest) returns (AbortResponse);")
    installed.write_text(text)
    second, methods = _run(site, tmp_path / "home")[:2]
    assert second != first and methods.split()[-1] == "Ping"
