"""Sweep: evaluate a grid of configs in the background and read the trade-off off a Pareto plot.

The form builds the grid with `services.sweep_grid`; `dashboard.jobs` runs it outside the script
thread and writes each record to the store. This session's sweep is found again by its run id, kept in
`st.session_state["sweep_run"]` and in the URL (`?sweep_run=<id>`), so a reload re-attaches. A fragment polls
the job once a second while it runs; the charts read the run's records from the store, so they fill in as
configs finish.

`dashboard.job_panel` draws the running job (progress, Cancel for the session holding its token), Resume for an
interrupted run and the outcome line.
"""
from __future__ import annotations

import dataclasses

import streamlit as st

from compression_core.config import (ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES, REPAIRS, SCHEMES,
                                     SCOPES)
from compression_core.methods import DEFAULT_PRUNE_METHOD, DEFAULT_QUANTIZER, quantizer_info
from dashboard import cluster, components, frame, jobs, report_panel, services
from dashboard.charts import sweep as sweep_charts
from dashboard.charts.common import bits_label, metric_axis, option_label, percent_label
from dashboard.job_panel import offer_resume, owner, remember, show_outcome, show_progress
from dashboard.report import choose
from dashboard.selection import Selection

RUN_KEY = "sweep_run"  # session state and URL parameter: the run id (= job id) this session is watching
# bit-widths, then the fixed-width quantizers (the float casts) as their own choices
BIT_CHOICES = ALLOWED_BITS + tuple(q for q in QUANTIZERS if not quantizer_info(q).uses_bits)
GRID_QUANTIZERS = tuple(q for q in QUANTIZERS if quantizer_info(q).uses_bits)
MAX_CONFIGS = 400
GROUP_SIZES = (32, 64, 128, 256)
SWEEP_REPAIRS = tuple(r for r in REPAIRS if r != "smoothquant")  # SmoothQuant needs 8-bit activations: Explore
POLL_S = 1.0


# format_func values must pickle (serializable session state), so labels are looked up in plain dicts
BIT_NAMES = {b: option_label(b) if isinstance(b, str) else "fp32 (off)" if b == 32 else bits_label(b)
             for b in BIT_CHOICES}


# the form's widgets -> their options (lists: multiselect, tuples of two: the sparsity range, floats: the step);
# a launched sweep keeps their values in its run meta ("form"), so reopening it shows its own settings
FORM_OPTIONS = {"sweep_bits": BIT_CHOICES, "sweep_sparsity": (0.0, 0.99), "sweep_step": (0.01, 0.99),
                "sweep_repairs": SWEEP_REPAIRS, "sweep_quantizers": GRID_QUANTIZERS, "sweep_methods": PRUNE_METHODS,
                "sweep_granularity": GRANULARITIES, "sweep_group_sizes": GROUP_SIZES, "sweep_scheme": SCHEMES,
                "sweep_range": RANGES, "sweep_scope": SCOPES, "sweep_subset": ("subset", "full")}
MULTI = ("sweep_bits", "sweep_repairs", "sweep_quantizers", "sweep_methods", "sweep_group_sizes")


def _form_value(key: str, value):
    """A stored form value checked against the widget's options now (None when it no longer fits)."""
    options = FORM_OPTIONS[key]
    if key in MULTI:
        return [v for v in value if v in options] if isinstance(value, list) else None
    if key == "sweep_sparsity":
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
        return tuple(min(max(float(v), 0.0), 0.99) for v in sorted(value)) if ok else None
    if key == "sweep_step":
        return min(max(float(value), 0.01), 0.99) if isinstance(value, (int, float)) else None
    return value if value in options else None


def restore_form(run_id: str | None) -> None:
    """Before the form is drawn: a control the session and the URL say nothing about takes the value it had when
    sweep `run_id` was launched (its run meta), so a reload or a link to a sweep shows that sweep's settings."""
    fresh = [k for k in FORM_OPTIONS if k not in st.session_state and k not in st.query_params]
    run = services.store().run(run_id) if run_id and fresh else None
    form = run["meta"].get("form") if run else None
    for key in fresh if isinstance(form, dict) else ():
        value = _form_value(key, form.get(key))
        if value is not None:
            st.session_state[key] = value


def _sparsities(lo: float, hi: float, step: float) -> list[float]:
    """lo, lo + step, ... up to hi (inclusive within rounding), rounded to 4 decimals."""
    n = int((hi - lo) / step + 1e-9) + 1 if step > 0 else 1
    return sorted({round(lo + i * step, 4) for i in range(n)})


