"""Bad CLI input: exit code 2, exactly one `error:` line on stderr, no traceback, nothing written to the store.

The matrix is `tests/core/bad_inputs.CASES` (shared with benchmarks/robustness.py); it runs in-process through
`cli.main` for speed, a few cases through a real `python -m compression_core` to prove the exit code, and
Hypothesis feeds random text to the config flags.
"""
import os
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression_core import cli
from compression_core.config import CompressionConfig
from tests.core.bad_inputs import CASES, ROOT, store_state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The hostile files, and a store holding one record (so 'unchanged' has something to lose)."""
    from tests.core.bad_inputs import make_files

    made = make_files(tmp_path_factory.mktemp("bad_inputs"))
    assert cli.main(["evaluate", "--model", "digits-cnn", "--dataset", "digits", "--limit", "50", "--bits", "8",
                     "--store", made["store"]]) == 0
    return made


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("bad", [pytest.param(c, id=c.id) for c in CASES if c.in_process])
def test_bad_input_is_one_line_and_exit_2(bad, files, capsys, monkeypatch):
    monkeypatch.syspath_prepend(files["tmp"])  # the user modules with a SyntaxError / raising on import
    argv = bad.argv(files)
    stores = [files["store"]] + [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--store"]
    before = [store_state(s) for s in stores]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    line = _one_error_line(err)
    assert bad.says is None or bad.says in line.lower(), line
    assert out == ""
    assert [store_state(s) for s in stores] == before
    assert not os.path.exists(os.path.join(files["tmp"], "pwned"))


def test_the_matrix_is_large_and_distinct():
    assert len(CASES) >= 70
    assert len({c.id for c in CASES}) == len({tuple(c.args) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", ["bits=0", "store-folder", "model-flatten", "model-os-abort"])
def test_a_real_process_exits_2(case_id, files):
    (bad,) = [c for c in CASES if c.id == case_id]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "compression_core", *bad.argv(files)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = _one_error_line(r.stderr).lower()
    assert (bad.says is None or bad.says in line) and r.stdout == ""


# ---- nothing computed is lost ----------------------------------------------------------------------------

def test_evaluate_prints_its_result_when_the_store_cannot_be_written(files, capsys, monkeypatch, tmp_path):
    import json

    from compression_core.store import Store

    def read_only(self, record, run_id=None):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "put", read_only)
    store = tmp_path / "ro.sqlite"
    code = cli.main(["evaluate", "--model", "digits-cnn", "--dataset", "digits", "--limit", "50", "--bits", "4",
                     "--json", "--store", str(store)])
    out, err = capsys.readouterr()
    assert code == 0
    record = json.loads(out)
    assert record["bits"] == 4 and record["n_samples"] == 50
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "readonly" in lines[0], err


def test_sweep_refuses_a_read_only_store_before_computing(files, capsys, monkeypatch):
    from compression_core.store import Store

    def read_only(self, label, meta=None):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "new_run", read_only)
    before = store_state(files["store"])
    code = cli.main(["sweep", "--model", "digits-cnn", "--dataset", "digits", "--limit", "50", "--bits", "4,8",
                     "--store", files["store"]])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "cannot be written" in _one_error_line(err) and "[" not in err  # no progress: nothing ran
    assert store_state(files["store"]) == before


# ---- fuzzed config flags ---------------------------------------------------------------------------------

class _Reached(Exception):
    """The flags parsed into valid configs and the command went on to load the model."""


FLAGS = ("--bits", "--quantizer", "--scheme", "--range", "--percentile", "--sparsity", "--nm", "--layer",
         "--act-bits", "--index-bits", "--finetune-steps", "--seed", "--limit", "--num-classes", "--prune", "--scope")
NEAR_VALID = st.text(alphabet="0123456789.,:=-+eE abcfinstu_", max_size=24)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(FLAGS), text=st.one_of(st.text(max_size=30), NEAR_VALID),
       extra=st.sampled_from([(), ("--prune", "nm"), ("--range", "percentile", "--bits", "4"),
                              ("--layer", "conv1:bits=4")]))
def test_random_flag_text_is_a_valid_config_or_one_line(flag, text, extra, capsys, monkeypatch):
    seen = []

    def reached(args, configs=()):
        seen.extend(configs)
        raise _Reached

    monkeypatch.setattr(cli, "_experiment", reached)
    capsys.readouterr()
    try:
        code = cli.main(["evaluate", "--model", "digits-cnn", "--dataset", "digits", *extra, f"{flag}={text}"])
    except _Reached:
        assert len(seen) == 1 and isinstance(seen[0], CompressionConfig)
        assert CompressionConfig.from_json(seen[0].to_json()) == seen[0]
        return
    _, err = capsys.readouterr()
    assert code == 2
    _one_error_line(err)
