"""The record's field table is the one source: TypedDicts, Experiment.run, the store and the docs agree with it."""
import csv
import io
import json
import types
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from compression_core._version import __version__
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import Dataset, DatasetInfo, load_dataset
from compression_core.experiment import Experiment
from compression_core.models import LoadedModel, load_model
from compression_core.record import (LAYER_FIELDS, RECORD_FIELDS, TABLE_COLUMNS, LayerRow, Record,
                                     computed_fields, fields_markdown, table_row)
from compression_core.store import KEY_FIELDS, TRANSIENT_FIELDS

ROOT = Path(__file__).resolve().parents[2]
BREAKDOWN = ("value_bits", "index_bits", "scale_bits", "codebook_bits", "other_bits")


def conforms(value, tp) -> bool:
    """Whether a JSON-like value fits a field type: plain classes, `X | None`, list[...], dict[str, Any]."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin is types.UnionType:
        return any(conforms(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(conforms(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if typing.is_typeddict(tp):
        return isinstance(value, dict) and all(conforms(value[k], t) for k, t in typing.get_type_hints(tp).items()
                                               if k in tp.__required_keys__)
    if tp is float:
        return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool))
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


@pytest.mark.parametrize("typed, fields", [(Record, RECORD_FIELDS), (LayerRow, LAYER_FIELDS)])
def test_typeddict_and_table_list_the_same_fields_and_types(typed, fields):
    hints = typing.get_type_hints(typed)
    assert list(hints) == [f.name for f in fields]
    assert {name: hints[name] for name in hints} == {f.name: f.type for f in fields}
    assert typed.__optional_keys__ == {f.name for f in fields if f.added_by}
    assert len({f.name for f in fields}) == len(fields)
    assert all(f.doc for f in fields)
    numbers = [f.name for f in fields if f.type in (int, float, int | None, float | None)]
    assert [n for n in numbers if not next(f for f in fields if f.name == n).unit] == []  # every number has a unit


def test_readers_take_their_lists_from_the_table():
    names = [f.name for f in RECORD_FIELDS]
    assert set(KEY_FIELDS) <= set(TABLE_COLUMNS) and "engine_version" in TABLE_COLUMNS
    assert TRANSIENT_FIELDS == ("created_at", "cached")
    assert list(TABLE_COLUMNS) == [n for n in names if n != "layers"]
    units = {f.name: f.unit for f in RECORD_FIELDS}
    assert (units["accuracy"], units["size_bytes"], units["eval_seconds"], units["accuracy_drop_pts"]) == (
        "fraction 0-1", "bytes", "seconds", "percentage points")


@pytest.fixture(scope="module")
def experiment():
    return Experiment(load_model("digits-cnn", dataset="digits"), load_dataset("digits"), limit=100, device="cpu")


@pytest.mark.parametrize("config", [CompressionConfig(), CompressionConfig(
    quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5), act_bits=8, finetune_steps=2)],
    ids=["fp32", "int4-pruned-act8-finetuned"])
def test_experiment_run_returns_exactly_the_table(experiment, config):
    record = experiment.run(config)
    assert list(record) == list(computed_fields())
    assert record["engine_version"] == __version__
    assert record["n_samples"] == 100
    hints = typing.get_type_hints(Record)
    wrong = {k: v for k, v in record.items() if k != "layers" and not conforms(v, hints[k])}
    assert wrong == {}
    assert record["layers"] and all(list(row) == [f.name for f in LAYER_FIELDS] for row in record["layers"])
    assert all(sum(row[f] for f in BREAKDOWN) == row["size_bits"] for row in record["layers"])
    assert conforms(record["layers"], hints["layers"])
    if config.finetune_steps:
        assert isinstance(record["finetune_final_loss"], float)


def test_engine_api_doc_lists_every_field_with_its_unit():
    doc = (ROOT / "docs" / "ENGINE_API.md").read_text()
    assert fields_markdown(RECORD_FIELDS) in doc and fields_markdown(LAYER_FIELDS) in doc
    for f in RECORD_FIELDS + LAYER_FIELDS:
        assert f"| `{f.name}` |" in doc


def test_cli_csv_has_the_table_columns_and_the_json_values(tmp_path, capsys):
    from compression_core import cli

    argv = ["evaluate", "--model", "digits-cnn", "--dataset", "digits", "--limit", "100", "--bits", "4",
            "--sparsity", "0.5", "--store", str(tmp_path / "s.sqlite")]
    assert cli.main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert cli.main([*argv, "--csv"]) == 0  # the same record, now from the store
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and list(rows[0]) == [f.name for f in RECORD_FIELDS if f.name != "layers"]
    row = rows[0]
    assert row["engine_version"] == __version__ and row["limit"] == "100"
    assert json.loads(row["config"]) == record["config"] and json.loads(row["bn_folded"]) == record["bn_folded"]
    assert row["cached"] == "True" and float(row["created_at"]) > 0  # the store served it the second time
    for name in ("accuracy", "size_bytes", "bits_per_weight", "accuracy_drop_pts", "realized_sparsity", "top5",
                 "macs", "sparse_macs", "bitops", "sparse_bitops", "latency_ms_per_batch", "eval_seconds"):
        assert float(row[name]) == record[name]
    assert row["compress_seconds"] == str(record["compress_seconds"])
    assert record["finetune_final_loss"] is None and row["finetune_final_loss"] == ""  # unknown stays empty


def test_a_field_an_old_record_lacks_is_an_empty_cell_not_zero():
    old = {f.name: 1 for f in RECORD_FIELDS if f.name not in ("sparse_bitops", "layers", "config", "bn_folded")}
    row = table_row({**old, "config": {"quant": None}, "bn_folded": [["0", "1"]]})
    assert row["sparse_bitops"] is None and row["bitops"] == 1
    assert (row["config"], row["bn_folded"]) == ('{"quant":null}', '[["0","1"]]')


class ConvFc(nn.Module):
    """1 x 8 x 8 digits -> a 3 x 3 conv with 4 filters (6 x 6 outputs) -> a linear head, written the usual way."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_sparse_bitops_of_a_plain_module_by_hand():
    torch.manual_seed(0)
    loaded = LoadedModel(model=ConvFc().eval(), name="convfc", dataset=None, fingerprint="c" * 16, source={})
    exp = Experiment(loaded, load_dataset("digits"), limit=50, device="cpu")
    # int4 weights, 8-bit activations, half of each layer's weights pruned: conv keeps 18 of 36, fc 720 of 1440
    record = exp.run(CompressionConfig(quant=QuantSpec(bits=4), prune=PruneSpec(sparsity=0.5), act_bits=8))
    conv_macs, fc_macs = 36 * 4 * 9, 144 * 10  # per sample: 6 x 6 positions x 4 filters x 9 taps; 144 x 10
    kept_macs = 18 * 36 + 720  # each kept conv weight is used at 36 positions, each kept fc weight once
    assert (record["macs"], record["sparse_macs"]) == (conv_macs + fc_macs, kept_macs)
    assert record["bitops"] == (conv_macs + fc_macs) * 4 * 8 == 87_552
    assert record["sparse_bitops"] == kept_macs * 4 * 8 == 43_776
    nm = exp.run(CompressionConfig(quant=QuantSpec(bits=8), prune=PruneSpec(method="nm", n=1, m=4)))
    # 1:4: a filter's 9 taps are groups of 4, 4 and 1, one kept in each (3 per filter); the fc keeps 144 / 4 of
    # each row; activations stay fp32
    assert nm["sparse_bitops"] == (4 * 3 * 36 + 360) * 8 * 32
    fp32 = exp.run(CompressionConfig())
    assert fp32["sparse_bitops"] == fp32["bitops"] == (conv_macs + fc_macs) * 32 * 32


