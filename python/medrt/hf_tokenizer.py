"""The `tokenizers` library behind a boundary that turns its failures into medrt errors.

A malformed tokenizer.json can make the library fail at load or later, when it encodes: its
Rust code reports errors as a bare ``Exception`` (e.g. "Encountered an unknown token but
`unk_id` is missing" from a model with an empty vocabulary) or panics, which pyo3 raises as
``PanicException``, a BaseException that ``except Exception`` lets through. Both are the
checkpoint's fault, so both become InvalidCheckpoint naming the file; every call into the
library goes through here.
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
    """A failure of the library (a bare Exception or a panic) while `doing` something with
    `path` -> InvalidCheckpoint. Python's own errors (TypeError, ...) pass unchanged."""
    try:
        yield
    except BaseException as e:
        if not (_is_panic(e) or type(e) is Exception):
            raise
        raise InvalidCheckpoint(f"{path}: the tokenizer failed while {doing}: {e}") from None


def load_hf_tokenizer(path: str | Path) -> Any:
    """tokenizers.Tokenizer.from_file, with every failure an InvalidCheckpoint naming the file."""
    from tokenizers import Tokenizer as HFTokenizer

    with panics_as_invalid(path, "loading"):
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exception on bad files
            raise InvalidCheckpoint(f"{path}: cannot load: {e}") from e
    # A tokenizer that loads may still be unable to encode anything (an empty vocabulary
    # without an unknown token): found now, at load, rather than on a patient's request.
    with panics_as_invalid(path, "encoding a probe text"):
        tok.decode(tok.encode("medrt probe: 12 mg", add_special_tokens=False).ids)
    return tok
