"""The CLI contract: JSON shapes on stdout, exit code 2 with one stderr line for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from compression_core.store import Store

ROOT = Path(__file__).resolve().parents[2]
RECORD_FIELDS = {"model", "dataset", "split", "config", "config_hash", "bits", "sparsity", "accuracy",
                 "accuracy_ci_low", "accuracy_ci_high", "n_samples", "accuracy_drop_pts", "agreement", "dense_bytes",
                 "size_bytes", "compression_ratio", "bits_per_weight", "realized_sparsity", "n_params", "nnz", "macs",
                 "device", "eval_seconds", "layers"}
LAYER_FIELDS = {"name", "shape", "bits", "sparsity", "index_format", "size_bits"}


def cli(*args, store=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = ["--store", str(store)] if store else []
    return subprocess.run([sys.executable, "-m", "compression_core", *args, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_evaluate_json_record_shape(tmp_path):
    r = cli("evaluate", "--model", "digits-cnn", "--dataset", "digits", "--bits", "4", "--sparsity", "0.5",
            "--limit", "200", "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert RECORD_FIELDS <= rec.keys()
    assert rec["n_samples"] == 200 and rec["bits"] == 4 and rec["sparsity"] == 0.5
    assert rec["accuracy_ci_low"] <= rec["accuracy"] <= rec["accuracy_ci_high"]
    assert 0.49 < rec["realized_sparsity"] < 0.51
    assert rec["size_bytes"] < rec["dense_bytes"] / 6
    assert rec["bn_folded"] == [] and rec["bn_fold_note"] == "the model has no BatchNorm"
    assert all(LAYER_FIELDS <= l.keys() for l in rec["layers"])
    assert json.loads(json.dumps(rec["config"]))["quant"]["bits"] == 4


def test_sweep_and_sensitivity_and_export(tmp_path):
    store = tmp_path / "s.sqlite"
    r = cli("sweep", "--model", "digits-cnn", "--dataset", "digits", "--bits", "4,32", "--sparsity", "0,0.5",
            "--json", store=store)
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert sorted((x["bits"], x["sparsity"]) for x in recs) == [(4, 0.0), (4, 0.5), (32, 0.0), (32, 0.5)]
    assert "[4/4]" in r.stderr  # progress goes to stderr
    (run,) = Store(store).runs()
    assert f"run {run['run_id']} (its report: python -m compression_core report --run {run['run_id']}" in r.stderr

    r = cli("sensitivity", "--model", "digits-cnn", "--dataset", "digits", "--bits", "2", "--sparsity", "0,0.9",
            "--limit", "100", "--json", store=store)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    layers = {row["layer"] for row in rows}
    assert len(rows) == 2 * len(layers) and len(layers) >= 3

    out = tmp_path / "m.cex"
    r = cli("export", "--model", "digits-cnn", "--dataset", "digits", "--bits", "4", "--sparsity", "0.8",
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["file_bytes"] == out.stat().st_size
    assert abs(rec["file_bytes"] - rec["size_bytes"]) <= 0.02 * rec["size_bytes"] + 4096


@pytest.fixture
def byo_files(tmp_path):
    from tests.core.byo_model import tiny_mlp

    model = tiny_mlp(num_classes=10)
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["1.weight"][0, 0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_file(bad, str(nan))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(300))
    return {"good": good, "nan": nan, "corrupt": corrupt, "missing": tmp_path / "nope.pt"}


@pytest.mark.parametrize("args, says", [
    (["--model", "no-such-model"], "no-such-model"),
    (["--model", "digits-cnn", "--bits", "0"], "--bits"),
    (["--model", "digits-cnn", "--sparsity", "1"], "sparsity"),
    (["--model", "digits-cnn", "--dataset", "cifar-99"], "cifar-99"),
    (["--model", "tests.core.byo_model:tiny_mlp", "--weights", "{missing}"], "nope.pt"),
    (["--model", "tests.core.byo_model:tiny_mlp", "--weights", "{corrupt}"], "corrupt.pt"),
    (["--model", "tests.core.byo_model:tiny_mlp", "--weights", "{nan}"], "NaN"),
])
def test_bad_input_exits_2_with_one_line(args, says, byo_files, tmp_path):
    args = [a.format(**byo_files) for a in args]
    if "tests.core.byo_model:tiny_mlp" in args:
        args += ["--dataset", "digits"]
    r = cli("evaluate", *args, "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert says.lower() in lines[0].lower()
    assert r.stdout == ""


def test_an_impossible_config_says_why_in_the_users_terms(tmp_path):
    # one config: the reason alone (not the dozen defaults it was built from); a sweep: which of its values
    r = cli("evaluate", "--model", "digits-cnn", "--bits", "1", store=tmp_path / "s.sqlite")
    assert r.returncode == 2 and r.stderr.startswith("error: bits=1 needs scheme asym"), r.stderr
    r = cli("sweep", "--model", "digits-cnn", "--bits", "4,1", store=tmp_path / "s.sqlite")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: sweep combination {'bits': 1} is invalid: bits=1 needs scheme asym"), r.stderr


def test_byo_model_evaluates(byo_files, tmp_path):
    r = cli("evaluate", "--model", "tests.core.byo_model:tiny_mlp", "--weights", str(byo_files["good"]),
            "--num-classes", "10", "--dataset", "digits", "--bits", "8", "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["n_params"] == 64 * 32 + 32 + 32 * 10 + 10 and rec["bits"] == 8


def test_models_and_datasets_listing():
    r = cli("models", "--json")
    assert r.returncode == 0, r.stderr
    names = {m["name"] for m in json.loads(r.stdout)}
    assert {"lenet300", "lenet5", "digits-cnn", "mnist1d-mlp", "mnist1d-cnn"} <= names
    r = cli("datasets", "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["name"]: d for d in json.loads(r.stdout)}
    assert rows["mnist"]["available"] and rows["digits"]["available"]


def test_every_sweep_setting_but_norm_the_switches_and_seed_is_a_comma_list_flag():
    from compression_core.cli import build_parser
    from compression_core.cli_flags import GRID_FLAGS, configs_from_args
    from compression_core.grid import GRID_FIELDS

    args = build_parser().parse_args(["sweep", "--model", "digits-cnn", "--bits", "4,8", "--index-bits", "4,8",
                                      "--finetune-steps", "0,5", "--seed", "3", "--bias-correction",
                                      "--no-fold-bn"])
    assert set(GRID_FIELDS) - set(GRID_FLAGS) == {"norm", "bias_correction", "fold_bn", "seed", "double_quant",
                                                  "act_order"}
    assert all(isinstance(getattr(args, flag), list) for flag in GRID_FLAGS if flag not in
               ("sparsity", "nm", "percentile", "granularity", "group_size", "alpha"))  # None: "not given"
    configs = configs_from_args(args)
    assert [(c.quant.bits, c.index_bits, c.finetune_steps) for c in configs] == [
        (4, 4, 0), (4, 4, 5), (4, 8, 0), (4, 8, 5), (8, 4, 0), (8, 4, 5), (8, 8, 0), (8, 8, 5)]
    assert all(c.seed == 3 and c.bias_correction and not c.fold_bn for c in configs)
    assert all(c.fold_bn for c in configs_from_args(build_parser().parse_args(["sweep", "--model", "digits-cnn"])))


def test_evaluate_image_folder_counts_a_corrupt_image_and_needs_train_to_calibrate(tmp_path, monkeypatch):
    from tests.core.test_datasets import _write_images

    monkeypatch.setenv("COMPRESSION_EXPLORER_DECODED", str(tmp_path / "decoded"))
    _write_images(tmp_path / "imgs", {"a": 3, "b": 2}, "L", size=(8, 8))
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG cut short")
    model = ("--model", "tests.core.byo_model:tiny_mlp", "--num-classes", "2",
             "--dataset", f"imagefolder:{tmp_path}/imgs", "--transform", "none")
    r = cli("evaluate", *model, "--json", store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["n_skipped"] == 1 and rec["n_samples"] == 5 and rec["split"] == "test"
    assert rec["dataset"] == f"imagefolder:{(tmp_path / 'imgs').resolve()} [transform none]"
    r = cli("evaluate", *model, "--act-bits", "8", store=tmp_path / "s.sqlite")
    assert r.returncode == 2 and "no train split to calibrate on" in r.stderr and "Traceback" not in r.stderr
    assert len(list((tmp_path / "decoded").iterdir())) == 1  # both runs: one decode, one cache entry


# ---- text rows: every metric of the record, the UI's sign convention, unknown never 0 -----------------------

def test_text_row_shows_every_metric_with_the_change_as_the_dashboard_says_it(tmp_path, capsys):
    from compression_core import cli as cli_module
    from compression_core.record_text import change_text

    argv = ["evaluate", "--model", "digits-cnn", "--dataset", "digits", "--limit", "100", "--bits", "2",
            "--sparsity", "0.9", "--act-bits", "8", "--store", str(tmp_path / "s.sqlite")]
    assert cli_module.main([*argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert cli_module.main(argv) == 0
    head, more = capsys.readouterr().out.rstrip("\n").split("\n")
    drop = rec["accuracy_drop_pts"]
    assert drop > 0 and f"change -{drop:.2f} pts vs fp32" in head and change_text(drop) == f"-{drop:.2f} pts vs fp32"
    assert "+" not in head.split("change ")[1].split("size")[0]  # a loss never reads as a gain
    # digits-cnn per sample: conv1 9,216 MACs (14 of 144 weights kept), conv2 294,912 (461 of 4,608), fc1 32,768
    # (3,277 kept), fc2 640 (64 kept): 337,536 MACs, 896 + 29,504 + 3,277 + 64 = 33,741 of them on kept weights
    assert (rec["macs"], rec["sparse_macs"]) == (337_536, 33_741)
    assert (rec["bitops"], rec["sparse_bitops"]) == (337_536 * 2 * 8, 33_741 * 2 * 8)  # 2-bit weights, 8-bit inputs
    assert more == (f"    top-5 {100 * rec['top5']:.2f} %  MACs 338 k (sparse 33.7 k)  BitOps 5.40 M (sparse 540 k)  "
                    f"latency {rec['latency_ms_per_batch']:.2f} ms/batch (eval {rec['eval_seconds']:.2f} s)")


def test_a_stored_record_without_the_new_fields_reads_unknown_not_zero():
    from compression_core.record_text import record_line

    old = {"label": "int4", "accuracy": 0.5, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.6, "n_samples": 10,
           "accuracy_drop_pts": 0.0, "size_bytes": 2048, "compression_ratio": 8.0, "bits_per_weight": 4.0,
           "realized_sparsity": 0.0, "top5": None, "macs": 12_345, "sparse_macs": 12_345, "bitops": 987_654_321,
           "latency_ms_per_batch": 1.5, "eval_seconds": 0.25}
    head, more = record_line(old).split("\n")
    assert "change +0.00 pts vs fp32" in head
    assert more == ("    top-5 unknown  MACs 12.3 k (sparse 12.3 k)  BitOps 988 M (sparse unknown)  "
                    "latency 1.50 ms/batch (eval 0.25 s)")


def test_sweep_progress_ends_with_a_clean_final_line(tmp_path):
    from compression_core.record_text import progress_line

    assert progress_line(0, 2, None, "int4") == "[0/2] next: int4"
    assert progress_line(1, 2, 3.4, "int8") == "[1/2] eta 3s  next: int8"
    assert (progress_line(2, 2, 0.0, None), progress_line(1, 2, 1.0, None)) == ("[2/2] done", "[1/2] stopped")
    r = cli("sweep", "--model", "digits-cnn", "--dataset", "digits", "--limit", "50", "--bits", "4,8",
            store=tmp_path / "s.sqlite")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == "[2/2] done" and "None" not in r.stderr
