"""The "Download report (HTML)" button of the Runs and Sweep pages: a run's stakeholder report (`dashboard.report`)
from its stored records, built only when the button is clicked (Streamlit's deferred download), never recomputed.
"""
from __future__ import annotations

import functools

import streamlit as st

from dashboard import components
from dashboard.report import ReportError, build_report, check_records, choice_rule, choose

LABEL = "Download report (HTML)"
HELP = ("One self-contained HTML file to hand on: model and data, the Pareto front with the chosen config ringed, its "
        "metric with the 95 % interval, size and per-layer cost, the methods and the command that reproduces it. "
        "It opens offline and prints on A4 / Letter.")


def download_report(records: list[dict], chosen: dict, *, run: dict | None, key: str) -> None:
    """The download button of the report of `records` recommending `chosen` (one of them); a caption instead when
    the records cannot make one report (several evaluation sets)."""
    try:
        check_records(records, chosen)
    except ReportError as e:
        components.show_error(e, "No report: ")
        return
    name = f"report-{run['run_id']}.html" if run else f"report-{chosen['config_hash']}.html"
    st.download_button(LABEL, functools.partial(build_report, records, chosen, run=run), file_name=name,
                       mime="text/html", key=key, icon=":material/summarize:", on_click="ignore", help=HELP)


def run_report(store, run_id: str, *, key: str) -> None:
    """A config picker (the recommended one first) and the report button for the stored run `run_id`."""
    run, records = store.run(run_id), store.records(run_id=run_id)
    if run is None or not records:
        st.caption("This run has no stored records to report on.")
        return
    recommended = choose(records)
    ordered = [recommended, *(r for r in records if r is not recommended)]
    labels = {r["config_hash"]: r["label"] + (" (recommended)" if r is recommended else "") for r in ordered}
    c = st.columns([4, 2], vertical_alignment="bottom")
    picked = c[0].selectbox("Config the report recommends", list(labels), key=f"{key}_pick_{run_id}",
                            format_func=labels.get, help=f"Recommended: {choice_rule(recommended['metric'])}.")
    with c[1]:
        download_report(records, choose(records, picked), run=run, key=key)
    st.caption(f"Run id `{run_id}` — from the command line: `python -m compression_core report --run {run_id} "
               f"--out report.html` (add `--config-hash {picked}` for this config).")
