"""Errors medrt raises. The C++ engine's exceptions arrive as these classes, with its message.

Every error caused by user input is a ``MedrtError``; the ``ValueError`` / ``RuntimeError``
bases let code that does not know medrt still catch them sensibly.
"""

from __future__ import annotations

__all__ = ["Cancelled", "CapacityError", "InvalidCheckpoint", "InvalidRequest", "MedrtError"]


class MedrtError(Exception):
    """Base class of every medrt error."""


class InvalidCheckpoint(MedrtError, ValueError):
    """A model directory or file is malformed; the message names the file and the tensor."""


class InvalidRequest(MedrtError, ValueError):
    """A request (prompt, sampling parameters) cannot be served as given. ``field``, when
    known, is the path of the input at fault (``messages[0].content``), as the service names
    it to its clients."""

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CapacityError(MedrtError, RuntimeError):
    """A bounded resource (KV blocks, queue slots) is exhausted in a way waiting cannot fix."""


class Cancelled(MedrtError):
    """The request was aborted by its client."""
