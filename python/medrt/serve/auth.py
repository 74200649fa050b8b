"""API keys and tenants.

The key file holds no secret: one line per key, ``sha256:<hex of the key> <tenant>``, then
optional ``key=value`` settings of that key: ``max_concurrency=N`` (requests of the tenant
running at once) and ``models=a,b`` (the models the key may use; default all). Blank lines and
``#`` comments are skipped. ``medrt keys add`` makes a key and appends its line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "mrt-"
ANONYMOUS = "anonymous"  # the tenant of every request when no key file is given
UNAUTHENTICATED = "unauthenticated"  # the metrics' tenant label of a request without one


@dataclass(frozen=True)
class Tenant:
    name: str
    max_concurrency: int = 0  # 0: only the server-wide limits apply
    models: frozenset[str] | None = None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_file(path: Path) -> dict[str, Tenant]:
    """sha256 hex -> Tenant. Raises ValueError naming the file and line of a bad entry."""
    keys: dict[str, Tenant] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) < 2 or not parts[0].startswith("sha256:"):
            raise ValueError(f"{where}: expected 'sha256:<hex> <tenant> [key=value ...]'")
        digest = parts[0][len("sha256:"):].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{where}: the hash must be 64 hex digits")
        settings: dict[str, str] = {}
        for item in parts[2:]:
            name, sep, value = item.partition("=")
            if not sep or name not in ("max_concurrency", "models"):
                raise ValueError(f"{where}: unknown setting {item!r} "
                                 "(known: max_concurrency=N, models=a,b)")
            settings[name] = value
        try:
            limit = int(settings.get("max_concurrency", "0"))
        except ValueError:
            raise ValueError(f"{where}: max_concurrency must be an integer") from None
        if limit < 0:
            raise ValueError(f"{where}: max_concurrency must be >= 0")
        models = (frozenset(m for m in settings["models"].split(",") if m)
                  if "models" in settings else None)
        if parts[1] == UNAUTHENTICATED:
            raise ValueError(f"{where}: the tenant name {UNAUTHENTICATED!r} is reserved (it "
                             "labels the metrics of requests without a valid key)")
        keys[digest] = Tenant(parts[1], limit, models)
    return keys


class KeyStore:
    """The loaded key file; ``reload()`` (on SIGHUP) swaps in the new keys atomically and keeps
    the old ones when the file is broken."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys = parse_key_file(self.path)

    def reload(self) -> int:
        keys = parse_key_file(self.path)
        with self._lock:
            self._keys = keys
        return len(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, key: str) -> Tenant | None:
        digest = hash_key(key)
        with self._lock:
            keys = self._keys
        for known, tenant in keys.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None


def bearer_token(header: str | None) -> str | None:
    """The KEY of an ``Authorization: Bearer KEY`` value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def add_key(tenant: str, path: str | os.PathLike[str], max_concurrency: int = 0) -> str:
    """Makes a new key for ``tenant``, appends its hash to the key file and returns the key
    (shown once; only its hash is stored)."""
    if not tenant or any(c.isspace() for c in tenant) or "#" in tenant:
        raise ValueError(f"tenant {tenant!r}: must be non-empty, without spaces or '#'")
    if tenant == UNAUTHENTICATED:
        raise ValueError(f"tenant {tenant!r}: the name is reserved (it labels the metrics of "
                         "requests without a valid key)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    line = f"sha256:{hash_key(key)} {tenant}"
    if max_concurrency:
        line += f" max_concurrency={max_concurrency}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return key
