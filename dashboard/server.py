"""What `compression-explorer-app` serves: Streamlit's `st.App` around `dashboard/app.py`, with a lifespan hook that
warms the server in the background (`dashboard.warmup.start`) and the middleware that makes the browser load the
first view's code early (`dashboard.warmup.PreloadChunks`). `streamlit run dashboard/app.py` still works, without
either."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from dashboard import warmup


@asynccontextmanager
async def lifespan(_app):
    warmup.start()  # returns at once: the server answers while it warms
    yield


app = st.App(str(Path(__file__).with_name("app.py")), lifespan=lifespan, middleware=[Middleware(warmup.PreloadChunks)])
