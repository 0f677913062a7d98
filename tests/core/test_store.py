"""Store: round trip, WAL on disk, key semantics (limit None vs N), runs, threads and processes, open errors, claims."""
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compression_core._version import __version__
from compression_core.store import ANY, Store, StoreError, default_store_path, new_owner


def rec(h: str, *, model="m", fp="f" * 16, dataset="digits", split="test", limit=None, acc=0.5, **extra) -> dict:
    return {"model": model, "fingerprint": fp, "dataset": dataset, "split": split, "limit": limit,
            "config_hash": h, "engine_version": __version__, "accuracy": acc,
            "layers": [{"name": "fc", "shape": [3, 4]}], **extra}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "sub" / "runs.sqlite") as s:
        yield s


def test_round_trip_and_wal(store, tmp_path):
    r = rec("h1", acc=0.875, config={"quant": {"bits": 4}})
    store.put(r)
    got = store.get(r)
    assert got["created_at"] > 0
    assert {k: v for k, v in got.items() if k != "created_at"} == r
    assert store.get(rec("nope")) is None
    assert (tmp_path / "sub" / "runs.sqlite").exists()  # parent folder created
    # WAL is a property of the file: a fresh connection sees it
    with sqlite3.connect(tmp_path / "sub" / "runs.sqlite") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1


def test_upsert_replaces_and_drops_transient_fields(store):
    store.put(rec("h1", acc=0.1))
    first = store.get(rec("h1"))["created_at"]
    store.put(rec("h1", acc=0.2, cached=True))
    got = store.get(rec("h1"))
    assert store.count() == 1
    assert got["accuracy"] == 0.2 and "cached" not in got
    assert got["created_at"] >= first


def test_key_distinguishes_limit_split_dataset_fingerprint(store):
    store.put(rec("h", limit=None))
    store.put(rec("h", limit=1000))
    store.put(rec("h", split="train"))
    store.put(rec("h", dataset="mnist"))
    store.put(rec("h", fp="0" * 16))
    assert store.count() == 5
    assert store.count(limit=None) == 4
    assert store.count(limit=1000) == 1
    assert store.count(limit=ANY, dataset="digits", split="test") == 3
    assert store.get(rec("h", limit=1000))["limit"] == 1000
    assert [k["limit"] for k in store.keys(split="test", dataset="digits", fingerprint="f" * 16)] == [None, 1000]


def test_records_filters_and_delete(store):
    for i in range(3):
        store.put(rec(f"a{i}", model="lenet5", acc=i / 10))
    store.put(rec("b0", model="lenet300"))
    assert [r["config_hash"] for r in store.records(model="lenet5")] == ["a0", "a1", "a2"]
    assert len(store.records()) == 4
    assert store.records(model="nope") == []
    assert store.delete(rec("a1")) is True
    assert store.delete(rec("a1")) is False
    assert store.count(model="lenet5") == 2
    assert rec("a0") in store and rec("a1") not in store


def test_missing_key_field_is_one_clear_error(store):
    bad = rec("h")
    del bad["fingerprint"]
    with pytest.raises(StoreError, match="fingerprint"):
        store.put(bad)


def test_runs_group_records_and_overlap(store):
    r1 = store.new_run("int4 sweep", meta={"bits": [4]})
    r2 = store.new_run("int8 sweep")
    store.put(rec("x"), run_id=r1)
    store.put(rec("y"), run_id=r1)
    store.put(rec("z"), run_id=r2)
    store.add_to_run(r2, rec("x"))      # a record reused by a later run belongs to both
    store.add_to_run(r2, rec("x"))      # idempotent
    assert {r["config_hash"] for r in store.records(run_id=r1)} == {"x", "y"}
    assert {r["config_hash"] for r in store.records(run_id=r2)} == {"x", "z"}
    assert store.count(run_id=r2) == 2
    assert store.run_ids(rec("x")) == [r1, r2]
    runs = {r["run_id"]: r for r in store.runs()}
    assert runs[r1]["label"] == "int4 sweep" and runs[r1]["meta"] == {"bits": [4]} and runs[r1]["n_records"] == 2
    with pytest.raises(StoreError, match="unknown"):
        store.put(rec("w"), run_id="nosuchrun")
    assert rec("w") not in store      # the failed put was rolled back as a whole
    assert store.delete_run(r1) is True
    assert store.count() == 3 and store.run_ids(rec("x")) == [r2]


