"""Robustness evidence for issue #6: bad input, kill -9 of a sweep, concurrent dashboard sessions.

Prints one JSON object per part on stdout (progress on stderr):
  (a) matrix: every case of tests/core/bad_inputs.CASES through `cli.main` (cases that would end this process, such
      as os:abort, through `python -m compression_core`): tried, one_line (exit 2, one `error:` line, no
      traceback), tracebacks (an exception escaped, a traceback on stderr or a crash), silent (exit 0, or nothing on
      stderr), other (exit 2 but not one line), with the ids of every case that is not one_line.
  (b) kill9: a 20-config CLI sweep (lenet5 / mnist, --limit 2000) killed with SIGKILL 30 ms after the 4th,
      10th and 16th record (each run resuming the previous one), then run to the end; for each run: records in the store before it, records it found cached,
      recomputed (stored before, computed again: must be 0), new, and SQLite's integrity_check.
  (c) sessions: 8 AppTest sessions of the dashboard alive at once in this process, 15 slider moves each on Explore,
      interleaved: errors (script exceptions or st.error) and leaks (a session showing a value or a history point
      it did not set).

Usage: .venv/bin/python benchmarks/robustness.py [--skip matrix,kill9,sessions]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compression_core import cli  # noqa: E402
from tests.core.bad_inputs import CASES, make_files  # noqa: E402

SWEEP = ["sweep", "--model", "lenet5", "--dataset", "mnist", "--limit", "2000", "--bits", "2,3,4,8,32",
         "--sparsity", "0,0.3,0.6,0.9"]
KILL_AFTER = (4, 10, 16)
KILL_DELAY_S = 0.03  # after the k-th progress line, so the kill lands inside the next config
SESSIONS, MOVES = 8, 15


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)])}
    r = subprocess.run([sys.executable, "-m", "compression_core", *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def _in_process(argv: list[str]) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except BaseException as e:  # what escaped main is what a user would see as a traceback
            err.write(f"Traceback (escaped {type(e).__name__})\n")
            code = None
    return code, out.getvalue(), err.getvalue()


def matrix() -> dict:
    counts = {"tried": 0, "one_line": 0, "tracebacks": 0, "silent": 0, "other": 0}
    not_one_line = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp))
        sys.path.insert(0, tmp)
        for c in CASES:
            argv = c.argv(files)
            code, out, err = _in_process(argv) if c.in_process else _subprocess(argv, Path(tmp))
            lines = [line for line in err.splitlines() if line.strip()]
            counts["tried"] += 1
            if code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
                kind = "one_line"
            elif "Traceback" in err or code is None or code < 0:
                kind = "tracebacks"
            elif code == 0 or not lines:
                kind = "silent"
            else:
                kind = "other"
            counts[kind] += 1
            if kind != "one_line":
                not_one_line[c.id] = {"kind": kind, "exit": code}
    return {"part": "matrix", **counts, "not_one_line": not_one_line}


def _records(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]


def _integrity(store: Path) -> str:
    with sqlite3.connect(store) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _sweep_run(store: Path, kill_after: int | None) -> dict:
    """One CLI sweep; SIGKILL just after the progress line [k/20] with k >= kill_after is seen."""
    before = _records(store)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compression_core", *SWEEP, "--store", str(store)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cached, last, killed = None, 0, False
    for line in proc.stderr:
        found = re.match(r"\[(\d+)/(\d+)\]", line)
        if not found:
            continue
        last = int(found.group(1))
        cached = last if cached is None else cached  # the first progress line counts the stored records
        if kill_after is not None and last >= kill_after:
            time.sleep(KILL_DELAY_S)
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    proc.stderr.close()
    after = _records(store)
    return {"kill_after": kill_after, "killed": killed, "exit": proc.returncode, "stored_before": before,
            "cached": cached, "recomputed": before - (cached or 0), "new": after - before, "stored_after": after,
            "integrity": _integrity(store)}


def kill9() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "runs.sqlite"
        runs = [_sweep_run(store, k) for k in (*KILL_AFTER, None)]
    return {"part": "kill9", "configs": 20, "runs": runs, "total_recomputed": sum(r["recomputed"] for r in runs),
            "final_records": runs[-1]["stored_after"]}


class _Session:
    """One browser session of the dashboard (an AppTest), remembering every value it set."""

    def __init__(self, i: int):
        from streamlit.testing.v1 import AppTest

        self.i, self.errors, self.leaks, self.mine = i, 0, 0, {(32, 0.0)}
        self.at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=300)
        self.at.query_params = {"model": "digits-cnn", "dataset": "digits"}
        self.at.run()

    def move(self, j: int) -> None:
        at = self.at
        sparsity = round(0.05 * ((self.i + j) % 19), 2)  # sessions walk the slider out of step with each other
        bits = (2, 4, 8, 32)[(self.i + j) % 4]
        at.slider(key="explore_sparsity").set_value(sparsity)
        at.select_slider(key="explore_bits").set_value(bits).run()
        self.mine.add((bits, sparsity))
        self.errors += len(at.exception) + len(at.error)
        shown = [m.value for m in at.metric if m.label == "Sparsity"]
        if at.slider(key="explore_sparsity").value != sparsity or at.select_slider(key="explore_bits").value != bits:
            self.leaks += 1
        elif bits == 32 and shown and abs(float(shown[0].split()[0]) - 100 * sparsity) > 1.0:
            self.leaks += 1  # without quantization (which zeroes small weights too) realised sparsity = the target

    def history_leaks(self) -> tuple[int, int]:
        """(points in this session's history that it never set, number of points)."""
        history = [p for points in self.at.session_state["explore_history"].values() for p in points]
        return sum((p["bits"], round(p["sparsity"], 2)) not in self.mine for p in history), len(history)


def sessions() -> dict:
    """8 sessions alive at once in one server process, their moves interleaved round-robin.

    AppTest's runtime is a process-wide singleton, so two AppTest runs cannot overlap in threads; interleaving the
    sessions' runs shares the caches and the Experiment between them exactly as a server does.
    """
    from compression_core.store import ENV_VAR

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[ENV_VAR] = str(Path(tmp) / "runs.sqlite")
        os.chdir(ROOT)  # AppTest reads .streamlit/config.toml from the working directory
        start = time.perf_counter()
        alive = [_Session(i) for i in range(SESSIONS)]
        for j in range(MOVES):
            for session in alive:
                session.move(j)
        history = [s.history_leaks() for s in alive]
    return {"part": "sessions", "sessions": SESSIONS, "moves_each": MOVES,
            "errors": sum(s.errors for s in alive), "leaks": sum(s.leaks for s in alive) + sum(h[0] for h in history),
            "history_points": [h[1] for h in history], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma list of parts to skip: matrix, kill9, sessions")
    skip = set(parser.parse_args().skip.split(","))
    for name, part in (("matrix", matrix), ("kill9", kill9), ("sessions", sessions)):
        if name not in skip:
            _log(f"running {name} ...")
            print(json.dumps(part()), flush=True)


if __name__ == "__main__":
    main()
