"""End-to-end fixtures: the real app started exactly as `make run` starts it, driven by a real Chromium.

The server runs `.venv/bin/python -m dashboard.launch --server.port PORT` (what `make run`'s
`compression-explorer-app` runs: the shipped Streamlit settings, bound to 127.0.0.1) on a free port with a private
result store, once per test session. Chromium is the Debian one at /usr/bin/chromium, driven by the `playwright`
package (never `playwright install`). Without it the tests skip — unless the environment variable CI is set, where
a missing browser is a failure.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.app_process import running_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STARTUP_S = 180  # cold start on a shared 2-core machine: imports torch, then the first page loads a model
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI must install chromium (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (install chromium to run the browser tests)")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def app_url(chromium_path, tmp_path_factory) -> str:
    """Start the dashboard like `make run` does and return its base URL once /_stcore/health says ok."""
    env = {**os.environ, "COMPRESSION_EXPLORER_STORE": str(tmp_path_factory.mktemp("e2e-store") / "runs.sqlite")}
    log = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    with running_app([_python(), "-m", "dashboard.launch"], cwd=ROOT, env=env, log=log,
                     timeout_s=STARTUP_S) as (url, _):
        yield url


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh browser session (own cookies, own Streamlit session) with a desktop-sized viewport."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True,
                                  device_scale_factor=1)
    p = context.new_page()
    p.set_default_timeout(120_000)
    yield p
    context.close()


def _wait_idle(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


@pytest.fixture
def wait_idle():
    """`wait_idle(page)`: wait until the app's script run has finished (Streamlit marks its root element)."""
    return _wait_idle
