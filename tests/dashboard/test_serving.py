"""Serving safely: `make run` binds 127.0.0.1 unless told otherwise, the browser never sees a traceback or a
server path, and an unusable result store is one line on the pages that need it."""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from compression_core.store import ENV_VAR
from dashboard import services
from dashboard.components import plain

ROOT = Path(__file__).resolve().parents[2]


def _make_run_line(*args: str, env: dict | None = None) -> str:
    out = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    (line,) = [l for l in out.stdout.splitlines() if "compression-explorer-app" in l]
    return line + " "


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_binds_localhost_unless_sharing_is_asked_for():
    assert "--server.address 127.0.0.1 " in _make_run_line()
    assert "--server.address 127.0.0.1 " in _make_run_line(env={"HOST": "0.0.0.0"})  # e.g. zsh's HOST: ignored
    assert "--server.address 0.0.0.0 " in _make_run_line("HOST=0.0.0.0")


def test_streamlit_config_keeps_details_out_of_the_browser():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"]["enableXsrfProtection"] is True


def _texts(at) -> str:
    parts = [e.value for kind in ("error", "warning", "info", "caption", "markdown") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_a_failing_page_shows_one_line_and_logs_the_traceback(make_app, no_exception, monkeypatch, caplog):
    class BrokenStore:
        path = Path("/srv/secret/runs.sqlite")

        def records(self):
            raise RuntimeError("disk on fire at /srv/secret/internal.py line 12")

    monkeypatch.setattr(services, "store", lambda: BrokenStore())
    at = make_app("runs")
    no_exception(at)
    assert [e.value for e in at.error] == ["This page hit an unexpected error; the details are in the server log. "
                                           "Reload the page to try again."]
    assert "/srv/secret" not in _texts(at) and "Traceback" not in _texts(at)
    logged = [r for r in caplog.records if r.name == "dashboard" and r.exc_info]
    assert logged and "disk on fire" in str(logged[0].exc_info[1])


@pytest.fixture
def junk_store(tmp_path, monkeypatch):
    """The store path points at a file that is not SQLite (the cached Store is dropped before and after)."""
    junk = tmp_path / "runs.sqlite"
    junk.write_bytes(b"not a database, just text\n" * 100)
    monkeypatch.setenv(ENV_VAR, str(junk))
    services.store.clear()
    yield junk
    services.store.clear()


@pytest.mark.parametrize("page, prefix", [("runs", "The result store cannot be read: "),
                                          ("sweep", "Sweeps need the result store: ")])
def test_store_that_is_not_sqlite_is_one_line(make_app, no_exception, junk_store, page, prefix):
    at = make_app(page)
    no_exception(at)
    line = (f"result store {junk_store} is not a SQLite file; give another path with --store or ${ENV_VAR}, or "
            f"move the file away")
    assert [e.value for e in at.error] == [prefix + plain(line)]  # shown literally: the "$" is escaped
    assert junk_store.read_bytes().startswith(b"not a database")  # left as it was
