"""The stakeholder report of a sweep run: one self-contained HTML file with the model and data, the Pareto front with
the chosen config ringed, its metric (95 % interval for accuracy), size and per-layer cost, the methods used, the
engine version and the command that recomputes it.

No Streamlit here: the CLI (`python -m compression_core report`) and the Runs / Sweep pages build the same file
from stored records; nothing is recomputed. The chosen config is the user's, or `compression_core.pareto.recommended`
(`choice_rule` says it in words).

Example:
    >>> from compression_core.store import Store
    >>> run, records = load_run(Store("runs.sqlite"), "3f2a9c1d0b7e")     # doctest: +SKIP
    >>> html = build_report(records, choose(records), run=run)          # doctest: +SKIP
"""
from __future__ import annotations

import datetime
import json
import math

from compression_core._version import __version__
from compression_core.cli_reproduce import reproduce_command
from compression_core.config import CompressionConfig
from compression_core.errors import shown
from compression_core.methods import prune_methods, quantizers
from compression_core.pareto import CLOSE_TO_FP32_PTS, CLOSE_TO_FP32_REL, pareto_front, recommended, staircase
from compression_core.record import RECORD_FIELDS
from dashboard.charts import report as report_charts
from dashboard.charts import sweep as sweep_charts
from dashboard.charts.common import bits_label, kib, metric_axis, option_label, percent_label
from dashboard.charts.layers import has_size_breakdown, layer_table, size_breakdown
from dashboard.report_html import CHART_WIDTH, esc, figure, kv_table, page, table, tiles

LATEST = "latest"  # the run id that means the store's newest run
EVAL_SET = ("fingerprint", "dataset", "split", "limit", "task")  # what the records of one report share
# record fields the report reads; records stored by an older engine may lack some (e.g. before tasks existed)
NEEDED = (*EVAL_SET, "model", "label", "config", "config_hash", "metric", "metric_value", "baseline_metric_value",
          "n_samples", "dense_bytes", "size_bytes", "compression_ratio", "bits_per_weight", "realized_sparsity",
          "n_weights", "nnz", "macs", "sparse_macs", "bitops")
# what the repairs do, in one sentence each (compression_core.repair_gptq / repair_scaling hold the maths)
REPAIR_TEXT = {
    "gptq": "GPTQ rounds a layer's weight one input column at a time and spreads each column's rounding error over "
            "the columns still to round, weighted by calibration inputs, so the layer's output changes least.",
    "awq": "AWQ scales up the input channels that carry large activations before rounding and divides the input by "
           "the same factors, so the weights that matter most lose the least precision.",
    "smoothquant": "SmoothQuant moves activation outliers into the weights with per-channel scales (strength α), "
                   "so 8-bit activations clip less.",
}
# the record fields the report explains under "How to read the numbers" (their docs), with their names there
DEFINED = {"size_bytes": "Honest size", "compression_ratio": "Compression", "bits_per_weight": "Bits per weight",
           "realized_sparsity": "Sparsity"}
CI_TEXT = ("the Wilson score interval of the measured accuracy for the number of samples evaluated; more samples "
           "make it narrower, and two configs whose intervals overlap may not differ at all")


class ReportError(ValueError):
    """The report cannot be made (unknown run, no records, a config not in the run); one line saying why."""


def load_run(store, run_id: str) -> tuple[dict, list[dict]]:
    """The run `run_id` (`Store.run`; `LATEST`: the newest run) and its stored records.

    Raises:
        ReportError: the store has no such run, or the run has no records.
    """
    runs = store.runs()  # newest first
    run = runs[0] if run_id == LATEST and runs else store.run(run_id)
    if run is None:
        newest = ", ".join(f"{r['run_id']} ({shown(r['label'], 40)})" for r in runs[:3])
        raise ReportError(f"--run {shown(run_id)} is not a run in {shown(str(store.path))}; "
                          + (f"its newest runs: {newest}" if newest else "it has no runs: launch a sweep first"))
    run_id = run["run_id"]
    records = store.records(run_id=run_id)
    if not records:
        raise ReportError(f"run {run_id} ({shown(run['label'], 40)}) has no records yet; wait for its first config "
                          "or resume the sweep")
    return run, records


