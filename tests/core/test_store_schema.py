"""Store versions: a version-1 file is migrated in place, another engine's record is no cache hit, and a store
written by a newer build is read-only and left byte for byte as it was."""
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compression_core import cli
from compression_core._version import __version__
from compression_core.config import CompressionConfig, QuantSpec
from compression_core.store import SCHEMA_VERSION, Store, StoreError
from compression_core.sweep import sweep

# The schema as version 1 wrote it (before `PRAGMA user_version` was set), kept verbatim as a fixture.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    fingerprint TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    split       TEXT NOT NULL,
    limit_n     INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (fingerprint, dataset, split, limit_n, config_hash)
);
CREATE INDEX IF NOT EXISTS records_by_model ON records (model, dataset, split);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    label      TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_members (
    run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    split       TEXT NOT NULL,
    limit_n     INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    added_at    REAL NOT NULL,
    PRIMARY KEY (run_id, fingerprint, dataset, split, limit_n, config_hash)
);
"""
FP = "0123456789abcdef"


def key(h: str) -> dict:
    return {"model": "fake", "fingerprint": FP, "dataset": "toy", "split": "test", "limit": None, "config_hash": h}


def rec(h: str, acc: float = 0.5, **extra) -> dict:
    return {**key(h), "accuracy": acc, "layers": [], **extra}


def write_v1_store(path) -> None:
    """A store as version 1 left it: WAL, its tables, two records (one says which engine made it) and a run."""
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode = WAL")
        c.executescript(V1_SCHEMA)
        for h, body in (("old", rec("old", 0.25)), ("tagged", rec("tagged", 0.75, engine_version="0.1.0"))):
            c.execute("INSERT INTO records (fingerprint, dataset, split, limit_n, config_hash, model, created_at, "
                      "record) VALUES (?,?,?,?,?,?,?,?)", (FP, "toy", "test", -1, h, "fake", 1.0, json.dumps(body)))
        c.execute("INSERT INTO runs VALUES ('run1', 'v1 sweep', 1.0, '{}')")
        c.execute("INSERT INTO run_members VALUES ('run1', ?, 'toy', 'test', -1, 'old', 1.0)", (FP,))
    c.close()


def test_version_1_store_is_migrated_in_place(tmp_path):
    path = tmp_path / "v1.sqlite"
    write_v1_store(path)
    with Store(path) as store:
        listed = {r["config_hash"]: r for r in store.records()}
        assert set(listed) == {"old", "tagged"}
        assert listed["old"]["engine_version"] == "unknown" and listed["old"]["accuracy"] == 0.25
        assert listed["tagged"]["engine_version"] == "0.1.0"
        assert store.get(key("old")) is None and store.get(key("tagged")) is None  # not served as cache hits
        assert key("old") not in store
        assert [r["config_hash"] for r in store.records(run_id="run1")] == ["old"]  # runs survive
        store.put(rec("old", 0.9, engine_version=__version__))
        hit = store.get(key("old"))
        assert hit["accuracy"] == 0.9 and hit["engine_version"] == __version__
        assert store.count() == 2 and store.run_ids(key("old")) == ["run1"]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        index = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'records_by_engine'").fetchone()[0]
        assert "engine_version" in index
        assert dict(raw.execute("SELECT config_hash, engine_version FROM records")) == {
            "old": __version__, "tagged": "0.1.0"}
    raw.close()
    with Store(path) as again:  # opening a current store changes nothing
        assert again.count() == 2 and again.get(key("old"))["accuracy"] == 0.9


def test_new_store_is_created_at_the_current_version(tmp_path):
    with Store(tmp_path / "new.sqlite") as store:
        store.put(rec("a", engine_version=__version__))
        assert store.read_only is None
    with sqlite3.connect(tmp_path / "new.sqlite") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


class FakeExperiment:
    def __init__(self, version: str):
        self.version, self.calls = version, []

    def key(self, config):
        return key(config.config_hash)

    def run(self, config):
        self.calls.append(config.config_hash)
        return rec(config.config_hash, 0.5 + 0.01 * config.quant.bits, engine_version=self.version)


def test_sweep_recomputes_records_of_another_engine_version(tmp_path):
    configs = [CompressionConfig(quant=QuantSpec(bits=b)) for b in (4, 8)]
    with Store(tmp_path / "s.sqlite") as store:
        old = FakeExperiment("0.1.0")
        sweep(old, configs, store=store)
        assert len(old.calls) == 2 and store.count() == 2
        new = FakeExperiment(__version__)
        records = sweep(new, configs, store=store)
        assert len(new.calls) == 2 and [r["cached"] for r in records] == [False, False]
        assert {r["engine_version"] for r in store.records()} == {__version__}  # replaced, not duplicated
        again = FakeExperiment(__version__)
        assert [r["cached"] for r in sweep(again, configs, store=store)] == [True, True] and again.calls == []


def newer_store(tmp_path):
    """A current store with one record whose schema version was then raised past this build's."""
    path = tmp_path / "newer.sqlite"
    with Store(path) as store:
        run = store.new_run("from the future")
        store.put(rec("a", engine_version=__version__), run_id=run)
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    return path


def test_newer_store_is_read_only_and_never_rewritten(tmp_path):
    path = newer_store(tmp_path)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    message = (f"store {path} was written by a newer Compression Explorer (schema {SCHEMA_VERSION + 1}; "
               f"this build reads \u2264 {SCHEMA_VERSION}); upgrade or use another --store")
    with Store(path) as store:
        assert store.read_only == message
        assert [r["config_hash"] for r in store.records()] == ["a"] and store.count() == 1
        assert store.get(key("a"))["engine_version"] == __version__ and len(store.runs()) == 1
        for write in (lambda: store.put(rec("b", engine_version=__version__)), lambda: store.new_run("x"),
                      lambda: store.delete(key("a")), lambda: store.add_to_run("run", key("a"))):
            with pytest.raises(StoreError) as err:
                write()
            assert str(err.value) == message
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_cli_refuses_a_newer_store_in_one_line(tmp_path, capsys):
    path = newer_store(tmp_path)
    before = path.read_bytes()
    rc = cli.main(["sweep", "--model", "digits-cnn", "--dataset", "digits", "--limit", "100", "--bits", "4",
                   "--store", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: store {path} was written by a newer Compression Explorer")
    assert "Traceback" not in "\n".join(err)
    assert path.read_bytes() == before


OPENER = """
import sys
from compression_core._version import __version__
from compression_core.store import Store
s = Store(sys.argv[1])
for i in range(20):
    s.put({"model": "fake", "fingerprint": "f", "dataset": "toy", "split": "test", "limit": None,
           "config_hash": sys.argv[2] + str(i), "engine_version": __version__, "accuracy": 0.5})
"""


def test_two_processes_opening_one_old_store_migrate_it_once(tmp_path):
    path = tmp_path / "v1.sqlite"
    write_v1_store(path)
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path), tag], cwd=root, stderr=subprocess.PIPE)
             for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read().decode()[-800:] for p in procs]
    with Store(path) as store:
        assert store.count() == 42
        versions = [r["engine_version"] for r in store.records()]
        assert sorted(set(versions)) == sorted({__version__, "unknown", "0.1.0"}) and versions.count(__version__) == 40
