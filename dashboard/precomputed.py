"""Shipped, precomputed engine records (`dashboard/precomputed/*.json`), so a class sees a lesson's numbers at once.

Each file holds the records of one selection (model weights, dataset, evaluation subset, task, device) written by
`scripts/make_precomputed.py`; a record is served only when everything that made it matches what this server
would compute now: the model's weight fingerprint, the dataset, split, subset size, task, device, the engine
version and the config hash the current engine gives the record's config. A changed checkpoint, a changed engine
or a changed config canonicalisation therefore never serves a stale number; it is computed live instead.

File layout (compact JSON): `{"format": 1, "selection": {...the common fields...}, "records": [...]}`; a record
leaves out the common fields and every field that is None (both are restored on load).

No Streamlit here: `dashboard.services.precomputed` is the cached entry point the pages use.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from compression_core import __version__
from compression_core.config import CompressionConfig, ConfigError
from compression_core.record import computed_fields

DIR = Path(__file__).resolve().parent / "precomputed"
FORMAT = 1
# the fields every record of one file shares: they identify what the numbers were computed on
COMMON = ("model", "fingerprint", "dataset", "split", "limit", "task", "device", "engine_version")
MATCHED = ("fingerprint", "dataset", "split", "limit", "task", "device", "engine_version")


def file_name(common: dict) -> str:
    """'lenet5-mnist-1000-classify-cpu.json' for a selection's common fields."""
    limit = "all" if common["limit"] is None else common["limit"]
    return f"{common['model']}-{common['dataset']}-{limit}-{common['task']}-{common['device']}.json"


def pack(records: list[dict]) -> dict:
    """One file's content: the records' shared fields once, then each record without them and without None.

    Raises:
        ValueError: the records do not share the COMMON fields (one file holds one selection).
    """
    common = {f: records[0][f] for f in COMMON}
    if any(r[f] != common[f] for r in records for f in COMMON):
        raise ValueError("precomputed records of one file must share " + ", ".join(COMMON))
    return {"format": FORMAT, "selection": common,
            "records": [{k: v for k, v in r.items() if k not in COMMON and v is not None} for r in records]}


def write(records: list[dict], folder: Path = DIR) -> Path:
    """Write `pack(records)` as compact JSON under `folder`; returns the file's path."""
    content = pack(records)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(content["selection"])
    path.write_text(json.dumps(content, separators=(",", ":"), sort_keys=True) + "\n")
    return path


def unpack(content: dict) -> list[dict]:
    """The full records of one file: common fields put back, left-out fields None, `precomputed` True."""
    empty = dict.fromkeys(computed_fields())
    return [{**empty, **content["selection"], **r, "precomputed": True} for r in content["records"]]


@functools.lru_cache(maxsize=4)
def _index(folder: Path) -> dict[tuple, dict]:
    """(matched fields..., config_hash) -> record, over every file in `folder`; read once per process. A record
    whose config the running engine no longer accepts, or hashes differently, is left out."""
    index = {}
    for path in sorted(folder.glob("*.json")):
        content = json.loads(path.read_text())
        if content.get("format") != FORMAT:
            continue
        for record in unpack(content):
            if _current_hash(record) == record["config_hash"]:
                index[(*(record[f] for f in MATCHED), record["config_hash"])] = record
    return index


def _current_hash(record: dict) -> str | None:
    """The hash the current engine gives the record's config (None when it no longer accepts the config)."""
    try:
        return CompressionConfig.from_dict(record["config"]).config_hash
    except (ConfigError, TypeError, KeyError):
        return None


def lookup(key: dict, device: str, folder: Path = DIR) -> dict | None:
    """The shipped record for an experiment key, or None when none matches exactly.

    Args:
        key: `Experiment.key(config)` of the config asked for (fingerprint, dataset, split, limit, task,
            config_hash computed by the running engine).
        device: the device this server evaluates on ("cpu", "cuda").
        folder: where the files are (the shipped folder by default).

    Returns:
        A copy of the record (with `precomputed: True`) when weights, data, subset, task, device, engine version
        and config hash all match, and the record's own config still hashes to that hash; else None.
    """
    wanted = {**key, "device": device, "engine_version": __version__}
    record = _index(folder).get((*(wanted[f] for f in MATCHED), key["config_hash"]))
    if record is None:
        return None
    return {**record, "layers": [dict(layer) for layer in record.get("layers") or []]}


def has_selection(model: str, dataset: str, limit: int | None, device: str, folder: Path = DIR) -> bool:
    """Whether any shipped record was computed for this model name, dataset, subset and device (a cheap check
    before loading the model to compare fingerprints)."""
    return any(r["model"] == model and r["dataset"] == dataset and r["limit"] == limit and r["device"] == device
               for r in _index(folder).values())


def records(common: dict, folder: Path = DIR) -> list[dict]:
    """Every shipped record whose matched fields equal `common`'s and whose config still hashes the same."""
    wanted = tuple({**common, "engine_version": __version__}[f] for f in MATCHED)
    return [dict(r) for k, r in _index(folder).items() if k[:-1] == wanted]
