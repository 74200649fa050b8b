"""Errors of the semantic cache; each message names the file concerned."""

from __future__ import annotations

from medrt.errors import MedrtError


class CacheError(MedrtError, RuntimeError):
    """The cache directory or one of its files cannot be used."""


class CacheCorrupt(CacheError):
    """cache.sqlite is truncated, overwritten or of another format version."""


class CacheDiskFull(CacheError):
    """A write failed for lack of space; the cache turns itself off, answers still flow."""
