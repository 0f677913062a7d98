"""RayExecutor on a local Ray instance (2 CPUs): the same records as a serial sweep, workers that die, cancel,
configs that fail, and the one-line refusals (no Ray, an unreachable address)."""
import pickle
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from compression_core.cli import main
from compression_core.executor_ray import INSTALL_HINT, WORKER_PREFIX, ClusterError, RayExecutor, cluster_summary
from compression_core.executor_ray import require_ray
from compression_core.record import differing_fields
from compression_core.spec import ExperimentSpec
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep
from tests.core.byo_model import tiny_mlp

ray = pytest.importorskip("ray")

DIGITS = ExperimentSpec(model="digits-cnn", dataset="digits", limit=200, device="cpu")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def digits():
    return DIGITS.build()


@pytest.fixture(scope="module")
def executor(local_ray):
    """Two single-CPU workers shared by the tests below (starting workers is the slow part); a test that kills
    them leaves the next one to start fresh ones."""
    with RayExecutor(DIGITS, workers=2) as executor:
        yield executor


def _workers() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(WORKER_PREFIX)]


def test_ray_records_equal_serial_records_config_for_config(executor, digits, tmp_path):
    configs = expand_grid(bits=[2, 4, 8], sparsity=[0, 0.5], prune=["magnitude", "random"])
    serial = sweep(digits, configs)
    store = Store(tmp_path / "runs.sqlite")
    streamed = []
    records = sweep(digits, configs, store=store, executor=executor, on_record=streamed.append)
    assert cluster_summary(None) == {"address": "local", "nodes": 1, "cpus": 2, "gpus": 0, "workers": 2}
    assert store.count() == len(configs) == 9 and not any(r["cached"] for r in records)
    for a, b in zip(serial, records, strict=True):  # loss: a mean over batches, equal up to float rounding
        assert a["config_hash"] == b["config_hash"] and differing_fields(a, b) == []
        assert (a["accuracy"], a["size_bytes"], a["nnz"], a["layers"]) == (b["accuracy"], b["size_bytes"], b["nnz"],
                                                                          b["layers"])
    assert {r["config_hash"] for r in streamed} == {c.config_hash for c in configs}
    unused = RayExecutor(DIGITS, workers=2)
    assert all(r["cached"] for r in sweep(digits, configs, store=store, executor=unused))
    assert len(_workers()) == 2  # all stored: `unused` started no worker


def test_a_killed_worker_loses_nothing(executor, digits, tmp_path):
    configs = expand_grid(bits=[2, 4, 8], sparsity=[0, 0.3, 0.6, 0.9])
    store = Store(tmp_path / "runs.sqlite")
    killed, failures = [], []

    def kill_one(record):
        if not killed:  # after the first record: one worker is computing, the other just finished
            victim = _workers()[0]
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
            killed.append(victim["name"])

    records = sweep(digits, configs, store=store, executor=executor, on_record=kill_one,
                    on_failure=lambda c, line: failures.append(line))
    assert [w["name"] for w in _workers()] != killed and len(_workers()) == 1
    assert failures == [] and len(records) == store.count() == 12
    assert [r["config_hash"] for r in records] == [c.config_hash for c in configs]


def test_workers_that_built_another_experiment_are_refused_before_the_store(executor, tmp_path):
    other = ExperimentSpec(**{**DIGITS.__dict__, "limit": 100}).build()  # the workers evaluate 200 samples
    store = Store(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="a worker evaluated limit 200 where this process has 100"):
        sweep(other, expand_grid(bits=[4, 8]), store=store, executor=executor)
    assert store.count() == 0


