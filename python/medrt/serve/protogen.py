"""Generates the medrt.v1 Python stubs from proto/medrt/v1/medrt.proto with grpcio-tools.

Generated code is never committed. The first import of ``medrt.v1`` runs protoc (in process,
through grpc_tools) into ``<medrt home>/proto/<key>/``, where the key hashes the .proto text and
the grpcio-tools and protobuf versions, so an edited .proto or a new toolchain regenerates and
stale stubs are never used. The directory appears atomically (written aside, then renamed), so
processes that start together do not see half-written files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

PROTO_NAME = "medrt/v1/medrt.proto"
_GENERATED = ("medrt_pb2.py", "medrt_pb2_grpc.py")


def proto_root() -> Path:
    """The include root holding medrt/v1/medrt.proto: inside the installed package (the wheel
    ships the .proto there) or the repository's top-level proto/ folder in a checkout."""
    package_dir = Path(__file__).resolve().parent.parent  # .../medrt
    candidates = [package_dir / "proto", package_dir.parent.parent / "proto"]
    for root in candidates:
        if (root / PROTO_NAME).is_file():
            return root
    raise FileNotFoundError(f"{PROTO_NAME} not found under {[str(c) for c in candidates]}")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cache_base() -> Path:
    from medrt.models.registry import medrt_home

    return medrt_home() / "proto"


def generated_dir() -> Path:
    """A directory whose medrt/v1/ holds medrt_pb2.py and medrt_pb2_grpc.py for this .proto."""
    root = proto_root()
    text = (root / PROTO_NAME).read_bytes()
    key = hashlib.sha256(text + _version("grpcio-tools").encode() +
                         _version("protobuf").encode()).hexdigest()[:16]
    for base in (_cache_base(), Path(tempfile.gettempdir()) / f"medrt-proto-{os.getuid()}"):
        out = base / key
        if all((out / "medrt" / "v1" / name).is_file() for name in _GENERATED):
            return out
        try:
            _generate(root, out)
            return out
        except OSError:
            continue  # e.g. a read-only medrt home: try the next place
    raise OSError("cannot write the generated medrt.v1 stubs to the medrt home or the temp dir")


def _generate(root: Path, out: Path) -> None:
    from grpc_tools import protoc

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=out.parent))
    try:
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        args = ["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(root / PROTO_NAME)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {root / PROTO_NAME}")
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "medrt" / "v1" / _GENERATED[0]).is_file():
                raise  # not another process winning the race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
