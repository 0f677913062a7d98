"""Compression Explorer's entry point: the page router (`st.navigation`) and the frame around every page.

Start it with `compression-explorer-app` (see `dashboard.launch`) or `streamlit run dashboard/app.py`; it imports
`dashboard` and `compression_core` as installed packages (`pip install -e .` in a checkout, as `make run` does).
"""
from pathlib import Path

import streamlit as st

from dashboard import frame

PAGES = Path(__file__).resolve().parent / "views"  # not "pages/": that name would switch on legacy routing

st.set_page_config(**frame.PAGE_CONFIG)
page = st.navigation([
    st.Page(PAGES / "explore.py", title="Explore", icon=":material/tune:", default=True),
    st.Page(PAGES / "sweep.py", title="Sweep", icon=":material/scatter_plot:", url_path="sweep"),
    st.Page(PAGES / "layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    st.Page(PAGES / "learn.py", title="Learn", icon=":material/school:", url_path="learn"),
])
frame.render_sidebar()
page.run()
