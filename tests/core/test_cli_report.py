"""`report --run ID --out FILE.html`: a real store from a CLI sweep, the recommended config, the command that
recomputes a record (checked by recomputing it), and one line + exit 2 for every bad input."""
from __future__ import annotations

import json
import re

import pytest
from safetensors.torch import save_file

from compression_core.cli import main
from compression_core.cli_reproduce import record_argv, reproduce_command
from compression_core.config import CompressionConfig, LayerOverride, PruneSpec, QuantSpec
from compression_core.pareto import pareto_front, recommended
from compression_core.store import Store
from compression_core.grid import expand_grid
from tests.core.test_cli import cli


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(store path, run id, records) of `sweep --bits 2,4,32 --sparsity 0,0.5 --limit 150` by the CLI."""
    path = tmp_path_factory.mktemp("cli-report") / "runs.sqlite"
    r = cli("sweep", "--model", "digits-cnn", "--dataset", "digits", "--bits", "2,4,32", "--sparsity", "0,0.5",
            "--limit", "150", "--json", store=path)
    assert r.returncode == 0, r.stderr
    (run,) = Store(path).runs()
    return path, run["run_id"], Store(path).records(run_id=run["run_id"])


def one_error_line(capsys, *args) -> str:
    """Run the CLI in this process (`main`, what `python -m compression_core` exits with); its one stderr line."""
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err and out == "", err
    return lines[0]


def test_report_of_a_cli_sweep(swept, tmp_path):
    path, run_id, records = swept
    out = tmp_path / "report.html"
    r = cli("report", "--run", run_id, "--out", str(out), "--json", store=path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    chosen = recommended(records, "accuracy")
    assert result == {"out": str(out), "bytes": out.stat().st_size, "run_id": run_id,
                      "config_hash": chosen["config_hash"], "label": chosen["label"]}
    text = out.read_text(encoding="utf-8")
    assert f'data-field="size_bytes" data-value="{chosen["size_bytes"]}"' in text
    assert f'data-field="metric_value" data-value="{json.dumps(chosen["metric_value"])}"' in text
    assert text.count('<tr class="chosen">') == 1 and text.count("Plotly.newPlot") == 2

    other = next(r for r in records if r is not chosen)
    r = cli("report", "--run", run_id, "--out", str(out), "--config-hash", other["config_hash"], store=path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"wrote .*report\.html: [\d,]+ bytes, run {run_id}, chosen .* \({other['config_hash']}\)\n",
                        r.stdout)
    assert f'data-field="metric_value" data-value="{json.dumps(other["metric_value"])}"' in out.read_text()


def test_the_reproduce_command_recomputes_the_record(swept):
    _, _, records = swept
    chosen = recommended(records, "accuracy")
    argv = record_argv(chosen)
    assert reproduce_command(chosen).startswith("python -m compression_core evaluate --model digits-cnn")
    r = cli(*argv, "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    for field in ("config_hash", "fingerprint", "n_samples", "correct", "size_bytes", "bits_per_weight"):
        assert again[field] == chosen[field], field


def test_report_of_a_bring_your_own_model(tmp_path):
    from tests.core.byo_model import tiny_mlp

    weights = tmp_path / "mlp.safetensors"
    save_file(tiny_mlp().state_dict(), str(weights))
    store = tmp_path / "runs.sqlite"
    r = cli("sweep", "--model", "tests.core.byo_model:tiny_mlp", "--weights", str(weights), "--dataset", "digits",
            "--bits", "4,8", "--limit", "100", store=store)
    assert r.returncode == 0, r.stderr
    (run,) = Store(store).runs()
    out = tmp_path / "byo.html"
    r = cli("report", "--run", "latest", "--out", str(out), store=store)  # the newest run: this one
    assert r.returncode == 0, r.stderr
    assert f", run {run['run_id']}, chosen " in r.stdout
    text = out.read_text()
    assert "evaluate --model tests.core.byo_model:tiny_mlp --dataset digits --limit 100" in text
    assert "If the model was loaded with --weights, add the same file" in text
    assert text.count("<td>1</td>") == 1 and text.count("<td>3</td>") == 1  # nn.Sequential's layers "1" and "3"


def test_bad_input_is_one_line_and_exit_2(swept, tmp_path, capsys):
    path, run_id, _ = swept
    out = tmp_path / "r.html"

    def report(*args, store=path):
        return one_error_line(capsys, "report", *args, "--store", str(store))
    assert f"its newest runs: {run_id}" in report("--run", "nope", "--out", str(out))
    empty = Store(path).new_run("empty run")
    assert "has no records yet" in report("--run", empty, "--out", str(out))
    assert "cannot be written" in report("--run", run_id, "--out", "/proc/r.html")
    assert "does not exist" in report("--run", run_id, "--out", str(tmp_path / "no" / "r.html"))
    assert "not a config of this run" in report("--run", run_id, "--out", str(out), "--config-hash", "0" * 16)
    missing = tmp_path / "missing.sqlite"
    assert "does not exist" in report("--run", run_id, "--out", str(out), store=missing)
    assert "--run" in one_error_line(capsys, "report", "--out", str(out))
    assert not out.exists() and not missing.exists()


CONFIGS = [
    *expand_grid(bits=[2, 4, 32], quantizer=["uniform", "kmeans"], sparsity=[0.0, 0.5],
                 prune=["magnitude", "nm", "structured"], scheme=["sym", "asym"]),
    *expand_grid(quantizer=["mxfp4", "nf4", "fp16", "fp8_e4m3"], granularity=["group"], group_size=[None, 64]),
    CompressionConfig(quant=QuantSpec(bits=8, range="percentile", percentile=99.0), act_bits=8, repair="smoothquant",
                      alpha=0.7),
    CompressionConfig(quant=QuantSpec(bits=4), repair="gptq", act_order=True, bias_correction=True, fold_bn=False,
                      seed=3),
    CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5, method="structured", importance="bn"),
                      finetune_epochs=2, finetune_lr=1e-3, distill=4.0, gradual=3),
    CompressionConfig(quant=QuantSpec(bits=4), overrides=(LayerOverride("conv1", quant=QuantSpec(bits=8)),
                                                          LayerOverride("fc2", skip=True),
                                                          LayerOverride("fc1", prune=PruneSpec(sparsity=0.9)))),
    CompressionConfig(quant=QuantSpec(bits=4, quantizer="nf4", double_quant=False)),
]


def fake_record(config: CompressionConfig, model: str = "digits-cnn") -> dict:
    return {"model": model, "dataset": "digits", "split": "test", "limit": 200, "task": "classify",
            "config": config.to_dict(), "config_hash": config.config_hash}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
def test_every_config_is_written_as_flags_that_parse_back_to_it(config):
    command = reproduce_command(fake_record(config))
    assert command is not None and command.startswith("python -m compression_core evaluate ")


def test_a_config_the_flags_cannot_express_gets_no_command():
    layer_percentile = QuantSpec(bits=4, range="percentile", percentile=99.0)
    config = CompressionConfig(quant=QuantSpec(bits=4), overrides=(LayerOverride("fc1", quant=layer_percentile),))
    assert reproduce_command(fake_record(config)) is None


def test_the_command_quotes_a_hostile_model_and_an_image_folder():
    record = {**fake_record(CONFIGS[0], model="x'; rm -rf ~"), "dataset": "imagefolder:/d/a b [transform cifar]",
              "split": "train", "limit": None}
    assert reproduce_command(record).startswith(
        "python -m compression_core evaluate --model 'x'\"'\"'; rm -rf ~' --dataset 'imagefolder:/d/a b' "
        "--transform cifar --split train --task classify --bits 2")


def row(size, acc, base=0.98):
    return {"size_bytes": size, "accuracy": acc, "metric": "accuracy", "metric_value": acc,
            "baseline_metric_value": base, "accuracy_drop_pts": 100 * (base - acc)}


def test_recommended_is_the_smallest_config_within_one_point_else_the_best():
    pts = [row(10, 0.90), row(20, 0.9705), row(30, 0.975), row(40, 0.98), row(25, 0.95)]
    assert recommended(pts) is pts[1]  # 0.95 pt below fp32; the 10-byte one is 8 pts below
    far = [row(10, 0.50), row(20, 0.80), row(15, 0.70)]
    assert recommended(far) is far[1]  # none within 1 pt: the most accurate
    assert recommended([]) is None and recommended([{"size_bytes": 1}]) is None
    front = pareto_front(pts)
    assert recommended(pts) in front


def test_recommended_follows_the_metrics_direction_and_a_relative_tolerance():
    def ppl(size, value):
        return {"size_bytes": size, "metric": "perplexity", "perplexity": value, "metric_value": value,
                "baseline_metric_value": 20.0}
    pts = [ppl(10, 20.5), ppl(20, 20.15), ppl(30, 20.0)]
    assert recommended(pts, "perplexity") is pts[1]  # +0.15 <= 1 % of 20; +0.5 is not
    assert recommended([ppl(10, 30.0), ppl(20, 25.0)], "perplexity")["metric_value"] == 25.0
