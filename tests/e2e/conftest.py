"""End-to-end fixtures: the real app started exactly as `make run` starts it, driven by a real Chromium.

The server runs `.venv/bin/python -m dashboard.launch --server.port PORT` (what `make run`'s
`compression-explorer-app` runs: the shipped Streamlit settings, bound to 127.0.0.1) on a free port with a private
result store, once per test session. Chromium is the Debian one at /usr/bin/chromium, driven by the `playwright`
package (never `playwright install`). Without it the tests skip — unless the environment variable CI is set, where
a missing browser is a failure.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


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
    port = _free_port()
    env = {**os.environ, "COMPRESSION_EXPLORER_STORE": str(tmp_path_factory.mktemp("e2e-store") / "runs.sqlite")}
    log = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([_python(), "-m", "dashboard.launch", "--server.port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not become healthy (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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
