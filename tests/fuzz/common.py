"""Shared harness plumbing: seed corpus directories and the run loop."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris


def corpus_dir(argv: list[str], name: str) -> Path:
    """The corpus directory given on the command line (or build/fuzz-corpus/NAME), added to
    argv for libFuzzer when it was not there."""
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if dirs:
        return Path(dirs[0])
    path = Path("build/fuzz-corpus") / name
    argv.append(str(path))
    return path


def run(name: str, seed: Callable[[Path], None], one_input: Callable[[bytes], None]) -> None:
    argv = list(sys.argv)
    corpus = corpus_dir(argv, name)
    # A file (a crash-* input) is run once by libFuzzer: that reproduces a failure.
    if not corpus.is_file() and (not corpus.is_dir() or not any(corpus.iterdir())):
        corpus.mkdir(parents=True, exist_ok=True)
        seed(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
