"""The dashboard as a real server process for a test: start it on a free loopback port, wait until healthy, stop it."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether Streamlit at `url` answers its health check with ok."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


@contextlib.contextmanager
def running_app(argv: list[str], *, cwd: Path, env: dict, log: Path,
                timeout_s: float) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `argv --server.port PORT` (output to `log`) and yield (base URL, process) once it is healthy.

    Raises:
        AssertionError: the process exited or did not become healthy within `timeout_s` (with the log's tail).
    """
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--server.port", str(port)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the app did not become healthy in {timeout_s:.0f} s (exit code "
                                     f"{proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