def choose(records: list[dict], config_hash: str | None = None) -> dict:
    """The record of `config_hash` among `records`, or the recommended one (`choice_rule`) when None.

    Raises:
        ReportError: no record of `records` has that config hash.
    """
    if config_hash is None:
        return recommended(records, records[0]["metric"]) or records[0]
    found = [r for r in records if r["config_hash"] == config_hash]
    if not found:
        some = ", ".join(f"{r['config_hash']} ({r['label']})" for r in records[:3])
        raise ReportError(f"--config-hash {shown(config_hash)} is not a config of this run; its configs include {some}")
    return found[0]


def check_records(records: list[dict], chosen: dict) -> None:
    """Refuse records a report cannot show together.

    Raises:
        ReportError: no records, records of several evaluation sets or tasks, records without a field the report
            shows (stored by an older engine), or `chosen` not one of them.
    """
    old = next((r for r in records if not all(k in r for k in NEEDED)), None)
    if old is not None:
        lacking = ", ".join(k for k in NEEDED if k not in old)
        raise ReportError(f"record {shown(old.get('label'))} (engine {old.get('engine_version', 'unknown')}) has no "
                          f"{lacking}; sweep the run again with this engine to recompute it")
    sets = {tuple(r.get(k) for k in EVAL_SET) for r in records}
    if len(sets) != 1:
        raise ReportError(f"the records come from {len(sets)} evaluation sets (model, dataset, split, subset, task); "
                          "a report covers exactly one")
    if not any(r is chosen for r in records):
        raise ReportError(f"the chosen config {shown(chosen.get('label'))} is not one of the report's records")


def choice_rule(metric: str) -> str:
    """How `choose` picks a config when the user names none, in words."""
    axis = metric_axis(metric)
    close = (f"accuracy is at most {CLOSE_TO_FP32_PTS:g} percentage point below the fp32 model's"
             if metric == "accuracy" else
             f"{axis.name} is worse than the fp32 model's by at most {100 * CLOSE_TO_FP32_REL:g} % of the fp32 value")
    return (f"the smallest config on the Pareto front whose {close}; when no config is that close, the best one by "
            f"{axis.name}")


def _fp32(records: list[dict], baseline: dict | None) -> dict:
    """The fp32 reference: `baseline` when given, else the run's own fp32 record, else the fp32 values every record
    carries (then without an interval)."""
    fp32_hash = CompressionConfig().config_hash
    found = baseline or next((r for r in records if r["config_hash"] == fp32_hash), None)
    first = records[0]
    return found or {"metric": first["metric"], "metric_value": first["baseline_metric_value"]}


def _metric_text(record: dict) -> str:
    """'97.50 % (95 % CI 96.1–98.4 %)' for accuracy, the display value for other metrics."""
    axis = metric_axis(record["metric"])
    ci = "" if record.get("accuracy_ci_low") is None or record["metric"] != "accuracy" else (
        f" (95 % CI {100 * record['accuracy_ci_low']:.1f}–{100 * record['accuracy_ci_high']:.1f} %)")
    return axis.show(record["metric_value"]) + ci


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes ({kib(n_bytes):,.1f} KiB)"


def _header(chosen: dict, run: dict | None, when: datetime.datetime) -> str:
    run_text = f" · run {esc(run['label'])}" if run else ""
    return (f"<h1>Compression report: {esc(chosen['model'])}</h1>"
            f'<p class="sub">{esc(chosen["dataset"])}{run_text} · made {when:%Y-%m-%d %H:%M} UTC with '
            f"compression-explorer {esc(__version__)}</p>")


