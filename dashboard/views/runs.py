"""Runs: everything in the result store — filter it, overlay two fronts, download the table, a run's report or a
packed model.

Records come from `services.store()` as the engine wrote them; the packed file is `services.pack` (the engine's
`compression_core.export.export` of the config), so its byte count is the real one next to the reported size.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import sqlite3

import streamlit as st

from compression_core.models import ModelLoadError
from dashboard import components, frame, report_panel, services
from dashboard.charts import sweep as sweep_charts
from dashboard.charts.common import metric_axis, metric_heading, option_label
from dashboard.components import eval_set_label
from dashboard.selection import Selection

PACKED_KEY = "runs_packed"  # {"key": record id, "name", "data": bytes, "file_bytes", "reported_bytes"}
ALL = "__all__"
COMPARE_BY = {"run": "Two runs", "prune_method": "Two pruning methods", "quantizer": "Two quantizers"}


def record_id(r: dict) -> str:
    """The store key of a record as one string (model fingerprint, dataset, split, subset, config)."""
    return f"{r['fingerprint']}|{r['dataset']}|{r['split']}|{r['limit']}|{r['config_hash']}"


def describe(r: dict) -> str:
    return f"{r['label']} — {r['model']} · {r['dataset']} · {eval_set_label(r['limit'])}"


def run_name(run: dict) -> str:
    """When it started (to the second), its label (model · dataset · bits × sparsities), the quantizers and
    pruning methods of its grid (the CLI's arguments for a CLI sweep) and its size, e.g. '2026-12-05 14:03:27 ·
    lenet5 · mnist · 4-bit, 8-bit × 0 %–90 % · uniform, k-means · magnitude · 24 configs'."""
    when = datetime.datetime.fromtimestamp(run["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
    meta = run.get("meta") or {}
    grid = meta.get("grid") or {}
    settings = [", ".join(map(option_label, grid[k])) for k in ("quantizers", "methods") if grid.get(k)]
    if not grid and meta.get("argv"):
        settings = [" ".join(map(str, meta["argv"]))]
    return " · ".join([when, run["label"], *settings, f"{run['n_records']} configs"])


def filters(records: list[dict], runs: list[dict]) -> list[dict]:
    """Model / dataset / evaluation-set filters, then the run (its own row: run names are long); returns the
    matching records."""
    c = st.columns(3)
    models = sorted({r["model"] for r in records})
    chosen_models = c[0].multiselect("Model", models, key="runs_models", bind="query-params", placeholder="all models")
    datasets = sorted({r["dataset"] for r in records})
    chosen_datasets = c[1].multiselect("Dataset", datasets, key="runs_datasets", bind="query-params",
                                       placeholder="all datasets")
    limits = sorted({r["limit"] for r in records}, key=lambda n: float("inf") if n is None else n)
    # format_func values must pickle (serializable session state): bound `get`s of plain dicts do
    limit_names = {n: eval_set_label(n) for n in limits}
    chosen_limits = c[2].multiselect("Evaluated on", limits, key="runs_limits", bind="query-params",
                                     format_func=limit_names.get, placeholder="any evaluation set")
    names = {ALL: "all runs", **{run["run_id"]: run_name(run) for run in runs}}
    run_id = st.selectbox("Run", list(names), key="runs_run", bind="query-params", format_func=names.get)
    members = None if run_id == ALL else {record_id(r) for r in services.store().records(run_id=run_id)}
    return [r for r in records
            if (not chosen_models or r["model"] in chosen_models)
            and (not chosen_datasets or r["dataset"] in chosen_datasets)
            and (not chosen_limits or r["limit"] in chosen_limits)
            and (members is None or record_id(r) in members)]


def show_table(records: list[dict]) -> None:
    df = components.results_table(records, ["model", "dataset", "limit", "task", "label",
                                            *components.task_columns(records), "size_kib",
                                            "compression_ratio", "bits_per_weight", *components.COMPUTE_COLUMNS,
                                            "engine_version"],
                                  key="runs_table")
    with st.container(horizontal=True):
        components.csv_download(df, "compression-runs.csv", key="runs_csv")
        st.download_button("Download JSON (with per-layer data)", json.dumps(records, indent=1, default=str),
                           file_name="compression-runs.json", mime="application/json", key="runs_json",
                           icon=":material/data_object:", on_click="ignore")


def _groups(records: list[dict], runs: list[dict], by: str) -> dict[str, list[dict]]:
    """Group name -> records: by run (its members among `records`), or by a record field."""
    if by == "run":
        kept = {record_id(r): r for r in records}
        groups = {}
        for run in runs:
            members = [kept[k] for k in map(record_id, services.store().records(run_id=run["run_id"])) if k in kept]
            if members:
                groups[run_name(run)] = members
        return groups
    groups: dict[str, list[dict]] = {}
    for r in records:
        name = "no pruning" if r[by] == "none" else option_label(r[by])
        groups.setdefault(name, []).append(r)
    return groups


def show_overlay(records: list[dict], runs: list[dict]) -> None:
    st.subheader("Compare fronts")
    by = st.segmented_control("Compare", list(COMPARE_BY), format_func=COMPARE_BY.get, default="run",
                              required=True, key="runs_compare_by", bind="query-params")
    records, metric = _one_metric(records)
    groups = _groups(records, runs, by)
    if len(groups) < 2:
        st.caption("There is only one group to compare in the records shown; widen the filters or run another "
                   "sweep.")
        return
    names = list(groups)
    c = st.columns(2)
    a = c[0].selectbox("First", names, index=0, key=f"runs_a_{by}", bind="query-params")
    b = c[1].selectbox("Second", names, index=1, key=f"runs_b_{by}", bind="query-params")
    chosen = {n: groups[n] for n in dict.fromkeys([a, b])}
    baselines = {r.get("baseline_metric_value") for rs in chosen.values() for r in rs}
    fig = sweep_charts.overlay_figure(
        {n: sweep_charts.results_frame(rs) for n, rs in chosen.items()},
        {n: services.pareto(rs, metric)[1] for n, rs in chosen.items()},
        baseline=baselines.pop() if len(baselines) == 1 else None, axis=metric_axis(metric))
    st.plotly_chart(fig, key="runs_overlay", config=components.CHART_CONFIG)
    if len({(r["model"], r["dataset"], r["limit"]) for rs in chosen.values() for r in rs}) > 1:
        st.caption("These groups mix models, datasets or evaluation sets; filter above for a like-for-like view.")


def _one_metric(records: list[dict]) -> tuple[list[dict], str]:
    """The records of one task metric (a picker when the records hold several; metrics never share an axis)."""
    metrics = list(dict.fromkeys(r.get("metric", "accuracy") for r in records))  # records before tasks: accuracy
    if len(metrics) == 1:
        return records, metrics[0]
    metric = st.selectbox("Metric", metrics, key="runs_metric", bind="query-params", format_func=metric_heading,
                          help="Records of different tasks measure different things; fronts are compared on one.")
    st.caption(f"The records shown hold {len(metrics)} task metrics; only those measured by "
               f"{metric_axis(metric).name} are compared below.")
    return [r for r in records if r.get("metric", "accuracy") == metric], metric


def show_report() -> None:
    st.subheader("Report")
    run_id = st.session_state.get("runs_run", ALL)
    if run_id == ALL:
        st.caption("Choose a run in the Run filter above to download its report.")
        return
    report_panel.run_report(services.store(), run_id, key="runs_report")


def record_selection(record: dict) -> Selection:
    """A selection that rebuilds the model and data a record was evaluated with.

    Raises:
        ModelLoadError: a bring-your-own model that is not the one loaded in the sidebar.
    """
    current = frame.current_selection() or Selection()
    if current.model == record["model"] and current.dataset == record["dataset"]:
        return dataclasses.replace(current, limit=record["limit"])
    if record["model"] not in {m["name"] for m in services.models()}:
        raise ModelLoadError(f"{record['model']} is a bring-your-own model; load it in the sidebar "
                             f"(factory and weights) to pack this config")
    return Selection(model=record["model"], dataset=record["dataset"], device=current.device,
                     limit=record["limit"])


def pack(record: dict) -> dict:
    """Compress the record's config and pack it (`services.pack`); returns what the download needs."""
    data = services.pack(record_selection(record), record)
    return {"key": record_id(record), "name": f"{record['model']}-{record['config_hash']}.cmpx", "data": data,
            "file_bytes": len(data), "reported_bytes": record["size_bytes"]}


def show_export(records: list[dict]) -> None:
    st.subheader("Download a compressed model")
    st.caption("The packed file holds bit-packed codes, the sparse index, scales / codebooks and every other "
               "tensor; `compression_core.export.load_exported` rebuilds the model from it alone.")
    by_id = {record_id(r): r for r in records}
    names = {k: describe(r) for k, r in by_id.items()}
    c = st.columns([4, 1], vertical_alignment="bottom")
    chosen = c[0].selectbox("Config", list(by_id), key="runs_export_pick", format_func=names.get)
    if c[1].button("Pack file", key="runs_pack", icon=":material/inventory_2:"):
        try:
            with st.spinner("Compressing and packing…"):
                st.session_state[PACKED_KEY] = pack(by_id[chosen])
        except services.USER_ERRORS as e:
            components.show_error(e)
    packed = st.session_state.get(PACKED_KEY)
    if not packed or packed["key"] != chosen:
        return
    c = st.columns(3)
    c[0].metric("Packed file", f"{packed['file_bytes']:,} bytes")
    c[1].metric("Reported size", f"{packed['reported_bytes']:,} bytes")
    c[2].metric("File − reported", f"{packed['file_bytes'] - packed['reported_bytes']:+,} bytes",
                help="The file adds a JSON header (architecture, config, byte ranges) and byte alignment to the "
                     "reported size.")
    st.download_button(f"Download {packed['name']}", packed["data"], file_name=packed["name"],
                       mime="application/octet-stream", key="runs_packed_download", icon=":material/download:",
                       on_click="ignore")


st.title("Runs")
try:
    store = services.store()
    all_records = store.records()
except (*services.USER_ERRORS, sqlite3.DatabaseError) as e:  # e.g. the store file was replaced by another file
    components.show_error(e, "The result store cannot be read: ")
    st.stop()
st.caption(f"Every result in the store ({store.path}), from sweeps here and from `python -m compression_core`.")
if not all_records:
    st.info("No results stored yet — launch a sweep on the Sweep page.", icon=":material/history:")
    st.stop()
all_runs = store.runs()
shown = filters(all_records, all_runs)
st.caption(f"{len(shown)} of {len(all_records)} records")
if not shown:
    st.info("No record matches these filters.", icon=":material/filter_alt_off:")
    st.stop()
show_table(shown)
show_overlay(shown, all_runs)
show_report()
show_export(shown)
