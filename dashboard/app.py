"""Compression Explorer's entry point: the page router (`st.navigation`) and the frame around every page.

Run with `.venv/bin/python -m streamlit run dashboard/app.py` from anywhere; the repository root is put on
`sys.path` so `compression_core` and `dashboard` import regardless of the working directory.

A page that fails shows one line; the traceback goes to the server log only (with `client.showErrorDetails =
"none"` in .streamlit/config.toml for anything raised outside `page.run()`, such as a polling fragment).
"""
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import frame  # noqa: E402

PAGES = Path(__file__).resolve().parent / "views"  # not "pages/": that name would switch on legacy routing
PAGE_FAILED = "This page hit an unexpected error; the details are in the server log. Reload the page to try again."
log = logging.getLogger("dashboard")

st.set_page_config(**frame.PAGE_CONFIG)
page = st.navigation([
    st.Page(PAGES / "explore.py", title="Explore", icon=":material/tune:", default=True),
    st.Page(PAGES / "sweep.py", title="Sweep", icon=":material/scatter_plot:", url_path="sweep"),
    st.Page(PAGES / "layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    st.Page(PAGES / "learn.py", title="Learn", icon=":material/school:", url_path="learn"),
])
frame.render_sidebar()
try:
    page.run()
except Exception:  # noqa: BLE001 - the error boundary: st.stop / st.rerun are BaseExceptions and pass through
    log.exception("page %r failed", page.title)
    st.error(PAGE_FAILED, icon=":material/error:")
