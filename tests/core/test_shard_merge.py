"""Without Ray: `sweep --shard I/N` splits a grid into disjoint shards that cover it; `store merge` unions the stores
of the shards (one row per key, the newer record wins, runs carried, idempotent) and refuses what is not a store."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from compression_core import cli
from compression_core.config import CompressionConfig
from compression_core.record import differing_fields
from compression_core.shard import ShardError, parse_shard, shard
from compression_core.store import SCHEMA_VERSION, Store, StoreError, new_owner
from compression_core.store_merge import merge_stores, upgrade_store
from compression_core.grid import expand_grid
from tests.core.test_cli import ROOT
from tests.core.test_store import rec
from tests.core.test_store_schema import newer_store, write_v1_store
from tests.core.test_sweep import grid

BAD_SPECS = ["3/2", "0/0", "1/0", "a/b", "-1/2", "0/2", "", "1/2/3", "2", "1.5/2", "\uff11/\uff12", "1 /2", "1/\n2"]


def hashes(configs) -> list[str]:
    return [c.config_hash for c in configs]


# ---- shards --------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 3, 5, 12, 13])
def test_shards_are_disjoint_cover_the_grid_and_deal_hashes_round_robin(count):
    configs = grid()
    ranked = sorted(hashes(configs))
    shards = [shard(configs, i, count) for i in range(1, count + 1)]
    assert sorted(h for s in shards for h in hashes(s)) == ranked  # together the whole grid, each config once
    for i, part in enumerate(shards):
        assert set(hashes(part)) == set(ranked[i::count])  # the documented rule: rank r goes to shard r mod N + 1
        assert hashes(part) == [h for h in hashes(configs) if h in set(ranked[i::count])]  # grid order kept
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert sum(map(len, shards)) == len(configs) == 12


def test_shards_ignore_the_order_of_settings_and_values_and_duplicates():
    forward = grid()
    backward = expand_grid(CompressionConfig(), sparsity=[0.9, 0, 0.5], bits=[32, 8, 4, 2])
    assert hashes(backward) != hashes(forward) and sorted(hashes(backward)) == sorted(hashes(forward))
    repeated = forward + forward[3:9][::-1]
    for count in (2, 3, 7):
        for i in range(1, count + 1):
            mine = set(hashes(shard(forward, i, count)))
            assert set(hashes(shard(backward, i, count))) == mine
            assert hashes(shard(repeated, i, count)) == hashes(shard(forward, i, count))


def test_parse_shard_takes_i_of_n():
    assert [parse_shard(s) for s in ("1/1", "2/8", " 3/3 ", "12/12")] == [(1, 1), (2, 8), (3, 3), (12, 12)]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_shard_spec_is_one_line(spec):
    with pytest.raises(ShardError) as err:
        parse_shard(spec)
    assert str(err.value).startswith(f"--shard {spec!r}: ") and "\n" not in str(err.value)
    assert "1 ≤ I ≤ N" in str(err.value)


@pytest.mark.parametrize("index, count", [(0, 2), (3, 2), (1, 0), (-1, 2), (True, 2), (1.0, 2), ("1", "2")])
def test_shard_refuses_indices_outside_one_to_n(index, count):
    with pytest.raises(ShardError, match="1 ≤ I ≤ N"):
        shard(grid(), index, count)


@pytest.mark.parametrize("argv", [[f"--shard={s}"] for s in BAD_SPECS] + [["--shard", "-1/2"], ["--shard"]])
def test_cli_bad_shard_exits_2_with_one_line_before_opening_the_store(argv, tmp_path, capsys):
    store = tmp_path / "never.db"
    rc = cli.main(["sweep", "--model", "digits-cnn", "--dataset", "digits", "--bits", "4,8", "--store", str(store),
                   *argv])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "--shard" in err[0]
    assert not store.exists()


# ---- merging: records, runs, conflicts -----------------------------------------------------------
def dump(path) -> dict[str, list[tuple]]:
    """Every row of the store's record and run tables, sorted: equal dumps = nothing changed."""
    with closing(sqlite3.connect(path)) as c:
        return {t: sorted(c.execute(f"SELECT * FROM {t}").fetchall()) for t in ("records", "runs", "run_members")}


