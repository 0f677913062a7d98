"""Sweep: grid expansion, streaming into the store, progress, cancel, resume after a real SIGKILL, claims, store failures."""
import importlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compression_core._version import __version__
from compression_core.config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec
from compression_core.store import Store, new_owner
from compression_core.grid import expand_grid
from compression_core.sweep import SerialExecutor, sweep

ROOT = Path(__file__).resolve().parents[2]


class FakeExperiment:
    """Deterministic stand-in for experiment.Experiment: accuracy and size follow from bits and sparsity."""

    layer_names = ["conv1", "fc"]

    def __init__(self, on_run=None):
        self.calls: list[str] = []
        self.on_run = on_run

    def key(self, config):
        return {"model": "fake", "fingerprint": "0123456789abcdef", "dataset": "toy", "split": "test",
                "limit": None, "config_hash": config.config_hash}

    def run(self, config):
        self.calls.append(config.config_hash)
        if self.on_run:
            self.on_run(len(self.calls))
        bits, s = config.quant.bits, config.prune.target_sparsity
        acc = round(0.98 - 0.3 / bits - 0.2 * s ** 3, 6)
        return {**self.key(config), "engine_version": __version__, "config": config.to_dict(), "label": config.label,
                "bits": bits, "sparsity": s, "accuracy": acc,
                "accuracy_drop_pts": round(100 * (0.98 - 0.3 / 32 - acc), 6),
                "size_bytes": int(1000 * bits / 32 * (1 - s)) + 10, "layers": []}


def grid():
    return expand_grid(CompressionConfig(), bits=[2, 4, 8, 32], sparsity=[0, 0.5, 0.9])


# ---- expand_grid ---------------------------------------------------------------------------------
def test_expand_grid_product_fields_and_fp32_point():
    configs = grid()
    assert len(configs) == 12
    assert [(c.quant.bits, c.prune.sparsity) for c in configs[:4]] == [(2, 0), (2, 0.5), (2, 0.9), (4, 0)]
    assert CompressionConfig() in configs  # bits 32 x sparsity 0 is exactly the fp32 config
    assert len({c.config_hash for c in configs}) == 12


def test_expand_grid_maps_every_field_and_keeps_base():
    base = CompressionConfig(seed=3, overrides=(LayerOverride("fc", skip=True),))
    (c,) = expand_grid(base, bits=4, scheme="asym", granularity="tensor", range="percentile", percentile=99.0,
                       sparsity=0.5, prune="random", scope="global", act_bits=8, bias_correction=True,
                       finetune_steps=5, index_bits=5)
    assert c.quant == QuantSpec(bits=4, scheme="asym", granularity="tensor", range="percentile", percentile=99.0)
    assert c.prune == PruneSpec(sparsity=0.5, method="random", scope="global")
    assert (c.act_bits, c.bias_correction, c.finetune_steps, c.index_bits, c.seed) == (8, True, 5, 5, 3)
    assert c.overrides == base.overrides


def test_expand_grid_dedupes_meaningless_combinations():
    # fp16 ignores bits; bits 32 ignores scheme; nm ignores sparsity and scope; structured is layer-wise
    assert len(expand_grid(bits=[4, 8], quantizer=["fp16"])) == 1
    assert len(expand_grid(bits=[32], scheme=["sym", "asym"], granularity=["tensor", "channel"])) == 1
    nm = expand_grid(prune=["nm"], nm=["2:4", (1, 4)], sparsity=[0.3, 0.6], scope=["layer", "global"])
    assert [(c.prune.n, c.prune.m, c.prune.sparsity) for c in nm] == [(2, 4, 0.0), (1, 4, 0.0)]
    st = expand_grid(prune=["magnitude", "structured"], scope=["layer", "global"], sparsity=[0.5])
    assert [(c.prune.method, c.prune.scope) for c in st] == [("magnitude", "layer"), ("magnitude", "global"),
                                                              ("structured", "layer")]
    # sparsity 0 means no pruning whatever the method
    assert len(expand_grid(sparsity=[0], prune=["magnitude", "random", "taylor"])) == 1
    # kmeans has no scheme; percentile only matters for range=percentile
    assert len(expand_grid(bits=[4], quantizer=["kmeans"], scheme=["sym", "asym"])) == 1
    assert len(expand_grid(bits=[4], range=["minmax"], percentile=[99.0, 99.9])) == 1


def test_expand_grid_bad_input_names_it():
    with pytest.raises(ConfigError, match="unknown sweep setting.*'bitz'"):
        expand_grid(bitz=[4])
    with pytest.raises(ConfigError, match="sparsity"):
        expand_grid(sparsity=[0.5, 1.0])
    with pytest.raises(ConfigError, match="nm must look like"):
        expand_grid(prune=["nm"], nm=["24"])


