"""The server warm-up (`dashboard.warmup`): the first view's caches, the garbage collector, the chunk scripts."""
from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest
import streamlit

from dashboard import warmup

PAGE = b"<!DOCTYPE html><html><head><title>Streamlit</title></head><body></body></html>"


def test_every_chunk_named_exists_once_in_this_streamlit():
    folder = Path(streamlit.__file__).parent / "static" / "static" / "js"
    for chunk in warmup.PRELOAD_CHUNKS:  # a Streamlit upgrade that renames one fails here, not silently
        assert len(list(folder.glob(f"{chunk}.*.js"))) == 1, chunk
    tags = warmup.chunk_scripts().decode()
    assert tags.count('<script type="module" crossorigin src="./static/js/') == len(warmup.PRELOAD_CHUNKS)
    assert "ArrowVegaLiteChart." in tags and "PlotlyChart." not in tags  # the first view draws no Plotly chart


def serve(middleware_app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[dict, bytes]:
    """One GET through `middleware_app`; the inner app answers with `headers` and the body in `chunks`."""
    sent = []

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(middleware_app(inner)(scope, receive, send))
    start = sent[0]
    return dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_scripts_go_into_the_head_of_an_html_page_with_its_new_length():
    tags = b'<script type="module" src="./static/js/X.js"></script>'
    html = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(PAGE)).encode())]
    headers, body = serve(lambda app: warmup.PreloadChunks(app, tags), html, [PAGE[:20], PAGE[20:]])
    assert body == PAGE.replace(b"</head>", tags + b"</head>")
    assert int(headers[b"content-length"]) == len(body)


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"application/javascript")],
    [(b"content-type", b"text/html"), (b"content-encoding", b"gzip")],  # compressed: left as it is
])
def test_other_responses_pass_untouched(headers):
    tags = b"<script></script>"
    out_headers, body = serve(lambda app: warmup.PreloadChunks(app, tags), headers, [PAGE])
    assert body == PAGE and out_headers == dict(headers)


def test_warm_fills_the_first_view_and_freezes_the_objects_alive(monkeypatch):
    from compression_core.evaluate import select_device
    from dashboard import explore_state, services
    from dashboard.selection import Selection

    gc.disable()
    try:
        seconds = warmup.warm()
        assert set(seconds) == {"imports", "first view"}
        assert gc.isenabled() and gc.get_freeze_count() > 100_000  # torch, pandas, plotly, Streamlit
        assert warmup._imported.is_set()
        # the first view is in the shared caches now: nothing is built, looked up or evaluated again
        for name in ("Experiment", "load_dataset", "load_model"):
            monkeypatch.setattr(services, name, lambda *a, **k: pytest.fail("built again"))
        monkeypatch.setattr(services.shipped, "lookup", lambda *a, **k: pytest.fail("looked up again"))
        selection = Selection(device=select_device("auto").type)
        assert services.baseline(selection)["config_hash"] != explore_state.DEFAULT_CONFIG.config_hash
        record = services.evaluate(selection, explore_state.DEFAULT_CONFIG.to_json())
        assert record["config_hash"] == explore_state.DEFAULT_CONFIG.config_hash
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_failed_first_view_is_one_log_line_and_the_collector_comes_back(monkeypatch, caplog):
    from dashboard import services

    def unavailable():
        raise services.DatasetUnavailable("MNIST is not installed")

    monkeypatch.setattr(warmup, "_first_view", unavailable)
    gc.disable()
    try:
        with caplog.at_level(logging.WARNING, logger="dashboard.warmup"):
            seconds = warmup.warm()
        assert "first view" not in seconds and gc.isenabled()
        assert [r.getMessage() for r in caplog.records] == [
            "warm-up: the first view was not prepared (DatasetUnavailable: MNIST is not installed)"]
    finally:
        gc.unfreeze()
        gc.enable()