def _model_section(records: list[dict], chosen: dict, fp32: dict, run: dict | None) -> str:
    axis = metric_axis(chosen["metric"])
    subset = "the whole split" if chosen["limit"] is None else f"a class-stratified subset of {chosen['limit']:,}"
    rows = [("Model", chosen["model"], "model", chosen["model"]),
            ("Fingerprint (sha256 of the weights)", chosen["fingerprint"], "fingerprint", chosen["fingerprint"]),
            ("Dataset", chosen["dataset"], "dataset", chosen["dataset"]),
            ("Split", chosen["split"], "split", chosen["split"]),
            ("Samples evaluated", f"{chosen['n_samples']:,} ({subset})", "n_samples", chosen["n_samples"]),
            ("Task", f"{chosen['task']}: quality is {axis.name}", "task", chosen["task"]),
            (f"fp32 {axis.name}", _metric_text(fp32), "baseline_metric_value", chosen["baseline_metric_value"]),
            ("fp32 size", _size_text(chosen["dense_bytes"]), "dense_bytes", chosen["dense_bytes"])]
    if run is not None:
        made = datetime.datetime.fromtimestamp(run["created_at"], datetime.timezone.utc)
        rows.append(("Run", f"{run['label']} (id {run['run_id']}, {made:%Y-%m-%d %H:%M} UTC)", None, None))
    versions = sorted({r.get("engine_version", "unknown") for r in records})
    rows.append(("Configs evaluated", f"{len(records)} (engine {', '.join(versions)})", None, None))
    return "<h2>Model and data</h2>" + kv_table(rows)


def _chosen_section(records: list[dict], chosen: dict) -> str:
    axis = metric_axis(chosen["metric"])
    rule, pick = choice_rule(chosen["metric"]), recommended(records, chosen["metric"])
    how = (f"Chosen by the rule: {rule}." if chosen is pick
           else f"Chosen by hand; the rule ({rule}) would pick {pick['label'] if pick else 'none'}.")
    change = (f"{0.0 - chosen['accuracy_drop_pts']:+.2f} pts" if chosen["metric"] == "accuracy"
              else f"{chosen['metric_value'] - chosen['baseline_metric_value']:+,.{axis.digits}f}")
    ci = ("" if chosen.get("accuracy_ci_low") is None else
          f"95 % CI {100 * chosen['accuracy_ci_low']:.1f}–{100 * chosen['accuracy_ci_high']:.1f} %")
    headline = [(axis.heading, axis.show(chosen["metric_value"]), "metric_value", chosen["metric_value"], ci),
                ("Change vs fp32", change, *(("accuracy_drop_pts", chosen["accuracy_drop_pts"])
                                             if chosen["metric"] == "accuracy" else (None, None)),
                 f"fp32 {axis.show(chosen['baseline_metric_value'])}"),
                ("Size", f"{kib(chosen['size_bytes']):,.1f} KiB", "size_bytes", chosen["size_bytes"],
                 f"fp32 {kib(chosen['dense_bytes']):,.1f} KiB"),
                ("Compression", f"{chosen['compression_ratio']:.2f}×", "compression_ratio", chosen["compression_ratio"],
                 "fp32 size / size"),
                ("Bits per weight", f"{chosen['bits_per_weight']:.3f}", "bits_per_weight", chosen["bits_per_weight"],
                 "fp32: 32"),
                ("Sparsity", f"{100 * chosen['realized_sparsity']:.1f} %", "realized_sparsity",
                 chosen["realized_sparsity"], "weights pruned")]
    details = [("Honest size", _size_text(chosen["size_bytes"]), "size_bytes", chosen["size_bytes"]),
               ("Weights kept", f"{chosen['nnz']:,} of {chosen['n_weights']:,}", "nnz", chosen["nnz"]),
               ("MACs per sample (dense / touching a kept weight)", f"{chosen['macs']:,} / {chosen['sparse_macs']:,}",
                "sparse_macs", chosen["sparse_macs"]),
               ("BitOps per sample", f"{chosen['bitops']:,}", "bitops", chosen["bitops"])]
    if chosen.get("accuracy_ci_low") is not None:
        details.insert(0, ("Accuracy 95 % interval (Wilson)", f"{100 * chosen['accuracy_ci_low']:.2f}–"
                           f"{100 * chosen['accuracy_ci_high']:.2f} % of {chosen['n_samples']:,} samples",
                           "accuracy_ci_low", chosen["accuracy_ci_low"]))
    return (f"<h2>Chosen config</h2><p><b>{esc(chosen['label'])}</b> <span class=\"note\">(config "
            f"{esc(chosen['config_hash'])})</span></p><p class=\"note\">{esc(how)}</p>"
            + tiles(headline) + kv_table(details))


