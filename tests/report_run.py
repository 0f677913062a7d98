"""A small real sweep run in a store, for the report tests (unit, CLI, AppTest, browser): digits-cnn on 150 digits,
weight bits 2 / 4 / 8 / fp32 x sparsity 0 / 0.5 (8 configs), or any other grid and task."""
from __future__ import annotations

from compression_core.datasets import load_dataset
from compression_core.experiment import Experiment
from compression_core.models import load_model
from compression_core.store import Store
from compression_core.grid import expand_grid
from compression_core.sweep import sweep

GRID = {"bits": [2, 4, 8, 32], "sparsity": [0.0, 0.5]}
LIMIT = 150


def sweep_run(store: Store, label: str, *, task: str | None = None, limit: int = LIMIT, meta: dict | None = None,
              **grid) -> str:
    """Sweep `grid` (default GRID) of digits-cnn on `limit` digits into `store` as a new run with `meta`; returns
    its id."""
    exp = Experiment(load_model("digits-cnn"), load_dataset("digits"), limit=limit, device="cpu", task=task)
    run_id = store.new_run(label, meta or {"model": "digits-cnn"})
    sweep(exp, expand_grid(**(grid or GRID)), store=store, run_id=run_id)
    return run_id
