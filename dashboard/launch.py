"""`compression-explorer-app`: start the dashboard from any directory, with the project's Streamlit settings.

Streamlit reads `.streamlit/config.toml` only from the working directory and the home folder, so an installed app
would run with Streamlit's defaults. The settings ship instead as package data (`dashboard/streamlit.toml`, which
the checkout's `.streamlit/config.toml` links to) and are passed as `--section.key value` flags. The server binds
127.0.0.1 unless told otherwise; arguments given to the command are forwarded and win over the defaults
(`compression-explorer-app --server.port 8502`, `--server.address 0.0.0.0` to serve a network). What it runs is
`dashboard/server.py`, Streamlit's `st.App` around `dashboard/app.py` with the warm-up (`dashboard.warmup`).
"""
from __future__ import annotations

import os
import sys
import tomllib
from importlib import resources

def settings() -> dict[str, object]:
    """The shipped Streamlit settings, flattened: {"server.headless": True, "theme.primaryColor": "#2563eb", ...}."""
    text = (resources.files("dashboard") / "streamlit.toml").read_text()

    def flatten(table: dict, prefix: str) -> dict[str, object]:
        flat = {}
        for key, value in table.items():
            if isinstance(value, dict):  # nested tables such as [theme.sidebar]
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return flatten(tomllib.loads(text), "")


def command(args: list[str]) -> list[str]:
    """The `streamlit run` command line: the installed app, the shipped settings, then the caller's arguments.

    Args:
        args: extra arguments for `streamlit run` (later flags override earlier ones, so these win).

    Returns:
        argv for a subprocess, starting with this interpreter.

    Examples:
        >>> cmd = command(["--server.port", "8502"])
        >>> cmd[1:4], cmd[-2:]
        (['-m', 'streamlit', 'run'], ['--server.port', '8502'])
        >>> cmd[cmd.index("--server.address") + 1], cmd[cmd.index("--server.headless") + 1]
        ('127.0.0.1', 'true')
    """
    app = resources.files("dashboard") / "server.py"
    flags = []
    for key, value in settings().items():  # server.address 127.0.0.1 among them
        text = str(value).lower() if isinstance(value, bool) else str(value)
        flags += [f"--{key}", text]
    return [sys.executable, "-m", "streamlit", "run", str(app), *flags, *args]


def main(argv: list[str] | None = None) -> None:
    """Become the Streamlit server (exec, not a child): signals and the exit code are Streamlit's own."""
    cmd = command(sys.argv[1:] if argv is None else list(argv))
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