def test_default_path_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_EXPLORER_STORE", str(tmp_path / "x" / "s.sqlite"))
    assert default_store_path() == tmp_path / "x" / "s.sqlite"
    with Store() as s:
        assert s.path == tmp_path / "x" / "s.sqlite" and s.path.exists()
    monkeypatch.delenv("COMPRESSION_EXPLORER_STORE")
    assert default_store_path().name == "runs.sqlite"
    assert "compression-explorer" in str(default_store_path())


def test_two_threads_write_concurrently(store):
    errors = []

    def writer(tag: str) -> None:
        try:
            for i in range(100):
                store.put(rec(f"{tag}{i}"))
                assert store.get(rec(f"{tag}{i}")) is not None
        except Exception as e:  # surfaced below; a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 200


WRITER = """
import sys
from compression_core.store import Store
s = Store(sys.argv[1])
for i in range(60):
    s.put({"model": "m", "fingerprint": "f", "dataset": "d", "split": "test", "limit": None,
           "config_hash": sys.argv[2] + str(i), "accuracy": 0.5})
"""


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag], cwd=root) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Store(path) as s:
        assert s.count() == 120


# ---- unusable files: one StoreError line naming the path and what to do ---------------------------
def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_directory_as_store_is_one_line(tmp_path):
    with pytest.raises(StoreError) as e:
        Store(tmp_path)
    assert _one_line(e) == (f"result store {tmp_path} is a directory; give another path with --store or "
                            f"$COMPRESSION_EXPLORER_STORE, e.g. {tmp_path}/runs.sqlite")


def test_file_that_is_not_sqlite_is_one_line_and_left_alone(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"these are my notes, not a database\n" * 50)
    before = junk.read_bytes()
    with pytest.raises(StoreError) as e:
        Store(junk)
    assert _one_line(e).startswith(f"result store {junk} is not a SQLite file;")
    assert junk.read_bytes() == before


def test_too_long_or_impossible_paths_are_one_line(tmp_path):
    with pytest.raises(StoreError) as e:
        Store(tmp_path / ("x" * 5000) / "runs.sqlite")
    line = _one_line(e)
    assert "cannot be created (file name too long)" in line and len(line) < 300
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(StoreError, match="cannot be created") as e:
        Store(tmp_path / "file" / "runs.sqlite")
    _one_line(e)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_read_only_store_stays_readable(tmp_path):
    path = tmp_path / "runs.sqlite"
    with Store(path) as s:
        s.put(rec("h1"))
    path.chmod(0o444)
    with Store(path) as s:
        assert s.get(rec("h1"))["config_hash"] == "h1"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.put(rec("h2"))


# ---- claims ---------------------------------------------------------------------------------------
def test_claim_is_exclusive_until_released_or_stored(store):
    me, other = new_owner(), new_owner()
    assert store.claim(rec("h1"), me) and store.claim(rec("h1"), me)  # re-claiming renews
    assert not store.claim(rec("h1"), other)
    assert store.claim_owner(rec("h1")) == me and store.claim_owner(rec("h2")) is None
    assert store.renew_claims(me) == 1 and store.release_claims(me) == 1
    assert store.claim(rec("h1"), other) and store.claim_owner(rec("h1")) == other
    store.put(rec("h1"))  # computed: the claim goes, and nobody may claim a stored config
    assert store.claim_owner(rec("h1")) is None and not store.claim(rec("h1"), me)


def test_expired_claim_and_dead_owner_are_free(store):
    holder = new_owner()
    assert store.claim(rec("h1"), holder, ttl_s=0.0)
    assert store.claim_owner(rec("h1")) is None and store.claim(rec("h1"), new_owner())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}:{int(dead.stdout)}:deadbeef"  # that process has exited
    assert store.claim(rec("h2"), dead_owner, ttl_s=3600)
    assert store.claim_owner(rec("h2")) is None  # not alive, although its claim has an hour left
    assert store.claim(rec("h2"), holder)
    far = f"elsewhere.example:{os.getpid()}:cafe"  # another machine: only the expiry counts
    assert store.claim(rec("h3"), far, ttl_s=3600) and not store.claim(rec("h3"), holder)
