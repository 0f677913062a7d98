"""The record's field table is the one source: TypedDicts, Experiment.run, the store and the docs agree with it."""
import csv
import io
import json
import types
import typing
from pathlib import Path

import pytest

from compression_core._version import __version__
from compression_core.config import CompressionConfig, PruneSpec, QuantSpec
from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.models import load_model
from compression_core.record import (LAYER_FIELDS, RECORD_FIELDS, TABLE_COLUMNS, LayerRow, Record,
                                     computed_fields, fields_markdown)
from compression_core.store import KEY_FIELDS, TRANSIENT_FIELDS

ROOT = Path(__file__).resolve().parents[2]


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
    assert list(TABLE_COLUMNS) == [n for n in names if n not in ("layers", "bn_folded", "created_at", "cached")]
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
    assert len(rows) == 1 and list(rows[0]) == list(TABLE_COLUMNS)
    row = rows[0]
    assert row["engine_version"] == __version__ and row["limit"] == "100"
    assert json.loads(row["config"]) == record["config"]
    for name in ("accuracy", "size_bytes", "bits_per_weight", "accuracy_drop_pts", "realized_sparsity"):
        assert float(row[name]) == record[name]
    assert row["compress_seconds"] == str(record["compress_seconds"])
    assert record["finetune_final_loss"] is None and row["finetune_final_loss"] == ""  # unknown stays empty
