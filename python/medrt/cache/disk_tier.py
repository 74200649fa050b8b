"""The disk tier: every entry in SQLite (WAL), plus one persisted FAISS index per scope.

Layout of a cache directory (docs/semantic-cache.md is the spec):
  cache.sqlite          entries, metadata (format version, embedder fingerprint, dim) and,
                        per scope, the entry count and largest id its index file covers
  index/<scope>.faiss   the scope's index (flat, or IVF for a large scope: vector_index.py),
                        written atomically

SQLite is the truth. A write is acknowledged once its transaction commits (WAL, synchronous
FULL), so a kill -9 at any moment loses nothing acknowledged. Index files are a cache of the
vectors in SQLite: written at close() and checkpoint(), and rebuilt from SQLite when missing,
unreadable, or stale (their recorded count and largest id differ from the table's).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from pathlib import Path

import numpy as np

from medrt.cache.entry import Entry
from medrt.cache.errors import CacheCorrupt, CacheDiskFull, CacheError
from medrt.cache.text import words
from medrt.cache.vector_index import DEFAULT_SETTINGS, IndexSettings, VectorIndex

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL,
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  qhash TEXT NOT NULL,
  question TEXT NOT NULL,
  answer TEXT NOT NULL,
  payload TEXT NOT NULL,
  embedding BLOB NOT NULL,
  created REAL NOT NULL,
  UNIQUE (scope, qhash)
);
CREATE TABLE IF NOT EXISTS index_files (
  scope TEXT PRIMARY KEY, count INTEGER NOT NULL, max_id INTEGER NOT NULL);
"""


def _is_full(e: BaseException) -> bool:
    msg = str(e).lower()
    return "disk is full" in msg or "no space left" in msg or getattr(e, "errno", None) == 28