def sweep_form(selection: Selection) -> dict | None:
    """Draw the form; returns its values when submitted."""
    with st.form("sweep_form", border=True):
        c = st.columns([3, 2, 1])
        bits = c[0].multiselect("Weight bits", BIT_CHOICES, default=[2, 4, 8, 32], key="sweep_bits",
                                bind="query-params", format_func=BIT_NAMES.get,
                                help="32 = not quantized; fp16 / bf16 are plain float casts.")
        span = c[1].slider("Sparsity range", 0.0, 0.99, (0.0, 0.9), 0.01, key="sweep_sparsity", bind="query-params",
                           format="%.2f",
                           help="Fraction of weights removed, from the left value to the right one.")
        step = c[2].number_input("Step", 0.01, 0.99, 0.3, 0.01, key="sweep_step", bind="query-params", format="%.2f")
        c = st.columns(3)
        repairs = c[2].multiselect("Repair", SWEEP_REPAIRS, default=["none"], key="sweep_repairs", bind="query-params",
                                   format_func=option_label, help="Cross with calibrated repair: GPTQ (integer grids "
                                                                  "only, other quantizers are skipped), AWQ.")
        quantizers = c[0].multiselect("Quantizers", GRID_QUANTIZERS, default=[DEFAULT_QUANTIZER],
                                      key="sweep_quantizers", bind="query-params", format_func=option_label)
        methods = c[1].multiselect("Pruning methods", PRUNE_METHODS, default=[DEFAULT_PRUNE_METHOD],
                                   key="sweep_methods", bind="query-params",
                                   format_func=option_label, help="N:M uses its 2:4 pattern whatever the sparsity.")
        c = st.columns(5)
        granularity = c[0].selectbox("Granularity", GRANULARITIES, index=1, key="sweep_granularity",
                                     bind="query-params", format_func=option_label)
        group_sizes = c[1].multiselect("Group sizes", GROUP_SIZES, default=[], key="sweep_group_sizes",
                                       bind="query-params",
                                       help="Crossed with granularity group and NF4 (none chosen: each "
                                            "format's default). MX formats always use 32.")
        scheme = c[2].selectbox("Scheme", SCHEMES, key="sweep_scheme", bind="query-params", format_func=option_label)
        range_method = c[3].selectbox("Range", RANGES, key="sweep_range", bind="query-params",
                                      format_func=option_label)
        scope = c[4].selectbox("Pruning scope", SCOPES, key="sweep_scope", bind="query-params",
                               format_func=option_label)
        n_test = services.get_experiment(selection).dataset.info.splits["test"]
        eval_names = {"subset": f"Live subset ({min(selection.limit, n_test):,} samples)",
                      "full": f"Whole test set ({n_test:,} samples)"}
        subset = st.radio("Evaluate on", list(eval_names), horizontal=True, key="sweep_subset", bind="query-params",
                          format_func=eval_names.get)
        executor = executor_choice()
        submitted = st.form_submit_button("Launch sweep", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    return {"bits": bits, "sparsities": _sparsities(span[0], span[1], step), "quantizers": quantizers,
            "methods": methods, "scheme": scheme, "granularity": granularity, "range_method": range_method,
            "group_sizes": group_sizes, "repairs": repairs,
            "scope": scope, "full": subset == "full", "executor": executor,
            "settings": {k: st.session_state[k] for k in FORM_OPTIONS}}


def executor_choice() -> str:
    """Where the sweep runs: this server's process, or the operator's Ray cluster (shown with what it has)."""
    address = cluster.ray_address()
    names = {"local": "In-process", "ray": "Ray cluster"}  # the labels are the URL's values: no address in them
    choice = st.radio("Run on", list(names), horizontal=True, key="sweep_executor", bind="query-params",
                      format_func=names.get, help="Ray: the configs are spread over the cluster's workers (one per "
                      f"GPU, else per CPU); the operator sets {cluster.RAY_ADDRESS_ENV} or RAY_ADDRESS.")
    if address is not None:
        try:
            c = cluster.ray_cluster(address)
            st.caption(f"Ray cluster at {components.plain(address)}: {c['nodes']} nodes, {c['cpus']} CPUs, "
                       f"{c['gpus']} GPUs, {c['workers']} sweep workers running.")
        except cluster.ClusterError as e:
            components.show_error(e, "Ray: ")
    else:
        st.caption(f"No Ray cluster is configured on this server (the operator sets {cluster.RAY_ADDRESS_ENV} or "
                   "RAY_ADDRESS before starting it).")
    return choice


def ray_executor(run_selection: Selection, choice: str):
    """None for in-process, else a RayExecutor for the configured cluster; False after showing why not."""
    if choice != "ray":
        return None
    address = cluster.ray_address()
    if address is None:
        st.error(f"No Ray cluster is configured on this server: the operator sets {cluster.RAY_ADDRESS_ENV} (or "
                 "RAY_ADDRESS) before starting the dashboard. Run the sweep in-process instead.",
                 icon=":material/error:")
        return False
    try:
        return cluster.ray_executor(run_selection, address)
    except (cluster.ClusterError, *services.USER_ERRORS) as e:
        components.show_error(e, "Ray: ")
        return False


def launch(selection: Selection, form: dict) -> str | None:
    """Start the sweep the form asked for; returns its run id, or None after explaining what is wrong."""
    if not form["bits"] or not form["quantizers"] or not form["methods"]:
        st.error("Choose at least one bit-width, one quantizer and one pruning method.", icon=":material/error:")
        return None
    grid = {k: form[k] for k in ("bits", "sparsities", "quantizers", "methods")}
    configs, problems = services.sweep_grid(form["bits"], form["sparsities"], form["quantizers"], form["methods"],
                                   scheme=form["scheme"], granularity=form["granularity"],
                                   range_method=form["range_method"], scope=form["scope"],
                                   group_sizes=form.get("group_sizes"), repairs=form.get("repairs"))
    for line in problems:
        st.warning(f"Skipped: {line}", icon=":material/warning:")
    if not configs:
        st.error("The grid has no valid config; change the settings above.", icon=":material/error:")
        return None
    if len(configs) > MAX_CONFIGS:
        st.error(f"The grid has {len(configs)} configs; the limit is {MAX_CONFIGS}. Use fewer bit-widths or a "
                 f"larger sparsity step.", icon=":material/error:")
        return None
    run_selection = dataclasses.replace(selection, limit=None) if form["full"] else selection
    executor = ray_executor(run_selection, form["executor"])
    if executor is False:
        return None
    experiment = services.get_experiment(run_selection)
    bits = ", ".join(BIT_NAMES[b] for b in form["bits"])
    spars = f"{percent_label(form['sparsities'][0])}–{percent_label(form['sparsities'][-1])}"
    label = f"{selection.model} · {selection.dataset} · {bits} × {spars}"
    meta = {"selection": dataclasses.asdict(run_selection), "model": experiment.loaded.name,
            "dataset": selection.dataset, "fingerprint": experiment.loaded.fingerprint,
            "limit": experiment.limit, "grid": grid, "n_configs": len(configs), "executor": form["executor"],
            "form": {k: list(v) if isinstance(v, tuple) else v for k, v in form["settings"].items()}}
    try:
        job = jobs.job_manager().start(experiment, configs, services.store(), label=label, meta=meta,
                                       owner=owner(), executor=executor)
    except jobs.JobLimitError as e:
        components.show_error(e, icon=":material/hourglass_top:")
        return None
    except services.StoreError as e:  # e.g. a store written by a newer version: readable, never written
        components.show_error(e)
        return None
    remember(job)
    return job.id


def _same_model(a: dict, selection: Selection) -> bool:
    return (a.get("model"), a.get("dataset"), a.get("factory"), a.get("weights_id")) == (
        selection.model, selection.dataset, selection.factory, selection.weights_id)


def attached_run(selection: Selection) -> tuple[str, Selection] | None:
    """(run id, the selection it was evaluated with) of this session's sweep, if it is on the sidebar's model."""
    run_id = st.query_params.get(RUN_KEY) or st.session_state.get(RUN_KEY)
    if not run_id:
        return None
    run = next((r for r in services.store().runs() if r["run_id"] == run_id), None)
    if run is None or "selection" not in run["meta"]:
        return None
    st.session_state[RUN_KEY] = run_id
    st.query_params[RUN_KEY] = run_id
    if not _same_model(run["meta"]["selection"], selection):
        other = run["meta"]["selection"]
        st.info(f"Your last sweep ran on {components.plain(other['model'])} · {other['dataset']}; choose them in "
                f"the sidebar to see it again, or open it on the Runs page.", icon=":material/info:")
        return None
    fields = {f.name for f in dataclasses.fields(Selection)}
    saved = {k: v for k, v in run["meta"]["selection"].items() if k in fields}
    return run_id, Selection(**{**saved, "device": selection.device})


def show_details(run_selection: Selection, picked: list[dict]) -> None:
    """The chosen config's numbers, per-layer table and a layer's weight histogram before vs after."""
    record = picked[0]
    if len(picked) > 1:
        labels = {r["config_hash"]: r["label"] for r in picked}
        chosen = st.selectbox(f"{len(picked)} configs selected — inspect", list(labels), key="sweep_detail_pick",
                              format_func=labels.get)
        record = next(r for r in picked if r["config_hash"] == chosen)
    st.subheader(f"Selected: {record['label']}")
    components.metric_tiles(record)
    components.layer_details(run_selection, record, "sweep_detail")


def show_results(run_selection: Selection, records: list[dict], run_id: str) -> None:
    """Pareto plot (selectable), details of the selection, bits x sparsity heatmap, results table + CSV."""
    df = sweep_charts.results_frame(records)
    axis = metric_axis(records[0]["metric"])  # one run = one selection = one task
    front, stairs = services.pareto(records, axis.field)
    fig = sweep_charts.pareto_figure(df, front=stairs, baseline=records[0]["baseline_metric_value"], axis=axis)
    st.subheader(f"{axis.heading} vs honest size")
    event = st.plotly_chart(fig, key="sweep_pareto", on_select="rerun", selection_mode=("points", "box"),
                            config=components.CHART_CONFIG)
    st.caption(f"{len(records)} configs, {len(front)} on the Pareto front (black staircase). Colour = weight bits, "
               "shape = pruning method, dashed = fp32. Click a point or drag a box to inspect configs.")
    by_hash = {r["config_hash"]: r for r in records}
    picked = [by_hash[h] for h in sweep_charts.picked_hashes(event.selection.points) if h in by_hash]
    if picked:
        show_details(run_selection, picked)
    st.subheader(f"{axis.heading} by bits and sparsity")
    st.plotly_chart(sweep_charts.bits_sparsity_heatmap(df, axis=axis), key="sweep_heatmap",
                    config=components.CHART_CONFIG)
    st.caption(f"Each cell is the best config by {axis.name} ("
               f"{'higher' if axis.higher_is_better else 'lower'} is better).")
    st.subheader("All results")
    components.results_table(records, ["label", *components.task_columns(records), "size_kib", "compression_ratio",
                                       "bits_per_weight", "realized_sparsity"], key="sweep_table", sort_by="size_kib")
    components.csv_download(df, f"sweep-{run_id}.csv", key="sweep_csv")
    # the report recommends the inspected config, else the rule's
    report_panel.download_report(records, picked[0] if picked else choose(records),
                                 run=services.store().run(run_id), key="sweep_report")


def results_panel(run_selection: Selection, run_id: str, polling: bool) -> None:
    """Progress while the job runs, then (and meanwhile) the run's records from the store."""
    job = jobs.job_manager().get(run_id)
    status = job.status() if job else None
    if status is not None and status.running:
        show_progress(job)
    elif polling:
        st.rerun()  # the job ended since the last poll: redraw the page without the timer
    else:
        if status is not None:
            show_outcome(status)
        offer_resume(run_selection, run_id, status)
    records = services.store().records(run_id=run_id)
    if not records:
        st.info("Waiting for the first config to finish…" if status is not None and status.running
                else "This sweep has no results.", icon=":material/hourglass_top:")
        return
    show_results(run_selection, records, run_id)


selection = frame.require_selection()
st.title("Sweep")
try:
    services.store()
except services.USER_ERRORS as e:
    components.show_error(e, "Sweeps need the result store: ")
    st.stop()
components.selection_caption(selection, "evaluate a grid of configs and find the best accuracy for each size.")
restore_form(st.query_params.get(RUN_KEY) or st.session_state.get(RUN_KEY))
submitted = sweep_form(selection)
if submitted is not None:
    new_run = launch(selection, submitted)
    if new_run is not None:
        st.session_state[RUN_KEY] = new_run
        st.query_params[RUN_KEY] = new_run
        st.session_state.pop("sweep_detail_pick", None)
attached = attached_run(selection)
if attached is None:
    st.info("No sweep yet — launch one above. Past sweeps are on the Runs page.", icon=":material/scatter_plot:")
else:
    run_id, run_selection = attached
    job = jobs.job_manager().get(run_id)
    polling = job is not None and job.status().running
    st.fragment(run_every=POLL_S if polling else None)(results_panel)(run_selection, run_id, polling)
