"""Faults of the cache's files: kill -9 mid-write, corrupt or truncated files, a full disk,
a directory without write permission, an embedding model that is not a BERT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import medrt
import pytest
from medrt import SamplingParams
from medrt.cache import CacheCorrupt, CacheError
from medrt.errors import InvalidCheckpoint

GREEDY = SamplingParams(temperature=0, max_tokens=32)


def _env() -> dict[str, str]:
    """The child imports the same medrt as this process (installed, or python/ in a dev tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(medrt.__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    return env


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, encoder_dir: Path, embedder) -> None:
    script = textwrap.dedent(f"""
        import sys, medrt
        from medrt import SamplingParams
        c = medrt.SemanticCache({str(tmp_path)!r}, embedder={str(encoder_dir)!r})
        g = SamplingParams(temperature=0, max_tokens=32)
        i = 0
        while True:
            c.store(f"How should condition number {{i}} be managed in adults?", f"answer {{i}}",
                    sampling=g)
            print(i, flush=True)  # acknowledged: store() returned
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=_env())
    acked = []
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(acked) >= 25, "the writer did not start"
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:
        for i in acked:
            q = f"How should condition number {i} be managed in adults?"
            hit = c.lookup(q, sampling=GREEDY).hit
            assert hit is not None and hit.answer == f"answer {i}", i
        # The index file was never written (killed before close): rebuilt from SQLite.
        para = f"How is condition number {acked[-1]} managed in adults?"
        r = c.lookup(para, sampling=GREEDY)
        assert r.hit is None or r.hit.tier in ("disk", "memory")


def test_corrupt_and_truncated_database_are_named(tmp_path: Path, embedder) -> None:
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheCorrupt, match=r"garbage/cache\.sqlite"):
        medrt.SemanticCache(bad, embedder=embedder)

    trunc = tmp_path / "trunc"
    with medrt.SemanticCache(trunc, embedder=embedder) as c:
        c.store_many([{"question": f"Question {i} about the dosing of insulin in adults?",
                           "answer": "x" * 2000, "sampling": GREEDY} for i in range(60)])
    db = trunc / "cache.sqlite"
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    with pytest.raises(CacheCorrupt, match=r"trunc/cache\.sqlite"):
        medrt.SemanticCache(trunc, embedder=embedder)


def test_corrupt_index_file_is_rebuilt_from_sqlite(tmp_path: Path, embedder) -> None:
    q = "What is the first-line treatment of community-acquired pneumonia in adults?"
    with medrt.SemanticCache(tmp_path, embedder=embedder, threshold=0.8) as c:
        c.store(q, "amoxicillin", sampling=GREEDY)
        c.lookup("warm the disk index", sampling=GREEDY)
    (index,) = (tmp_path / "index").glob("*.faiss")
    index.write_bytes(index.read_bytes()[:100])  # truncated
    with medrt.SemanticCache(tmp_path, embedder=embedder, threshold=0.8) as c:
        with pytest.warns(RuntimeWarning, match=index.name):
            hit = c.lookup("What's the first-line treatment for community-acquired pneumonia "
                           "in adults?", sampling=GREEDY).hit
        assert hit is not None and hit.answer == "amoxicillin"
    # The rebuilt index was written back at close: no warning the next time.
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.disk.search(index.stem, c.embed(q), 1)[0][1] > 0.999


@pytest.mark.parametrize("damage", ["missing", "truncated", "stale"])
def test_ivf_scope_index_file_is_rebuilt_from_sqlite(tmp_path: Path, embedder, damage) -> None:
    """A scope past ivf_min_entries persists an IVF index; a missing, truncated or stale one
    (an older file than SQLite's record) is rebuilt from SQLite, as IVF again."""
    import faiss
    import numpy as np

    kw = {"embedder": embedder, "threshold": 0.8, "ivf_min_entries": 200, "nprobe": 8,
          "memory_entries": 10}  # the memory tier holds too little: lookups search the disk
    q = "What is the first-line treatment of community-acquired pneumonia in adults?"
    v = np.random.default_rng(0).standard_normal((300, embedder.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    with medrt.SemanticCache(tmp_path, **kw) as c:
        c.store_many([{"question": f"Stored question {i}?", "answer": str(i),
                       "sampling": GREEDY} for i in range(300)], v)
        c.store(q, "amoxicillin", sampling=GREEDY)
    (index,) = (tmp_path / "index").glob("*.faiss")
    assert hasattr(faiss.read_index(str(index)), "nlist")  # IVF on file
    if damage == "missing":
        index.unlink()
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:100])
    else:
        old = index.read_bytes()
        with medrt.SemanticCache(tmp_path, **kw) as c:
            c.store("How is gout treated?", "colchicine", sampling=GREEDY)
        index.write_bytes(old)  # one entry short of what SQLite records for the file
    with medrt.SemanticCache(tmp_path, **kw) as c:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hit = c.lookup("What's the first-line treatment for community-acquired pneumonia "
                           "in adults?", sampling=GREEDY).hit
        assert hit is not None and hit.answer == "amoxicillin" and hit.tier == "disk"
        named = [w for w in caught if index.name in str(w.message)]
        assert len(named) == (0 if damage == "missing" else 1)
        assert c.disk._indexes[index.stem].is_ivf
    with medrt.SemanticCache(tmp_path, **kw) as c, warnings.catch_warnings():
        warnings.simplefilter("error")  # written back at close: loads cleanly
        assert c.disk.search(index.stem, c.embed(q), 1)[0][1] > 0.999
        assert c.disk._indexes[index.stem].is_ivf


def test_full_disk_turns_the_cache_off(tmp_path: Path, embedder) -> None:
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:
        c.store("How is gout treated?", "colchicine", sampling=GREEDY)
        # SQLite's own "database or disk is full" path: no page may be added any more.
        pages = c.disk._db.execute("PRAGMA page_count").fetchone()[0]
        c.disk._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.warns(RuntimeWarning, match="turned off.*disk full"):
            stored = c.store_many([{"question": f"Question {i} on asthma?", "answer": "y" * 4000,
                                        "sampling": GREEDY} for i in range(20)])
        assert stored == 0 and c.disabled_reason and "cache.sqlite" in c.disabled_reason
        assert c.lookup("How is gout treated?", sampling=GREEDY).refused == "disabled"
        assert not c.store("How is gout treated?", "x", sampling=GREEDY)
    with medrt.SemanticCache(tmp_path, embedder=embedder) as c:  # nothing acknowledged lost
        assert c.lookup("How is gout treated?", sampling=GREEDY).hit.answer == "colchicine"


def test_directory_without_write_permission(encoder_dir: Path) -> None:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="medrt-ro-"))  # pytest's tmp root is 0700: use /tmp
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        script = textwrap.dedent(f"""
            import os, medrt
            from medrt.cache import CacheError
            from medrt.cache.guard import Guard
            emb = medrt.Embedder({str(encoder_dir)!r})  # loaded (and imported) as this user
            Guard.default()  # its word lists too: an installed medrt may sit under /root
            if os.geteuid() == 0:  # root writes anywhere: drop to nobody to see the real error
                os.setgid(65534)
                os.setuid(65534)
            for path in ({str(locked / "c")!r}, {str(locked)!r}):
                try:
                    medrt.SemanticCache(path, embedder=emb)
                except CacheError as e:
                    print("CacheError:", e)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=_env(), timeout=120, check=False)
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out.stderr[-2000:]
        assert lines[0].startswith(f"CacheError: {locked / 'c'}: ") and "permission" in lines[0]
        assert lines[1].startswith(f"CacheError: {locked}: ") and "not writable" in lines[1]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_embedding_model_that_is_not_bert(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(InvalidCheckpoint, match=r"config\.json.*not a BERT encoder"):
        medrt.SemanticCache(tmp_path, embedder=tiny_llama)
    assert issubclass(CacheCorrupt, CacheError)