class DiskTier:
    def __init__(self, path: Path, dim: int, embedder_fingerprint: str,
                 ttl_seconds: float | None, index: IndexSettings = DEFAULT_SETTINGS) -> None:
        self.dir = Path(path)
        self.index_settings = index
        self.db_path = self.dir / "cache.sqlite"
        self.index_dir = self.dir / "index"
        self.dim = dim
        self.ttl = ttl_seconds
        if self.dir.is_dir() and not os.access(self.dir, os.W_OK | os.X_OK):
            raise CacheError(f"{self.dir}: the cache directory is not writable")
        try:
            self.index_dir.mkdir(parents=True, exist_ok=True)
        except PermissionError as e:
            raise CacheError(f"{self.dir}: cannot create the cache directory: "
                             f"permission denied") from e
        except OSError as e:
            raise CacheError(f"{self.dir}: cannot create the cache directory: {e}") from e
        self._db = self._connect()
        self._indexes: dict[str, VectorIndex] = {}
        self._counts: dict[str, int] = {}  # entries per scope, once asked for
        self._dirty: set[str] = set()  # scopes changed since their index file was written
        self._check_meta(embedder_fingerprint)

    # -- SQLite ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            # Reads every page header: a truncated or overwritten file fails here, named.
            row = db.execute("PRAGMA quick_check").fetchone()
            if row[0] != "ok":
                raise sqlite3.DatabaseError(row[0])
        except sqlite3.DatabaseError as e:
            if _is_full(e):
                raise CacheDiskFull(f"{self.db_path}: disk full: {e}") from e
            if "readonly" in str(e).lower() or "unable to open" in str(e).lower():
                raise CacheError(f"{self.db_path}: cannot open for writing: {e}") from e
            raise CacheCorrupt(f"{self.db_path}: not a readable cache database ({e}); "
                               f"move it away to start an empty cache") from e
        return db

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as e:
            if _is_full(e):
                raise CacheDiskFull(f"{self.db_path}: disk full: {e}") from e
            raise CacheError(f"{self.db_path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise CacheCorrupt(f"{self.db_path}: {e}") from e

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_meta(self, embedder_fingerprint: str) -> None:
        version = self._meta("format_version")
        if version is not None and int(version) != FORMAT_VERSION:
            raise CacheCorrupt(f"{self.db_path}: cache format version {version}, this medrt "
                               f"reads version {FORMAT_VERSION}")
        if self._meta("embedder") not in (None, embedder_fingerprint) or \
                self._meta("dim") not in (None, str(self.dim)):
            # Another embedding model: every stored vector is meaningless now.
            self.clear()
        self._write("BEGIN IMMEDIATE")
        for k, v in (("format_version", str(FORMAT_VERSION)), ("embedder", embedder_fingerprint),
                     ("dim", str(self.dim))):
            self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        self._write("COMMIT")

    def clear(self) -> None:
        """Deletes every entry and index file."""
        self._write("DELETE FROM entries")
        self._write("DELETE FROM index_files")
        self._counts.clear()
        for f in self.index_dir.glob("*.faiss"):
            f.unlink(missing_ok=True)
        self._indexes.clear()

    # -- entries --------------------------------------------------------------------------
    def insert(self, scope: str, tenant: str, model: str, qhash: str, question: str,
               answer: str, payload: dict, embedding: np.ndarray) -> Entry:
        """Stores an entry (replacing the scope's entry for the same text); durable on return."""
        return self.insert_many([(scope, tenant, model, qhash, question, answer, payload,
                                  embedding)])[0]

    def insert_many(self, rows: list[tuple]) -> list[Entry]:
        """insert() for many rows in one transaction (one fsync); all durable on return."""
        now = time.time()
        out, replaced = [], []
        try:
            self._write("BEGIN IMMEDIATE")
            for scope, tenant, model, qhash, question, answer, payload, embedding in rows:
                blob = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
                old = self._db.execute("SELECT id FROM entries WHERE scope = ? AND qhash = ?",
                                       (scope, qhash)).fetchone()
                if old is not None:
                    self._write("DELETE FROM entries WHERE id = ?", (old[0],))
                    replaced.append((scope, old[0]))
                cur = self._write(
                    "INSERT INTO entries (scope, tenant, model, qhash, question, answer, "
                    "payload, embedding, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (scope, tenant, model, qhash, question, answer, json.dumps(payload), blob,
                     now))
                out.append(Entry(int(cur.lastrowid), scope, question, answer,
                                 np.frombuffer(blob, dtype=np.float32), now, payload,
                                 words(question)))
            self._write("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._dirty |= {e.scope for e in out}
        for scope, old_id in replaced:
            if scope in self._indexes:
                self._indexes[scope].remove([old_id])
            if scope in self._counts:
                self._counts[scope] -= 1
        for entry in out:
            if entry.scope in self._counts:
                self._counts[entry.scope] += 1
            idx = self._indexes.get(entry.scope)
            if idx is not None:  # loaded: keep it current; otherwise loaded (or rebuilt) later
                idx.add(np.array([entry.id]), entry.embedding.reshape(1, -1))
        return out

    def _entry(self, row: tuple) -> Entry:
        entry_id, scope, question, answer, payload, blob, created = row
        return Entry(int(entry_id), scope, question, answer,
                     np.frombuffer(blob, dtype=np.float32), float(created), json.loads(payload),
                     words(question))

    _COLUMNS = "id, scope, question, answer, payload, embedding, created"

    def get(self, ids: list[int]) -> dict[int, Entry]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM entries WHERE id IN ({marks})",
                                tuple(ids)).fetchall()
        return {int(r[0]): self._entry(r) for r in rows}

    def exact(self, scope: str, qhash: str) -> Entry | None:
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM entries WHERE scope = ? AND "
                               "qhash = ?", (scope, qhash)).fetchone()
        return None if row is None else self._entry(row)

    def expired(self, entry: Entry) -> bool:
        return self.ttl is not None and time.time() - entry.created > self.ttl

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        rows = self._db.execute(
            f"SELECT id, scope FROM entries WHERE id IN ({','.join('?' * len(ids))})",
            tuple(ids)).fetchall()
        self._write(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))
        for entry_id, scope in rows:
            self._dirty.add(scope)
            if scope in self._indexes:
                self._indexes[scope].remove([entry_id])
            if scope in self._counts:
                self._counts[scope] -= 1

    def delete_tenant(self, tenant: str) -> list[int]:
        """Deletes every entry of `tenant` (and its scopes' index files); returns their ids."""
        rows = self._db.execute("SELECT id, scope FROM entries WHERE tenant = ?",
                                (tenant,)).fetchall()
        self.delete([r[0] for r in rows])
        for scope in {r[1] for r in rows}:
            if self.count(scope) == 0:
                self._indexes.pop(scope, None)
                self._dirty.discard(scope)
                self.index_path(scope).unlink(missing_ok=True)
                self._write("DELETE FROM index_files WHERE scope = ?", (scope,))
        return [r[0] for r in rows]

    def delete_other_models(self, model: str) -> list[int]:
        """Deletes the entries answered by any model but `model`; returns their ids."""
        ids = [r[0] for r in self._db.execute("SELECT id FROM entries WHERE model != ?",
                                              (model,))]
        self.delete(ids)
        return ids

    def count(self, scope: str | None = None) -> int:
        """Entries in all, or of one scope (counted once, then kept current)."""
        if scope is None:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        if scope not in self._counts:
            self._counts[scope] = int(self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE scope = ?", (scope,)).fetchone()[0])
        return self._counts[scope]

    # -- per-scope vector index -----------------------------------------------------------
    def index_path(self, scope: str) -> Path:
        return self.index_dir / f"{scope}.faiss"

    def search(self, scope: str, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        return self._index(scope).search(query, k)

    def _index(self, scope: str) -> VectorIndex:
        idx = self._indexes.get(scope)
        if idx is None:
            idx = self._indexes[scope] = self._load_or_rebuild(scope)
        return idx

    def _load_or_rebuild(self, scope: str) -> VectorIndex:
        import faiss

        count, max_id = self._db.execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM entries WHERE scope = ?",
            (scope,)).fetchone()
        rec = self._db.execute("SELECT count, max_id FROM index_files WHERE scope = ?",
                               (scope,)).fetchone()
        path = self.index_path(scope)
        if path.is_file() and rec == (count, max_id):
            try:
                loaded = faiss.read_index(str(path))
                if loaded.ntotal == count and loaded.d == self.dim:
                    return VectorIndex.from_faiss(loaded, self.dim, self.index_settings)
                reason = "its vectors do not match the database"
            except RuntimeError as e:
                reason = f"unreadable ({str(e).splitlines()[0][:120]})"
            warnings.warn(f"{path}: {reason}; rebuilding it from {self.db_path.name}",
                          RuntimeWarning, stacklevel=3)
        idx = VectorIndex(self.dim, self.index_settings)
        self._dirty.add(scope)  # written back at the next checkpoint
        rows = self._db.execute("SELECT id, embedding FROM entries WHERE scope = ? ORDER BY id",
                                (scope,)).fetchall()
        if rows:
            idx.add(np.array([r[0] for r in rows], dtype=np.int64),
                    np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                    .reshape(len(rows), self.dim))
        return idx

    def checkpoint(self) -> None:
        """Writes the index file of each scope changed since (atomically; a scope whose index
        was never loaded is built from SQLite first) and records what it covers."""
        import faiss

        for scope in sorted(self._dirty):
            idx = self._index(scope)
            count, max_id = self._db.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM entries WHERE scope = ?",
                (scope,)).fetchone()
            if len(idx) != count:
                continue  # cannot happen under the cache's lock; never persist a mismatch
            path = self.index_path(scope)
            tmp = path.with_suffix(".faiss.tmp")
            try:
                faiss.write_index(idx.faiss_index, str(tmp))
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except (RuntimeError, OSError) as e:
                tmp.unlink(missing_ok=True)
                if _is_full(e) or "No space" in str(e):
                    raise CacheDiskFull(f"{path}: disk full: {e}") from e
                raise CacheError(f"{path}: cannot write: {e}") from e
            self._write("INSERT OR REPLACE INTO index_files VALUES (?, ?, ?)",
                        (scope, count, max_id))
            self._dirty.discard(scope)

    def close(self) -> None:
        self._db.close()