def by_hash(store: Store, **filters) -> dict[str, dict]:
    return {(r["config_hash"], r.get("task") or "classify"): r for r in store.records(**filters)}


@pytest.fixture
def two_stores(tmp_path):
    """a.db: h1, h2 (run 'a'), a claim on h9; b.db: h2 (written later, other accuracy), h3 and h1 for another task
    (run 'b')."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with Store(a) as s:
        run = s.new_run("a", meta={"shard": "1/2"})
        s.put(rec("h1", acc=0.1), run_id=run)
        s.put(rec("h2", acc=0.2), run_id=run)
        assert s.claim(rec("h9"), new_owner())
    with Store(b) as s:
        run = s.new_run("b")
        s.put(rec("h2", acc=0.25), run_id=run)
        s.put(rec("h3", acc=0.3), run_id=run)
        s.put(rec("h1", acc=0.9, task="fidelity"), run_id=run)
    return a, b


def test_merge_unions_records_and_runs_and_the_newer_record_wins(two_stores, tmp_path):
    a, b = two_stores
    inputs = dump(a), dump(b)
    summary = merge_stores([a, b], tmp_path / "new" / "all.db")
    assert (dump(a), dump(b)) == inputs
    assert (summary.added, summary.replaced, summary.kept) == (4, 1, 0)  # h2 of b.db replaced h2 of a.db
    assert (summary.runs_added, summary.members_added, summary.records, summary.runs) == (2, 5, 4, 2)
    assert summary.line() == (f"merged 2 store(s) into {tmp_path / 'new' / 'all.db'}: 4 records added, 1 already "
                              "there (1 replaced by a newer record), 2 runs added; it holds 4 records in 2 runs")
    with Store(a) as sa, Store(b) as sb, Store(tmp_path / "new" / "all.db") as merged:
        records = by_hash(merged)
        assert {k: r["accuracy"] for k, r in records.items()} == {
            ("h1", "classify"): 0.1, ("h2", "classify"): 0.25, ("h3", "classify"): 0.3, ("h1", "fidelity"): 0.9}
        assert records[("h2", "classify")]["created_at"] == sb.get(rec("h2"))["created_at"]  # copied, not re-stamped
        assert records[("h1", "classify")] == sa.get(rec("h1"))
        runs = {r["label"]: r for r in merged.runs()}
        assert {label: r["n_records"] for label, r in runs.items()} == {"a": 2, "b": 3}
        assert runs["a"]["meta"] == {"shard": "1/2"} and runs["a"]["run_id"] == sa.runs()[0]["run_id"]
        assert sorted(by_hash(merged, run_id=runs["a"]["run_id"])) == [("h1", "classify"), ("h2", "classify")]
        assert merged.claim_owner(rec("h9")) is None and merged.get(rec("h9")) is None  # claims stay behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "b.db", "new"]  # no -wal / -shm left by reading


def test_merge_result_does_not_depend_on_the_order_of_inputs(two_stores, tmp_path):
    a, b = two_stores
    merge_stores([a, b], tmp_path / "ab.db")
    summary = merge_stores([b, a], tmp_path / "ba.db")
    assert (summary.added, summary.replaced, summary.kept) == (4, 0, 1)  # a.db's h2 is older: kept out
    assert dump(tmp_path / "ab.db") == dump(tmp_path / "ba.db")


def test_merge_is_idempotent_and_a_copy_merged_into_itself_changes_nothing(two_stores, tmp_path):
    a, b = two_stores
    into = tmp_path / "all.db"
    merge_stores([a, b], into)
    before = dump(into)
    again = merge_stores([a, b, a], into)
    assert (again.added, again.replaced, again.kept, again.runs_added, again.members_added) == (0, 0, 7, 0, 0)
    assert dump(into) == before
    shutil.copy(into, tmp_path / "copy.db")
    assert merge_stores([tmp_path / "copy.db"], into).kept == 4
    assert dump(into) == before


def test_merge_into_an_existing_store_keeps_its_own_records_and_ties_keep_them(two_stores, tmp_path):
    a, _ = two_stores
    into = tmp_path / "mine.db"
    with Store(into) as s:
        s.put(rec("h7", acc=0.7), run_id=s.new_run("mine"))
    merge_stores([a], into)
    # a copy of a.db whose h1 says something else, written at the same time: the record already in --into stays
    tied = tmp_path / "tied.db"
    shutil.copy(a, tied)
    with closing(sqlite3.connect(tied)) as c, c:
        c.execute("UPDATE records SET record = json_set(record, '$.accuracy', 0.99) WHERE config_hash = 'h1'")
    summary = merge_stores([tied], into)
    assert (summary.added, summary.replaced, summary.kept) == (0, 0, 2)
    with Store(into) as s:
        assert {k[0]: r["accuracy"] for k, r in by_hash(s).items()} == {"h7": 0.7, "h1": 0.1, "h2": 0.2}
        assert sorted(r["label"] for r in s.runs()) == ["a", "mine"]


def test_key_is_the_stores_own_fingerprint_dataset_split_limit_and_task(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with Store(a) as s:
        s.put(rec("h", fp="1" * 16))
        s.put(rec("h", limit=100))
    with Store(b) as s:
        s.put(rec("h", fp="2" * 16))
        s.put(rec("h", limit=None))
        s.put(rec("h", split="val"))
        s.put(rec("h", limit=100, task="lm"))
    assert merge_stores([a, b], tmp_path / "all.db").added == 6


# ---- merging: refusals ---------------------------------------------------------------------------
def not_sqlite(path):
    path.write_text("hello, not a database\n")


def foreign_sqlite(path):
    with closing(sqlite3.connect(path)) as c, c:
        c.execute("CREATE TABLE notes (text TEXT)")


def folder(path):
    path.mkdir()


@pytest.mark.parametrize("make, says", [
    (None, "does not exist"),
    (folder, "is a folder"),
    (not_sqlite, "is not a result store (not a SQLite file)"),
    (foreign_sqlite, "is a SQLite file but not a result store (no records, runs, run_members table)"),
    (write_v1_store, f"has store schema 1 and this build merges schema {SCHEMA_VERSION}; upgrade it in place "
                     "first: python -m compression_core store upgrade"),
    (lambda p: shutil.move(newer_store(p.parent), p),
     f"has store schema {SCHEMA_VERSION + 1}, newer than this build's {SCHEMA_VERSION}; merge it with the newer"),
])
def test_bad_inputs_are_one_line_and_write_nothing(two_stores, tmp_path, make, says):
    a, _ = two_stores
    bad = tmp_path / "bad.db"
    if make is not None:
        make(bad)
    into = tmp_path / "all.db"
    with pytest.raises(StoreError) as err:
        merge_stores([a, bad], into)
    assert str(err.value).startswith(f"input {str(bad)!r} ") and says in str(err.value)
    assert "\n" not in str(err.value) and not into.exists()


def test_into_an_input_or_a_file_that_is_not_a_store_is_refused(two_stores, tmp_path):
    a, b = two_stores
    before = dump(a)
    for into in (a, tmp_path / "." / "x" / ".." / "a.db"):
        (tmp_path / "x").mkdir(exist_ok=True)
        with pytest.raises(StoreError, match="is also an input; merge into another file"):
            merge_stores([b, a], into)
    assert dump(a) == before
    text = tmp_path / "notes.txt"
    not_sqlite(text)
    with pytest.raises(StoreError, match=r"^--into .* is not a result store \(not a SQLite file\)"):
        merge_stores([a], text)
    assert text.read_text() == "hello, not a database\n"
    with pytest.raises(StoreError, match="at least one input"):
        merge_stores([], tmp_path / "all.db")
    newer = newer_store(tmp_path)
    before = newer.read_bytes()
    with pytest.raises(StoreError, match=f"^store {newer} was written by a newer Compression Explorer"):
        merge_stores([a], newer)
    assert newer.read_bytes() == before


def test_an_upgraded_older_store_merges(two_stores, tmp_path):
    old = tmp_path / "v1.db"
    write_v1_store(old)
    assert upgrade_store(old) == (1, SCHEMA_VERSION) and upgrade_store(old) == (SCHEMA_VERSION, SCHEMA_VERSION)
    summary = merge_stores([two_stores[0], old], tmp_path / "all.db")
    assert (summary.added, summary.runs) == (4, 2)


def test_cli_store_merge_refusals_are_one_line(tmp_path, capsys):
    old = tmp_path / "v1.db"
    write_v1_store(old)
    for argv, says in ((["store", "merge", str(old), "--into", str(tmp_path / "all.db")], "has store schema 1"),
                       (["store", "merge", str(tmp_path / "gone.db"), "--into", str(tmp_path / "all.db")],
                        "does not exist"),
                       (["store", "merge", str(old)], "--into"),
                       (["store"], "merge,upgrade")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "all.db").exists()
    assert cli.main(["store", "upgrade", str(old)]) == 0
    assert capsys.readouterr().out == f"{old}: store schema 1 -> {SCHEMA_VERSION}\n"
    assert cli.main(["store", "merge", str(old), "--into", str(tmp_path / "all.db")]) == 0
    assert capsys.readouterr().out.startswith(f"merged 1 store(s) into {tmp_path / 'all.db'}: 2 records added")


# ---- end to end: a job array of two real processes -----------------------------------------------
def run_cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "compression_core", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def test_two_shard_processes_merged_equal_a_serial_sweep(tmp_path, capsys):
    sweep = ["sweep", "--model", "digits-cnn", "--dataset", "digits", "--limit", "100", "--bits", "4,8",
             "--sparsity", "0,0.5", "--prune", "magnitude,random", "--json"]
    jobs = [run_cli(*sweep, "--shard", f"{i}/2", "--store", str(tmp_path / f"shard-{i}.db")) for i in (1, 2)]
    jobs.append(run_cli(*sweep, "--store", str(tmp_path / "serial.db")))
    shard_outputs = [json.loads(finish(job)) for job in jobs[:2]]
    serial = {r["config_hash"]: r for r in json.loads(finish(jobs[2]))}
    assert len(serial) == 6 and [len(out) for out in shard_outputs] == [3, 3]  # sparsity 0: one config per bits
    printed = [{r["config_hash"] for r in out} for out in shard_outputs]
    assert printed[0].isdisjoint(printed[1]) and printed[0] | printed[1] == set(serial)

    into = tmp_path / "all.db"
    merge = ["store", "merge", str(tmp_path / "shard-1.db"), str(tmp_path / "shard-2.db"), "--into", str(into)]
    assert json.loads(finish(run_cli(*merge, "--json")))["added"] == 6
    assert cli.main(merge) == 0  # again, in this process
    assert capsys.readouterr().out.strip() == (f"merged 2 store(s) into {into}: 0 records added, 6 already there "
                                               "(0 replaced by a newer record), 0 runs added; it holds 6 records "
                                               "in 2 runs")
    with Store(into) as merged, Store(tmp_path / "serial.db") as alone:
        assert sorted(r["n_records"] for r in merged.runs()) == [3, 3]
        merged_records, serial_records = by_hash(merged), by_hash(alone)
        assert merged_records.keys() == serial_records.keys() and len(merged_records) == 6
        for key, record in merged_records.items():
            assert differing_fields(record, serial_records[key]) == [], key