def _front_section(records: list[dict], chosen: dict) -> str:
    metric = chosen["metric"]
    axis = metric_axis(metric)
    front = pareto_front(records, y=metric)
    fig = sweep_charts.pareto_figure(sweep_charts.results_frame(records), front=staircase(front, y=metric),
                                     baseline=chosen["baseline_metric_value"], axis=axis, height=420)
    report_charts.mark_chosen(fig, chosen, axis)
    rows = [[r["label"], f"{kib(r['size_bytes']):,.1f}", f"{r['compression_ratio']:.2f}",
             f"{r['bits_per_weight']:.2f}", _metric_text(r)] for r in front]
    marks = ["chosen" if r is chosen else "" for r in front]
    return (f"<h2>{esc(axis.heading)} vs honest size</h2>" + figure(fig, "chart-pareto")
            + f'<p class="note">{len(records)} configs, {len(front)} on the Pareto front (black staircase: no other '
              f"config is both smaller and better). Colour = weight bits, shape = pruning method, dashed = fp32, "
              f"ring = the chosen config.</p>"
            + table(["Config on the front", "Size (KiB)", "Compression (×)", "Bits / weight", axis.heading], rows,
                    {1, 2, 3, 4}, classes=marks))


def _layers_section(chosen: dict) -> str:
    layers = chosen.get("layers")
    if not layers:
        return ("<h2>Per-layer cost</h2><p class=\"note\">The store holds no per-layer rows for this record.</p>")
    shown_layers = report_charts.largest_layers(layers)
    if has_size_breakdown(shown_layers):  # values / index / scales / codebook, stacked
        fig = size_breakdown(shown_layers).update_layout(width=CHART_WIDTH)
    else:  # a record stored before the size parts existed: its layers' totals
        fig = report_charts.layer_size_figure(shown_layers, width=CHART_WIDTH)
    rows = [[row["Layer"], row["Shape"], bits_label(row["Bits"]), row["Quantizer"], f"{row['Sparsity (%)']:.1f}",
             row["Index format"], f"{row['Size (KiB)']:,.2f}", f"{row['Bits / weight']:.2f}"]
            for row in layer_table(layers).to_dict("records")]
    layer_bytes = math.ceil(sum(l["size_bits"] for l in layers) / 8)
    part = "" if len(shown_layers) == len(layers) else f" The chart shows the {len(shown_layers)} largest layers."
    return ("<h2>Per-layer cost</h2>" + figure(fig, "chart-layers")
            + f'<p class="note">The {len(layers)} compressible layers store {layer_bytes:,} bytes (values, sparse '
              f"index, scales / codebooks); the model's other tensors (biases, norms …) take the remaining "
              f"{chosen['size_bytes'] - layer_bytes:,} bytes of the {chosen['size_bytes']:,}.{part}</p>"
            + table(["Layer", "Shape", "Bits", "Quantizer", "Sparsity (%)", "Index", "Size (KiB)", "Bits / weight"],
                    rows, {4, 6, 7}))