def test_an_invalid_combination_is_named_by_the_settings_that_vary_only():
    reason = "bits=1 needs scheme asym"
    with pytest.raises(ConfigError) as one:  # one config (the CLI's evaluate): the reason alone
        expand_grid(bits=[1], scheme=["sym"], sparsity=[0.0], granularity=["channel"])
    assert str(one.value).startswith(reason) and "combination" not in str(one.value)
    with pytest.raises(ConfigError) as grid:  # a grid: which combination, by the settings that vary
        expand_grid(bits=[4, 1], scheme=["sym"], sparsity=[0.0, 0.5], granularity=["channel"])
    assert str(grid.value).startswith(f"sweep combination {{'bits': 1, 'sparsity': 0.0}} is invalid: {reason}")


# ---- sweep ---------------------------------------------------------------------------------------
def test_sweep_streams_into_store_and_resumes(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    exp = FakeExperiment()
    streamed, seen = [], []
    first = sweep(exp, grid()[:5], store=store, on_record=streamed.append,
                  progress=lambda d, t, eta, label: seen.append((d, t, eta, label)))
    assert len(first) == 5 and len(exp.calls) == 5 and store.count() == 5
    assert [r["cached"] for r in first] == [False] * 5 and streamed == first
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4, 5] and {s[1] for s in seen} == {5}
    assert seen[0][2] is None and seen[1][2] is None  # no pace yet: the first config carries the warm-up
    assert all(s[2] >= 0 for s in seen[2:]) and seen[-1][2] == 0
    assert seen[0][3] == grid()[0].label and seen[-1][3] is None

    exp2 = FakeExperiment()
    second = sweep(exp2, grid(), store=store)
    assert len(exp2.calls) == 7  # only the new configs ran
    assert [r["cached"] for r in second] == [True] * 5 + [False] * 7
    assert [r["config_hash"] for r in second] == [c.config_hash for c in grid()]
    assert [r["accuracy"] for r in second[:5]] == [r["accuracy"] for r in first]
    assert store.count() == 12


@pytest.mark.parametrize("cached", [0, 4])
def test_eta_leaves_out_the_first_configs_warm_up(tmp_path, cached):
    """The first config pays for the baseline evaluation (here 6x a config); the time left that progress reports
    must be the real one within 2x, also when part of the grid was already in the store."""
    configs, step = grid()[:10], 0.05
    store = Store(tmp_path / "s.sqlite")
    if cached:
        sweep(FakeExperiment(), configs[:cached], store=store)
    exp = FakeExperiment(on_run=lambda n: time.sleep(7 * step if n == 1 else step))
    seen = []
    sweep(exp, configs, store=store, progress=lambda d, t, eta, label: seen.append((time.perf_counter(), d, eta)))
    end = time.perf_counter()
    estimates = [(eta, end - t) for t, d, eta in seen if eta is not None and d < len(configs)]
    assert len(estimates) == len(configs) - cached - 2  # none before the start, none after the first config
    assert all(0.5 <= eta / left <= 2.0 for eta, left in estimates), estimates


