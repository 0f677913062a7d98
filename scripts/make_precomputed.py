"""Regenerate the shipped precomputed records (`dashboard/precomputed/*.json`) the lessons and the first view use.

Runs the engine on the default selection (lenet5 on mnist, 1,000 test samples, cpu) for every config of
`dashboard.lessons.shipped_configs()` — the first view's bits × sparsity front and every lesson's views — and
writes one compact JSON file. Run it after changing the engine, a checkpoint or the lessons:

    python scripts/make_precomputed.py            # writes dashboard/precomputed/lenet5-mnist-1000-classify-cpu.json
    python scripts/make_precomputed.py --out DIR  # somewhere else (the tests compare against a fresh run)

A stale file is never served (the dashboard compares weights fingerprint, engine version and config hash), but
`tests/dashboard/test_lessons.py` fails until the file is regenerated.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from compression_core.datasets import load_dataset  # noqa: E402
from compression_core.experiment import Experiment  # noqa: E402
from compression_core.models import load_model  # noqa: E402
from dashboard import lessons, precomputed  # noqa: E402


def experiment(selection=lessons.PRECOMPUTED_SELECTION) -> Experiment:
    """The Experiment the dashboard builds for the default selection (services.get_experiment, without caches)."""
    return Experiment(load_model(selection.model, dataset=selection.dataset), load_dataset(selection.dataset),
                      split="test", limit=selection.limit, device=selection.device, task=selection.task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=precomputed.DIR, help="folder to write the JSON file into")
    args = parser.parse_args(argv)
    exp = experiment()
    records = []
    started = time.perf_counter()
    for config in lessons.shipped_configs():
        records.append({k: v for k, v in exp.run(config).items() if k not in ("cached", "created_at")})
        print(f"{time.perf_counter() - started:6.1f} s  {records[-1]['accuracy']:.4f}  {config.label}")
    path = precomputed.write(records, args.out)
    print(f"{len(records)} records -> {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
