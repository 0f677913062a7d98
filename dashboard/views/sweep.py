"""Sweep: evaluate a grid of configs in the background and read the trade-off off a Pareto plot.

The form builds the grid with `compression_core.sweep.expand_grid`; `dashboard.jobs` runs it outside the script
thread and writes each record to the store. This session's sweep is found again by its run id, kept in
`st.session_state["sweep_run"]` and in the URL (`?sweep_run=<id>`), so a reload re-attaches. A fragment polls
the job once a second while it runs; the charts read the run's records from the store, so they fill in as
configs finish.

Only the session that launched a sweep holds its cancel token (session state, never the URL); another session
sees the progress and can cancel only with that key. A sweep the server never finished shows
"interrupted at k / n" and a Resume button that continues the same run.
"""
from __future__ import annotations

import dataclasses
import secrets

import streamlit as st

from compression_core.config import ALLOWED_BITS, GRANULARITIES, PRUNE_METHODS, QUANTIZERS, RANGES, SCHEMES, \
    SCOPES, CompressionConfig, ConfigError, PruneSpec, QuantSpec
from compression_core.methods import DEFAULT_PRUNE_METHOD, DEFAULT_QUANTIZER, quantizer_info
from compression_core.pareto import pareto_front, staircase
from compression_core.sweep import expand_grid
from dashboard import frame, jobs, services
from dashboard.charts import layers as layer_charts
from dashboard.charts import sweep as sweep_charts
from dashboard.charts.common import bits_label, option_label, percent_label

RUN_KEY = "sweep_run"  # session state and URL parameter: the run id (= job id) this session is watching
TOKENS_KEY = "sweep_tokens"  # session state only: {run id: cancel token} of the sweeps this session started
OWNER_KEY = "sweep_owner"  # session state only: a random id of this browser session, for the sweep quotas
# bit-widths, then the fixed-width quantizers (the float casts) as their own choices
BIT_CHOICES = ALLOWED_BITS + tuple(q for q in QUANTIZERS if not quantizer_info(q).uses_bits)
GRID_QUANTIZERS = tuple(q for q in QUANTIZERS if quantizer_info(q).uses_bits)
CODEBOOK_MAX_BITS = 8  # a 16-bit codebook has 65,536 levels: too slow to fit for a sweep
MAX_CONFIGS = 400
POLL_S = 1.0
CHART_CONFIG = {"displaylogo": False}


# format_func values must pickle (serializable session state), so labels are looked up in plain dicts
BIT_NAMES = {b: option_label(b) if isinstance(b, str) else "fp32 (off)" if b == 32 else bits_label(b)
             for b in BIT_CHOICES}


def _sparsities(lo: float, hi: float, step: float) -> list[float]:
    """lo, lo + step, ... up to hi (inclusive within rounding), rounded to 4 decimals."""
    n = int((hi - lo) / step + 1e-9) + 1 if step > 0 else 1
    return sorted({round(lo + i * step, 4) for i in range(n)})


def build_grid(bits: list, sparsities: list[float], quantizers: list[str], methods: list[str], *, scheme: str,
               granularity: str, range_method: str, scope: str) -> tuple[list[CompressionConfig], list[str]]:
    """The configs the form describes, and one line per combination the engine rejects (those are skipped).

    Integer bit-widths cross every chosen quantizer (codebooks such as k-means and power-of-two only up to
    CODEBOOK_MAX_BITS); fixed-width quantizers (fp16 / bf16 casts) are crossed with the pruning settings only.
    """
    base = CompressionConfig(quant=QuantSpec(scheme=scheme, granularity=granularity, range=range_method),
                             prune=PruneSpec(scope=scope))
    configs: dict[str, CompressionConfig] = {}
    problems: list[str] = []
    combos = [(b, q) for b in bits if isinstance(b, int) for q in quantizers
              if quantizer_info(q).kind != "codebook" or b <= CODEBOOK_MAX_BITS]
    combos += [(quantizer_info(b).bits[0], b) for b in bits if isinstance(b, str)]
    for b, quantizer in combos:
        try:
            grid = expand_grid(base, bits=[b], quantizer=[quantizer], sparsity=sparsities, prune=methods)
        except ConfigError as e:
            problems.append(str(e))
            continue
        for config in grid:
            configs.setdefault(config.config_hash, config)
    return list(configs.values()), problems