def _methods_section(records: list[dict], chosen: dict) -> str:
    parts = []
    for name, info in quantizers().items():
        used = [r for r in records if r["quantizer"] == name and r["bits"] < 32]
        if used:
            widths = ", ".join(bits_label(b) for b in sorted({r["bits"] for r in used}))
            parts.append((f"{info.label} quantization", f"{info.description} Used here at {widths}.",
                          any(r is chosen for r in used)))
    for name, info in prune_methods().items():
        used = [r for r in records if r["prune_method"] == name]
        if used:
            amounts = ", ".join(percent_label(s) for s in sorted({round(r["sparsity"], 4) for r in used}))
            parts.append((f"{info.label} pruning", f"{info.description} Used here at sparsity {amounts}.",
                          any(r is chosen for r in used)))
    for repair in dict.fromkeys(r.get("repair", "none") for r in records):
        if repair in REPAIR_TEXT:
            parts.append((f"{option_label(repair)} repair", REPAIR_TEXT[repair],
                          chosen.get("repair") == repair))
    if not parts:
        parts.append(("No compression", "Every config of this run is the fp32 model.", True))
    body = "".join(f"<h3>{esc(title)}{' (chosen config)' if mine else ''}</h3><p>{esc(text)}</p>"
                   for title, text, mine in parts)
    docs = {f.name: f.doc for f in RECORD_FIELDS}
    terms = [(title, docs[name]) for name, title in DEFINED.items()]
    terms += [("95 % interval", CI_TEXT)] if chosen["metric"] == "accuracy" else []
    listed = "".join(f"<li><b>{esc(title)}</b>: {esc(text)}</li>" for title, text in terms)
    return f"<h2>Methods</h2>{body}<h3>How to read the numbers</h3><ul class=\"note\">{listed}</ul>"


def _reproduce_section(chosen: dict) -> str:
    command = reproduce_command(chosen)
    if command is None:
        return ("<h2>Reproduce</h2><p class=\"note\">This config has per-layer settings the command line cannot "
                f"express; its full config is:</p><pre>{esc(json.dumps(chosen['config'], indent=1))}</pre>")
    builtin = ":" not in chosen["model"]
    weights = "" if builtin else (
        f" If the model was loaded with --weights, add the same file: the command prints the fingerprint of what it "
        f"loads, {chosen['fingerprint']} here.")
    return ("<h2>Reproduce</h2><p>Recompute the chosen config from the command line (add --store to keep it):</p>"
            f"<pre id=\"reproduce\">{esc(command)}</pre><p class=\"note\">{esc(weights.strip())}</p>")


def build_report(records: list[dict], chosen: dict, *, run: dict | None = None, baseline: dict | None = None,
                 generated_at: datetime.datetime | None = None) -> str:
    """The report as one self-contained HTML document (plotly.js inline, no request; prints on A4 / Letter).

    Args:
        records: stored records of one evaluation set and task (a run's: `load_run`).
        chosen: the record to recommend; one of `records` (`choose`).
        run: the run as `Store.run` gives it (label, id, date), or None.
        baseline: the fp32 record of the same evaluation set; None: the run's own fp32 record, else the fp32
            values every record carries.
        generated_at: the date printed on the report (default now, UTC).

    Raises:
        ReportError: as `check_records`.
    """
    check_records(records, chosen)
    when = generated_at or datetime.datetime.now(datetime.timezone.utc)
    body = (_header(chosen, run, when) + _model_section(records, chosen, _fp32(records, baseline), run)
            + _chosen_section(records, chosen) + _front_section(records, chosen)
            + '<div class="page-break"></div>' + _layers_section(chosen) + _methods_section(records, chosen)
            + _reproduce_section(chosen)
            + f'<p class="note">Made by compression-explorer {esc(__version__)} on {when:%Y-%m-%d %H:%M} UTC from '
              f"{len(records)} stored records; no number was recomputed for this report.</p>")
    return page(f"Compression report: {chosen['model']}", body)
