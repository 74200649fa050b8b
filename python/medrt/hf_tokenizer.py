"""The `tokenizers` library behind a boundary that turns its failures into medrt errors.

A malformed tokenizer.json can make the library's Rust code panic (at load or later, when it
encodes): pyo3 raises that as ``PanicException``, a BaseException that ``except Exception``
lets through and that would end the process. Every call into the library goes through here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medrt.errors import InvalidCheckpoint


def _is_panic(e: BaseException) -> bool:
    return type(e).__name__ == "PanicException"


@contextmanager
def panics_as_invalid(path: str | Path, doing: str) -> Iterator[None]:
    """A panic of the library while `doing` something with `path` -> InvalidCheckpoint."""
    try:
        yield
    except BaseException as e:
        if not _is_panic(e):
            raise
        raise InvalidCheckpoint(f"{path}: the tokenizer failed while {doing}: {e}") from None


def load_hf_tokenizer(path: str | Path) -> Any:
    """tokenizers.Tokenizer.from_file, with every failure an InvalidCheckpoint naming the file."""
    from tokenizers import Tokenizer as HFTokenizer

    with panics_as_invalid(path, "loading"):
        try:
            return HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exception on bad files
            raise InvalidCheckpoint(f"{path}: cannot load: {e}") from e