def test_sweep_cancel_then_resume_without_recomputation(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cancel = threading.Event()
    exp = FakeExperiment(on_run=lambda n: cancel.set() if n == 4 else None)  # cancel while config 4 runs
    part = sweep(exp, grid(), store=store, cancel=cancel)
    assert len(part) == 4 and store.count() == 4  # the config in flight finishes and is kept; no further start
    stored = {k["config_hash"]: store.get(k)["created_at"] for k in store.keys()}

    exp2 = FakeExperiment()
    full = sweep(exp2, grid(), store=store, cancel=threading.Event())
    assert len(full) == 12 and store.count() == 12
    assert not set(exp2.calls) & set(stored)  # nothing stored was recomputed
    assert {k["config_hash"]: store.get(k)["created_at"] for k in store.keys()
            if k["config_hash"] in stored} == stored


def test_sweep_already_cancelled_runs_nothing(tmp_path):
    cancel = threading.Event()
    cancel.set()
    exp = FakeExperiment()
    assert sweep(exp, grid(), cancel=cancel) == [] and exp.calls == []


def test_sweep_without_store_dedupes_and_uses_executor():
    class CountingExecutor(SerialExecutor):
        items = 0

        def map(self, fn, items):
            items = list(items)
            CountingExecutor.items = len(items)
            return (fn(i) for i in reversed(items))  # completion order differs from input order

    exp = FakeExperiment()
    configs = grid() + grid()[:3]
    out = sweep(exp, configs, executor=CountingExecutor())
    assert CountingExecutor.items == 12 and len(exp.calls) == 12
    assert [r["config_hash"] for r in out] == [c.config_hash for c in grid()]  # input order, not finish order


def test_sweep_run_groups_cached_and_new(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    exp = FakeExperiment()
    r1 = store.new_run("first")
    sweep(exp, grid()[:6], store=store, run_id=r1)
    r2 = store.new_run("second")
    sweep(exp, grid()[3:], store=store, run_id=r2)
    assert store.count(run_id=r1) == 6 and store.count(run_id=r2) == 9 and store.count() == 12
    with pytest.raises(ValueError, match="run_id needs a store"):
        sweep(exp, grid(), run_id=r1)


# ---- the real thing: kill the CLI mid-sweep, start it again -----------------------------------------
BITS, SPARSITY = "2,4,8,32", "0,0.5,0.9"  # 12 configs; each takes far longer than the 20 ms poll


def _rows(path: Path) -> dict[str, float]:
    try:
        with sqlite3.connect(path, timeout=30) as c:
            return dict(c.execute("SELECT config_hash, created_at FROM records").fetchall())
    except sqlite3.OperationalError:  # file or table not created yet
        return {}


@pytest.mark.skipif(not (ROOT / "compression_core" / "cli.py").exists(), reason="CLI not written yet")
def test_cli_sweep_survives_sigkill(tmp_path):
    store = tmp_path / "runs.sqlite"
    cmd = [sys.executable, "-m", "compression_core", "sweep", "--model", "digits-cnn", "--dataset", "digits",
           "--bits", BITS, "--sparsity", SPARSITY, "--store", str(store), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _rows(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    before = _rows(store)
    assert before, f"the sweep stored nothing before it was killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert len(before) < 12

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    records = json.loads(done.stdout)
    after = _rows(store)
    assert len(records) == len(after) == 12  # 4 bit-widths x 3 sparsities, each exactly once
    assert {h: after[h] for h in before} == before  # stored configs were not recomputed ...
    assert {r["config_hash"] for r in records if r["cached"]} == set(before)  # ... but returned from the store
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)


# ---- nothing computed is lost: a store that cannot be written ---------------------------------------
def test_store_write_failure_returns_every_record_and_warns_once(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock for longer than our timeout
    try:
        store = Store(path, timeout_s=0.2)
        warnings, exp = [], FakeExperiment()
        records = sweep(exp, grid(), store=store, on_warning=warnings.append)
    finally:
        blocker.execute("ROLLBACK")
    assert len(records) == 12 and len(exp.calls) == 12 and not any(r["cached"] for r in records)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: the result store {path} cannot be written (database is locked);")
    assert store.count() == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_read_only_store_returns_records_and_warns_once(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    path.chmod(0o444)
    warnings = []
    records = sweep(FakeExperiment(), grid(), store=Store(path), on_warning=warnings.append)
    assert len(records) == 12 and len(warnings) == 1 and "cannot be written" in warnings[0]


# ---- concurrency: claims in the store --------------------------------------------------------------
def test_config_claimed_by_a_live_owner_is_awaited_not_recomputed(tmp_path, monkeypatch):
    # the module, not the `sweep` function the package top exports under the same name
    monkeypatch.setattr(importlib.import_module("compression_core.sweep"), "POLL_S", 0.01)
    store = Store(tmp_path / "s.sqlite")
    configs = grid()[:3]
    exp = FakeExperiment()
    other = new_owner()
    assert store.claim(exp.key(configs[1]), other)  # another process is computing config 1
    finisher = threading.Timer(0.3, lambda: store.put(FakeExperiment().run(configs[1])))
    finisher.start()
    records = sweep(exp, configs, store=store)
    finisher.join()
    assert exp.calls == [configs[0].config_hash, configs[2].config_hash]
    assert [r["config_hash"] for r in records] == [c.config_hash for c in configs]
    assert [r["cached"] for r in records] == [False, True, False]
    assert store.claim_owner(exp.key(configs[0])) is None  # this sweep's claims are released


class SlowExperiment(FakeExperiment):
    def run(self, config):
        time.sleep(0.05)
        return super().run(config)


def _sweep_process(path: str, lo: int, hi: int, barrier, results) -> None:
    configs = expand_grid(CompressionConfig(), bits=[2, 3, 4, 5, 6, 8], sparsity=[0, 0.5, 0.9])[lo:hi]
    exp = SlowExperiment()
    barrier.wait(60)
    records = sweep(exp, configs, store=Store(path))
    results.put((lo, exp.calls, [r["config_hash"] for r in records]))


def test_two_processes_with_overlapping_grids_compute_each_config_once(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Store(path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sweep_process, args=(path, lo, lo + 12, barrier, results)) for lo in (0, 6)]
    for p in procs:
        p.start()
    out = {lo: (calls, hashes) for lo, calls, hashes in (results.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    every = [c.config_hash for c in expand_grid(CompressionConfig(), bits=[2, 3, 4, 5, 6, 8], sparsity=[0, 0.5, 0.9])]
    calls = out[0][0] + out[6][0]
    assert sorted(calls) == sorted(every)  # 18 configs, each computed exactly once across both processes
    assert out[0][0] and out[6][0]  # both did part of the work
    assert out[0][1] == every[:12] and out[6][1] == every[6:]  # each got its whole grid back
    with Store(path) as s:
        assert s.count() == 18
