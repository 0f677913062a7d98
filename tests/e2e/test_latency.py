"""The browser latency benchmark runs end to end (`benchmarks/browser_latency.py --quick`) with a loose bound.

The figures themselves are printed (run pytest with -s to see them), not asserted tightly: on a shared CI machine
they depend on the load. What must hold: the app starts, every slider step reaches an idle page, and a step
takes less than LOOSE_MS at the median.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOOSE_MS = 3000
TIMEOUT_S = 600


def test_browser_latency_quick(chromium_path, tmp_path):
    out = tmp_path / "latency.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "browser_latency.py"), "--quick", "--json",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    result = json.loads(out.read_text())
    assert 0 < result["cold_start"]["healthy_s"] <= result["cold_start"]["usable_s"] <= result["cold_start"]["idle_s"]
    assert len(result["walks"]) == 2
    for walk in result["walks"].values():
        assert walk["new"]["n"] == walk["seen"]["n"] == 3
        assert [s[2] for s in walk["steps"]] == [False] * 3 + [True] * 3
        assert all(s[3] > 0 for s in walk["steps"])  # each step changed the page after the key press
        assert walk["new"]["median"] < LOOSE_MS and walk["seen"]["median"] < LOOSE_MS
    assert "x of 400 ms" in r.stdout and "x of 250 ms" in r.stdout and "x of 5 s" in r.stdout
