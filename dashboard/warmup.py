"""Warm the server before the first visitor, and keep Python's garbage collector out of a slider step.

`dashboard.server` (what `compression-explorer-app` runs) calls `start()` when the server starts:

- `warm()` runs in a background thread: it imports the engine and the pages' modules (torch alone takes ~1.1 s
  here) and fills the shared caches the first view reads (the default model and evaluation subset, the first
  view's record). The browser's first page load overlaps it; the first script run waits for the imports only
  (`wait_for_imports`: two threads importing the same packages at once can leave one with a half-initialised
  module) and then finds the rest in the caches.
- The garbage collector is off while that runs, and afterwards `gc.freeze()` moves every object alive then (the
  ~10⁶ objects of torch, pandas, plotly and Streamlit) out of its reach. Without it a full collection walked them
  all every ~1.7 s of use, 150-200 ms with the interpreter stopped, so about one slider step in two waited for it
  in the middle of sending its update.
- `PreloadChunks` adds script tags to the page Streamlit serves, so the browser loads and runs the code of the
  first view's elements (Vega-Lite's ~0.8 MB above all) while the server is still busy, instead of when each
  element first arrives: running it, not fetching it, is what costs (a `modulepreload` link saved nothing).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("dashboard.warmup")
_started = threading.Event()
_imported = threading.Event()

# Streamlit's code-split chunks for the elements the first view draws, smallest first (file name prefixes).
PRELOAD_CHUNKS = ("Metric", "Slider", "Selectbox", "Checkbox", "NumberInput", "Radio", "Button", "ButtonGroup",
                  "TextInput", "DataFrame", "ArrowVegaLiteChart", "loadVegaEmbed", "embed")


def start() -> None:
    """Start `warm()` in a daemon thread, once per process, with the garbage collector off until it is done."""
    if not _started.is_set():
        _started.set()
        gc.disable()
        threading.Thread(target=warm, name="warm-up", daemon=True).start()


def wait_for_imports(timeout: float = 120.0) -> None:
    """Block until a started warm-up has imported the app's modules (or failed to); without one, return."""
    if _started.is_set():
        _imported.wait(timeout)


def import_modules() -> None:
    """Import what the pages import (the engine with torch, pandas, plotly, Streamlit's elements)."""
    from dashboard import components, explore_state, frame, lessons, overrides_panel, retrain_panel  # noqa: F401
    from dashboard.charts import explore  # noqa: F401


def warm() -> dict[str, float]:
    """Import, then fill the shared caches the first view reads; returns seconds per step (logged).

    A step that fails (e.g. MNIST not installed) is logged in one line: the first visitor then sees the page's own
    message, as without a warm-up.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    try:
        import_modules()
    finally:
        _imported.set()
        seconds["imports"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        _first_view()
        seconds["first view"] = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - a warm-up never takes the server down
        log.warning("warm-up: the first view was not prepared (%s: %s)", type(e).__name__, e)
    finally:
        gc.freeze()
        gc.enable()
    log.info("warm-up: %s", ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    return seconds


def _first_view() -> None:
    """What the sidebar and Explore compute first for a new visitor, into the shared caches."""
    from compression_core.evaluate import select_device
    from dashboard import explore_state, services
    from dashboard.selection import Selection

    services.models()
    services.datasets()
    selection = Selection(device=select_device("auto").type)
    services.compatible_datasets(selection.model, None, None, None)
    services.baseline(selection)
    services.data_source(selection)
    services.evaluate(selection, explore_state.DEFAULT_CONFIG.to_json())


def chunk_scripts() -> bytes:
    """Module script tags for Streamlit's code of the first view's elements (`PRELOAD_CHUNKS`): relative to the
    page like Streamlit's own, so they work under a base URL path. A prefix that names no file, or several, gets
    no tag (the browser then loads that code when it needs it, as usual); empty when none is found."""
    import streamlit

    folder = Path(streamlit.__file__).parent / "static" / "static" / "js"
    tags = []
    for chunk in PRELOAD_CHUNKS:
        found = list(folder.glob(f"{chunk}.*.js"))
        if len(found) == 1:
            tags.append(f'<script type="module" crossorigin src="./static/js/{found[0].name}"></script>')
    return "".join(tags).encode()


class PreloadChunks:
    """ASGI middleware: puts `chunk_scripts()` before `</head>` of every uncompressed HTML page served (Streamlit's
    index page, for any of the app's paths); every other response passes untouched."""

    def __init__(self, app, tags: bytes | None = None) -> None:
        self.app = app
        self.tags = chunk_scripts() if tags is None else tags

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.tags:
            await self.app(scope, receive, send)
            return
        held: dict = {}
        parts: list[bytes] = []

        async def edit(message) -> None:
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                    held["start"] = message  # sent with the edited body, once it is complete
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                parts.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(parts).replace(b"</head>", self.tags + b"</head>", 1)
                start = held.pop("start")
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, edit)
