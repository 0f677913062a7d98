"""Layer sensitivity: one layer compressed at a time, the table, caching, cancel; a real digits run when available."""
import threading

import pytest

from compression_core._version import __version__
from compression_core.config import CompressionConfig, ConfigError, LayerOverride, PruneSpec, QuantSpec
from compression_core.sensitivity import as_config, layer_sensitivity, metric_harm, only_layer, sensitivity_table
from compression_core.store import Store

LAYERS = ["conv1", "conv2", "fc"]
FRAGILITY = {"conv1": 8.0, "conv2": 1.0, "fc": 2.0}  # accuracy points lost per unit of damage


class LayerFake:
    """Accuracy drop = sum over the layers actually compressed of fragility x (1/bits + sparsity)."""

    layer_names = LAYERS

    def __init__(self, on_run=None):
        self.runs: list[CompressionConfig] = []
        self.on_run = on_run

    def key(self, config):
        return {"model": "fake", "fingerprint": "f" * 16, "dataset": "toy", "split": "test", "limit": None,
                "config_hash": config.config_hash}

    def run(self, config):
        self.runs.append(config)
        if self.on_run:
            self.on_run(len(self.runs))
        drop = 0.0
        for name in LAYERS:
            quant, prune, skip = config.for_layer(name)
            if not skip:
                drop += FRAGILITY[name] * ((1 / quant.bits if quant.enabled else 0) + prune.target_sparsity)
        return {**self.key(config), "engine_version": __version__, "config": config.to_dict(),
                "accuracy": 0.98 - drop / 100, "accuracy_drop_pts": drop}


SETTINGS = [QuantSpec(bits=2), (QuantSpec(bits=4), PruneSpec(sparsity=0.5)), CompressionConfig(act_bits=8)]


def expected_drop(layer, setting):
    c = as_config(setting)
    return FRAGILITY[layer] * ((1 / c.quant.bits if c.quant.enabled else 0) + c.prune.target_sparsity)


def test_only_layer_skips_all_others():
    base = CompressionConfig(quant=QuantSpec(bits=4), overrides=(LayerOverride("fc", quant=QuantSpec(bits=8)),))
    probe = only_layer(base, "fc", LAYERS)
    assert [(o.name, o.skip) for o in probe.overrides] == [("conv1", True), ("conv2", True), ("fc", False)]
    assert probe.for_layer("fc")[0].bits == 8 and probe.for_layer("conv1")[2]
    assert only_layer(base, "conv2", LAYERS).for_layer("conv2") == (QuantSpec(bits=4), PruneSpec(), False)
    with pytest.raises(ConfigError, match="'nope' is not a compressible layer"):
        only_layer(base, "nope", LAYERS)
    with pytest.raises(ConfigError, match="sensitivity setting"):
        as_config(4)


def test_every_layer_setting_pair_once_with_exact_drop():
    exp = LayerFake()
    recs = layer_sensitivity(exp, SETTINGS)
    assert len(recs) == len(exp.runs) == 9
    assert [(r["layer"], r["setting"]) for r in recs[:3]] == [
        ("conv1", "int2 channel sym minmax"), ("conv1", "int4 channel sym minmax · magnitude layer 50%"),
        ("conv1", "fp32 · act8")]
    by_label = {as_config(s).label: s for s in SETTINGS}
    for r in recs:
        assert r["accuracy_drop_pts"] == pytest.approx(expected_drop(r["layer"], by_label[r["setting"]]))
    for config in exp.runs:  # exactly one layer not skipped in every probe
        assert sum(not config.for_layer(n)[2] for n in LAYERS) == 1
    table = sensitivity_table(recs)
    assert list(table.index) == LAYERS and table.shape == (3, 3)
    assert table.loc["conv1", "int2 channel sym minmax"] == pytest.approx(4.0)
    assert table["int2 channel sym minmax"].idxmax() == "conv1"  # the fragile layer stands out


def test_layers_subset_store_reuse_and_cancel(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cancel = threading.Event()
    exp = LayerFake(on_run=lambda n: cancel.set() if n == 2 else None)
    part = layer_sensitivity(exp, SETTINGS, store=store, cancel=cancel)
    assert len(part) == 2 and store.count() == 2

    exp2 = LayerFake()
    streamed = []
    full = layer_sensitivity(exp2, SETTINGS, layers=["conv1", "fc"], store=store, on_record=streamed.append)
    assert len(full) == 6 and len(exp2.runs) == 4  # the 2 stored conv1 probes were reused
    assert [r["cached"] for r in full] == [True, True, False, False, False, False]
    assert {r["layer"] for r in full} == {"conv1", "fc"} and len(streamed) == 6


def test_duplicate_settings_share_one_probe():
    exp = LayerFake()
    recs = layer_sensitivity(exp, [QuantSpec(bits=2), CompressionConfig(quant=QuantSpec(bits=2))], layers=["fc"])
    assert len(exp.runs) == 1 and len(recs) == 2
    assert sensitivity_table([]).empty


def test_real_digits_model_one_layer_at_a_time():
    models = pytest.importorskip("compression_core.models")
    datasets = pytest.importorskip("compression_core.datasets")
    experiment = pytest.importorskip("compression_core.experiment")
    try:
        exp = experiment.Experiment(models.load_model("digits-cnn"), datasets.load_dataset("digits"), limit=200)
    except (models.ModelLoadError, datasets.DatasetUnavailable) as e:
        pytest.skip(f"digits-cnn not available yet: {e}")
    recs = layer_sensitivity(exp, [QuantSpec(bits=1, scheme="asym"), QuantSpec(bits=8)])
    assert len(recs) == 2 * len(exp.layer_names)
    for r in recs:
        compressed = [l["name"] for l in r["layers"] if not l["skipped"]]
        assert compressed == [r["layer"]]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_samples"] == 200
    table = sensitivity_table(recs)
    assert list(table.index) == exp.layer_names
    # 8-bit on any single layer is harmless; 1-bit hurts at least one layer clearly
    assert table.iloc[:, 1].abs().max() < 2.0
    assert table.iloc[:, 0].max() > table.iloc[:, 1].max()


@pytest.mark.parametrize(("record", "harm"), [
    ({"metric": "accuracy", "accuracy_drop_pts": 1.25, "metric_value": 0.9, "baseline_metric_value": 0.9125}, 1.25),
    ({"metric": "cosine", "metric_value": 0.75, "baseline_metric_value": 1.0}, 0.25),  # higher is better: lost
    ({"metric": "perplexity", "metric_value": 40.0, "baseline_metric_value": 32.0}, 8.0),  # lower is better: gained
    ({"metric": "perplexity", "metric_value": 30.0, "baseline_metric_value": 32.0}, -2.0),  # better than fp32
    ({"accuracy_drop_pts": 0.5}, 0.5),  # a record from before tasks: accuracy
])
def test_metric_harm_is_positive_when_the_metric_gets_worse(record, harm):
    assert metric_harm(record) == pytest.approx(harm)