def test_cancel_stops_the_workers_within_seconds_and_keeps_what_finished(executor, digits, tmp_path):
    configs = expand_grid(bits=[2, 4, 8], sparsity=[0, 0.5], finetune_steps=[100])  # ~1.5 s each on an idle CPU
    store, cancel, set_at = Store(tmp_path / "runs.sqlite"), threading.Event(), []

    def cancel_soon(record):
        if not set_at:
            threading.Timer(0.3, lambda: (set_at.append(time.perf_counter()), cancel.set())).start()
            set_at.append(None)

    records = sweep(digits, configs, store=store, executor=executor, on_record=cancel_soon, cancel=cancel)
    stopped = time.perf_counter() - set_at[-1]
    assert stopped < 3.0 and executor._pool == {}  # the workers still computing were killed
    assert 1 <= len(records) < len(configs) and store.count() == len(records)
    assert {r["config_hash"] for r in store.records()} == {r["config_hash"] for r in records}


def test_a_config_that_fails_twice_is_reported_not_stored(local_ray, tmp_path):
    from tests.core.test_datasets import _write_images

    _write_images(tmp_path / "imgs", {"a": 3, "b": 3}, "L", size=(8, 8))  # no train split: nothing to calibrate on
    torch.manual_seed(0)
    save_file(tiny_mlp(2).state_dict(), tmp_path / "mlp.safetensors")
    spec = ExperimentSpec(model="tests.core.byo_model:tiny_mlp", num_classes=2, device="cpu", transform="none",
                          dataset=f"imagefolder:{tmp_path}/imgs", weights=(tmp_path / "mlp.safetensors").read_bytes(),
                          weights_name="mlp.safetensors")
    exp = spec.build()
    configs = expand_grid(bits=[4, 8], act_bits=[32, 8])
    failures = []
    with RayExecutor(spec, workers=1) as executor:  # one worker: it fails twice there
        records = sweep(exp, configs, store=Store(tmp_path / "runs.sqlite"), executor=executor,
                        on_failure=lambda c, line: failures.append((c.act_bits, line)))
    assert [r["act_bits"] for r in records] == [32, 32]
    assert len(failures) == 2 and all(bits == 8 and "no train split to calibrate on" in line
                                      for bits, line in failures)


def test_spec_pickles_without_tensors_and_bytes_build_the_same_model(tmp_path):
    torch.manual_seed(0)
    save_file(tiny_mlp(10).state_dict(), tmp_path / "w.safetensors")  # 64*32 + 32*10 floats: ~10 KB
    spec = ExperimentSpec(model="tests.core.byo_model:tiny_mlp", num_classes=10, dataset="digits", limit=30,
                          weights=str(tmp_path / "w.safetensors"), device="cpu")
    blob = pickle.dumps(spec)
    assert len(blob) < 1000 and pickle.loads(blob) == spec
    by_path = spec.build()
    by_bytes = ExperimentSpec(**{**spec.__dict__, "weights": (tmp_path / "w.safetensors").read_bytes(),
                                 "weights_name": "mine.safetensors"}).build()
    assert by_bytes.loaded.fingerprint == by_path.loaded.fingerprint and by_path.limit == 30
    with pytest.raises(Exception, match="mine.safetensors") as err:
        ExperimentSpec(**{**spec.__dict__, "weights": b"not safetensors", "weights_name": "mine.safetensors"}).build()
    assert "tmp" not in str(err.value).replace(str(tmp_path), "")


def test_without_ray_the_executor_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ClusterError, match="install it with"):
        require_ray()
    assert main(["sweep", "--model", "digits-cnn", "--bits", "4", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL_HINT in err


@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
                                           ("ray://127.0.0.1:1", "no Ray cluster answers at ray://127.0.0.1:1"),
                                           ("nowhere", "must be auto, ray://HOST:PORT or HOST:PORT")])
def test_an_unreachable_address_is_one_line(address, says, capsys):
    start = time.perf_counter()
    assert main(["sweep", "--model", "digits-cnn", "--bits", "4", "--executor", "ray", "--address", address]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 30 and err.count("\n") == 1 and says in err


def test_ray_flags_without_the_ray_executor_are_refused(capsys):
    assert main(["sweep", "--model", "digits-cnn", "--workers", "2"]) == 2
    assert capsys.readouterr().err == "error: --workers needs --executor ray\n"
