"""Compression Explorer's entry point: the page router (`st.navigation`) and the frame around every page.

Start it with `compression-explorer-app` (see `dashboard.launch`; it serves this script through `dashboard.server`,
which warms the server first) or `streamlit run dashboard/app.py`; it imports `dashboard` and `compression_core` as
installed packages (`pip install -e .` in a checkout, as `make run` does). Nothing heavy is imported before the
page config is sent: the torch-dependent modules come after `warmup.wait_for_imports()`.

A page that fails shows one line; the traceback goes to the server log only (with `client.showErrorDetails =
"none"` in the shipped Streamlit settings for anything raised outside `page.run()`, such as a polling fragment).
"""
import logging
from pathlib import Path

import streamlit as st

from dashboard import warmup

PAGES = Path(__file__).resolve().parent / "views"  # not "pages/": that name would switch on legacy routing
PAGE_FAILED = "This page hit an unexpected error; the details are in the server log. Reload the page to try again."
log = logging.getLogger("dashboard")
# the icon is a file the server serves: a Material icon name would make every browser fetch it from Google's fonts
PAGE_CONFIG = {"page_title": "Compression Explorer", "page_icon": str(Path(__file__).resolve().parent / "icon.png"),
               "layout": "wide", "initial_sidebar_state": "expanded"}

st.set_page_config(**PAGE_CONFIG)
warmup.wait_for_imports()
from dashboard import frame  # noqa: E402 - after the warm-up's imports (dashboard.warmup)

page = st.navigation([
    st.Page(PAGES / "explore.py", title="Explore", icon=":material/tune:", default=True),
    st.Page(PAGES / "sweep.py", title="Sweep", icon=":material/scatter_plot:", url_path="sweep"),
    st.Page(PAGES / "layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    st.Page(PAGES / "lessons.py", title="Lessons", icon=":material/menu_book:", url_path="lessons"),
    st.Page(PAGES / "learn.py", title="Learn", icon=":material/school:", url_path="learn"),
])
frame.render_sidebar()
try:
    page.run()
except Exception:  # noqa: BLE001 - the error boundary: st.stop / st.rerun are BaseExceptions and pass through
    log.exception("page %r failed", page.title)
    st.error(PAGE_FAILED, icon=":material/error:")