def sweep_form(selection: frame.Selection) -> dict | None:
    """Draw the form; returns its values when submitted."""
    with st.form("sweep_form", border=True):
        c = st.columns([3, 2, 1])
        bits = c[0].multiselect("Weight bits", BIT_CHOICES, default=[2, 4, 8, 32], key="sweep_bits",
                                format_func=BIT_NAMES.get,
                                help="32 = not quantized; fp16 / bf16 are plain float casts.")
        span = c[1].slider("Sparsity range", 0.0, 0.99, (0.0, 0.9), 0.01, key="sweep_sparsity", format="%.2f",
                           help="Fraction of weights removed, from the left value to the right one.")
        step = c[2].number_input("Step", 0.01, 0.99, 0.3, 0.01, key="sweep_step", format="%.2f")
        c = st.columns(2)
        quantizers = c[0].multiselect("Quantizers", GRID_QUANTIZERS, default=[DEFAULT_QUANTIZER],
                                      key="sweep_quantizers", format_func=option_label)
        methods = c[1].multiselect("Pruning methods", PRUNE_METHODS, default=[DEFAULT_PRUNE_METHOD],
                                   key="sweep_methods",
                                   format_func=option_label, help="N:M uses its 2:4 pattern whatever the sparsity.")
        c = st.columns(4)
        granularity = c[0].selectbox("Granularity", GRANULARITIES, index=1, key="sweep_granularity",
                                     format_func=option_label)
        scheme = c[1].selectbox("Scheme", SCHEMES, key="sweep_scheme", format_func=option_label)
        range_method = c[2].selectbox("Range", RANGES, key="sweep_range", format_func=option_label)
        scope = c[3].selectbox("Pruning scope", SCOPES, key="sweep_scope", format_func=option_label)
        n_test = services.get_experiment(selection).dataset.info.splits["test"]
        eval_names = {"subset": f"Live subset ({min(selection.limit, n_test):,} samples)",
                      "full": f"Whole test set ({n_test:,} samples)"}
        subset = st.radio("Evaluate on", list(eval_names), horizontal=True, key="sweep_subset",
                          format_func=eval_names.get)
        submitted = st.form_submit_button("Launch sweep", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return None
    return {"bits": bits, "sparsities": _sparsities(span[0], span[1], step), "quantizers": quantizers,
            "methods": methods, "scheme": scheme, "granularity": granularity, "range_method": range_method,
            "scope": scope, "full": subset == "full"}


def _owner() -> str:
    """This browser session's id for the per-session sweep quotas."""
    return st.session_state.setdefault(OWNER_KEY, secrets.token_hex(8))


def _remember(job: jobs.Job) -> None:
    """Keep the job's cancel token in this session only."""
    st.session_state[TOKENS_KEY] = {**st.session_state.get(TOKENS_KEY, {}), job.id: job.token}


def launch(selection: frame.Selection, form: dict) -> str | None:
    """Start the sweep the form asked for; returns its run id, or None after explaining what is wrong."""
    if not form["bits"] or not form["quantizers"] or not form["methods"]:
        st.error("Choose at least one bit-width, one quantizer and one pruning method.", icon=":material/error:")
        return None
    grid = {k: form[k] for k in ("bits", "sparsities", "quantizers", "methods")}
    configs, problems = build_grid(form["bits"], form["sparsities"], form["quantizers"], form["methods"],
                                   scheme=form["scheme"], granularity=form["granularity"],
                                   range_method=form["range_method"], scope=form["scope"])
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
    experiment = services.get_experiment(run_selection)
    bits = ", ".join(BIT_NAMES[b] for b in form["bits"])
    spars = f"{percent_label(form['sparsities'][0])}–{percent_label(form['sparsities'][-1])}"
    label = f"{selection.model} · {selection.dataset} · {bits} × {spars}"
    meta = {"selection": dataclasses.asdict(run_selection), "model": experiment.loaded.name,
            "dataset": selection.dataset, "fingerprint": experiment.loaded.fingerprint,
            "limit": experiment.limit, "grid": grid, "n_configs": len(configs)}
    try:
        job = jobs.job_manager().start(experiment, configs, services.store(), label=label, meta=meta,
                                       owner=_owner())
    except jobs.JobLimitError as e:
        st.error(str(e), icon=":material/hourglass_top:")
        return None
    except services.StoreError as e:  # e.g. a store written by a newer version: readable, never written
        st.error(services.error_line(e), icon=":material/error:")
        return None
    _remember(job)
    return job.id


def _same_model(a: dict, selection: frame.Selection) -> bool:
    return (a.get("model"), a.get("dataset"), a.get("factory"), a.get("weights_id")) == (
        selection.model, selection.dataset, selection.factory, selection.weights_id)


def attached_run(selection: frame.Selection) -> tuple[str, frame.Selection] | None:
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
        st.info(f"Your last sweep ran on {other['model']} · {other['dataset']}; choose them in the sidebar to see "
                f"it again, or open it on the Runs page.", icon=":material/info:")
        return None
    fields = {f.name for f in dataclasses.fields(frame.Selection)}
    saved = {k: v for k, v in run["meta"]["selection"].items() if k in fields}
    return run_id, frame.Selection(**{**saved, "device": selection.device})


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating time left…"
    seconds = round(seconds)
    return f"about {seconds} s left" if seconds < 90 else f"about {seconds // 60} min {seconds % 60:02d} s left"


def _cancel_with_key(job: jobs.Job, where) -> None:
    """For a session that did not start the job: cancel only with the key the starting session shows."""
    with where.popover("Cancel…", icon=":material/stop:"):
        key = st.text_input("Cancel key", type="password", key="sweep_cancel_key",
                            help="Shown to the session that launched this sweep.")
        if st.button("Cancel this sweep", key="sweep_cancel_with_key"):
            if jobs.job_manager().cancel(job.id, key):
                _remember(job)
            else:
                st.error("That cancel key does not belong to this sweep.", icon=":material/error:")


def show_progress(job: jobs.Job) -> None:
    """Progress bar, 'n / N configs, ETA', the config in flight, and Cancel (for the session holding the token)."""
    token = st.session_state.get(TOKENS_KEY, {}).get(job.id)
    c = st.columns([6, 1], vertical_alignment="bottom")
    if token is None:
        _cancel_with_key(job, c[1])
    elif c[1].button("Cancel", key="sweep_cancel", icon=":material/stop:", disabled=job.status().cancel_requested):
        jobs.job_manager().cancel(job.id, token)
    status = job.status()
    text = f"{status.done} / {status.total} configs · {_duration(status.eta_s)}"
    if status.cancel_requested:
        text += " · cancelling after the config in flight…"
    elif status.current:
        text += f" · now: {status.current}"
    c[0].progress(status.fraction, text=text)
    if token is None:
        st.caption("Started in another session: only that session, or whoever has its cancel key, can cancel it.")
    else:
        st.caption(f"Cancel key, to cancel from another tab or after a reload: `{token}`")
    if status.warning:
        st.warning(status.warning, icon=":material/warning:")


def offer_resume(run_selection: frame.Selection, run_id: str, status: jobs.JobStatus | None) -> None:
    """'Interrupted at k / n' and a Resume button that continues this run id, when the run stopped short."""
    stopped = jobs.job_manager().interrupted(services.store(), run_id)
    if stopped is None:
        return
    k, n = stopped
    c = st.columns([6, 1], vertical_alignment="center")
    if status is None:  # no job of this server: it stopped while the sweep ran
        c[0].warning(f"This sweep was interrupted at {k} / {n} configs (the server stopped). Resume computes only "
                     f"the {n - k} missing ones, in the same run.", icon=":material/running_with_errors:")
    else:
        c[0].caption(f"{k} / {n} configs are done; Resume computes the {n - k} missing ones in the same run.")
    if not c[1].button("Resume", key="sweep_resume", icon=":material/play_arrow:"):
        return
    try:
        job = jobs.job_manager().resume(services.get_experiment(run_selection), services.store(), run_id,
                                        owner=_owner())
    except (jobs.JobLimitError, ValueError, *services.USER_ERRORS) as e:
        st.error(services.error_line(e), icon=":material/error:")
        return
    _remember(job)
    st.rerun()


def show_outcome(status: jobs.JobStatus) -> None:
    if status.state == jobs.FAILED:
        st.error(f"The sweep stopped with an error after {status.done} of {status.total} configs: {status.error}",
                 icon=":material/error:")
    elif status.state == jobs.CANCELLED:
        st.warning(f"Cancelled after {status.done} of {status.total} configs; the finished ones are below and "
                   f"in the store.", icon=":material/stop_circle:")
    else:
        seconds = (status.finished_at or status.started_at) - status.started_at
        st.success(f"Sweep finished: {status.total} configs in {seconds:.0f} s.", icon=":material/check_circle:")
    if status.warning:
        st.warning(status.warning, icon=":material/warning:")


def show_details(run_selection: frame.Selection, picked: list[dict]) -> None:
    """The chosen config's numbers, per-layer table and a layer's weight histogram before vs after."""
    record = picked[0]
    if len(picked) > 1:
        labels = {r["config_hash"]: r["label"] for r in picked}
        chosen = st.selectbox(f"{len(picked)} configs selected — inspect", list(labels), key="sweep_detail_pick",
                              format_func=labels.get)
        record = next(r for r in picked if r["config_hash"] == chosen)
    st.subheader(f"Selected: {record['label']}")
    c = st.columns(5)
    c[0].metric("Accuracy", f"{100 * record['accuracy']:.2f} %",
                delta=f"{-record['accuracy_drop_pts']:+.2f} pts vs fp32")
    c[1].metric("Size", f"{record['size_bytes'] / 1024:,.1f} KiB")
    c[2].metric("Compression", f"{record['compression_ratio']:.1f}×")
    c[3].metric("Bits per weight", f"{record['bits_per_weight']:.2f}")
    c[4].metric("Sparsity", f"{100 * record['realized_sparsity']:.1f} %")
    st.dataframe(layer_charts.layer_table(record["layers"]), hide_index=True, key="sweep_detail_layers",
                 column_config={"Sparsity (%)": st.column_config.NumberColumn(format="%.1f"),
                                "Size (KiB)": st.column_config.NumberColumn(format="%.2f"),
                                "Bits / weight": st.column_config.NumberColumn(format="%.2f")})
    names = [l["name"] for l in record["layers"]]
    c = st.columns([2, 1])
    layer = c[0].selectbox("Layer", names, key="sweep_detail_layer")
    log_y = c[1].toggle("Log count axis", key="sweep_detail_log")
    config_json = CompressionConfig.from_dict(record["config"]).to_json()
    hist, grid = services.layer_histogram(run_selection, config_json, layer, hide_zeros=True)
    st.plotly_chart(layer_charts.weight_histogram(hist, grid, log_y=log_y, title=f"{layer}: weights before vs after"),
                    key="sweep_detail_histogram", config=CHART_CONFIG)


def show_results(run_selection: frame.Selection, records: list[dict], run_id: str) -> None:
    """Pareto plot (selectable), details of the selection, bits x sparsity heatmap, results table + CSV."""
    df = sweep_charts.results_frame(records)
    front = pareto_front(records)
    fig = sweep_charts.pareto_figure(df, front=staircase(front), baseline_accuracy=records[0]["baseline_accuracy"])
    st.subheader("Accuracy vs honest size")
    event = st.plotly_chart(fig, key="sweep_pareto", on_select="rerun", selection_mode=("points", "box"),
                            config=CHART_CONFIG)
    st.caption(f"{len(records)} configs, {len(front)} on the Pareto front (black staircase). Colour = weight bits, "
               "shape = pruning method, dashed = fp32. Click a point or drag a box to inspect configs.")
    by_hash = {r["config_hash"]: r for r in records}
    picked = [by_hash[h] for h in sweep_charts.picked_hashes(event.selection.points) if h in by_hash]
    if picked:
        show_details(run_selection, picked)
    st.subheader("Accuracy by bits and sparsity")
    st.plotly_chart(sweep_charts.bits_sparsity_heatmap(df), key="sweep_heatmap", config=CHART_CONFIG)
    st.subheader("All results")
    show = df.assign(accuracy=100 * df["accuracy"], realized_sparsity=100 * df["realized_sparsity"],
                     size_kib=df["size_bytes"] / 1024)
    st.dataframe(show[["label", "accuracy", "accuracy_drop_pts", "size_kib", "compression_ratio", "bits_per_weight",
                       "realized_sparsity"]].sort_values("size_kib"), hide_index=True, key="sweep_table",
                 column_config={
                     "label": st.column_config.TextColumn("Config", width="large"),
                     "accuracy": st.column_config.NumberColumn("Accuracy (%)", format="%.2f"),
                     "accuracy_drop_pts": st.column_config.NumberColumn("Drop (pts)", format="%.2f"),
                     "size_kib": st.column_config.NumberColumn("Size (KiB)", format="%.2f"),
                     "compression_ratio": st.column_config.NumberColumn("Compression (×)", format="%.1f"),
                     "bits_per_weight": st.column_config.NumberColumn("Bits / weight", format="%.2f"),
                     "realized_sparsity": st.column_config.NumberColumn("Sparsity (%)", format="%.1f")})
    st.download_button("Download CSV", df.to_csv(index=False), file_name=f"sweep-{run_id}.csv", mime="text/csv",
                       key="sweep_csv", icon=":material/download:", on_click="ignore")


def results_panel(run_selection: frame.Selection, run_id: str, polling: bool) -> None:
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
    st.error(f"Sweeps need the result store: {services.error_line(e)}", icon=":material/error:")
    st.stop()
st.caption(f"{selection.label} — evaluate a grid of configs and find the best accuracy for each size.")
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