def test_sparse_bitops_of_a_torchvision_resnet_count_the_kept_weights_at_each_output_position():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    n = 20
    info = DatasetInfo(name="noise-32", num_classes=10, input_shape=(3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3,
                       source="generated", splits={"test": n}, class_names=tuple("abcdefghij"))
    data = Dataset(info=info, tensors={"test": (torch.randn(n, 3, 32, 32), torch.arange(n) % 10)})
    exp = Experiment(LoadedModel(model=model, name="resnet18", dataset=None, fingerprint="r" * 16, source={}),
                     data, device="cpu")
    config = CompressionConfig(quant=QuantSpec(bits=6), prune=PruneSpec(sparsity=0.7, scope="global"))
    cm = exp.compress(config)
    record = exp.run(config, compressed=cm)
    positions = {}  # output positions of each layer for one sample: a kept weight is used once at each
    hooks = [cm.model.get_submodule(name).register_forward_hook(
        lambda m, i, out, name=name: positions.__setitem__(name, out[0, 0].numel())) for name in cm.layers]
    with torch.no_grad():
        cm.model(data.tensors["test"][0][:1])
    for h in hooks:
        h.remove()
    kept = sum(lc.nnz * positions[name] for name, lc in cm.layers.items())
    # global ranking prunes the wide late layers hardest: more than 30 % of the MACs stay
    assert record["sparse_macs"] == kept and 0.3 < kept / record["macs"] < 0.6
    assert record["sparse_bitops"] == kept * 6 * 32
    assert record["bitops"] == record["macs"] * 6 * 32
