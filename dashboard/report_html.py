"""The HTML of the stakeholder report: one self-contained page (plotly.js inline once, no requests), its print style,
and the escaped building blocks `dashboard.report` assembles it from.

Every text that reaches the page goes through `esc` (or is a number this module formats); figures go in as JSON
with every `<` written `\\u003c`, so no string can close the script it sits in. A Content-Security-Policy meta tag
forbids the page any request (connect, image, font, frame), so it is the same page offline and online.
"""
from __future__ import annotations

import html
import json
from collections.abc import Iterable

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

CHART_WIDTH = 680  # px: fits the printable width of A4 (186 mm = 703 px at 12 mm margins) and of US Letter
# no request of any kind; inline scripts and styles only ('unsafe-eval': plotly.js builds a few functions at run time)
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; base-uri 'none'; form-action 'none'")
PLOT_CONFIG = {"displayModeBar": False, "responsive": False, "displaylogo": False}

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #111827;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 720px; margin: 0 auto; padding: 24px 16px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 14px; margin: 14px 0 2px; }
p { margin: 6px 0; }
.sub, .note { color: #4b5563; }
.note { font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; margin: 6px 0; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
thead th { border-bottom: 1px solid #9ca3af; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 32%; font-weight: 600; color: #374151; }
tr.chosen td { background: #fef9c3; font-weight: 600; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
.tile { flex: 1 1 150px; border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px 10px; }
.tile .k { font-size: 12px; color: #4b5563; }
.tile .v { font-size: 19px; font-weight: 600; }
.chart { width: 680px; max-width: 100%; margin: 6px 0; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f8fafc; border: 1px solid #e5e7eb;
  padding: 8px; font-size: 12px; }
@page { margin: 12mm; }
@media print {
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  .chart, .tiles, table.kv, pre, tr { break-inside: avoid; }
  thead { display: table-header-group; }
  .page-break { break-before: page; }
  .modebar-container { display: none !important; }
}
"""


def esc(value: object) -> str:
    """`value` as HTML text: <, >, &, and both quotes escaped."""
    return html.escape(str(value), quote=True)


def data_attrs(field: str | None, value: object) -> str:
    """` data-field="F" data-value="V"` carrying an engine number exactly as stored (tests compare it), or ''."""
    if field is None:
        return ""
    return f' data-field="{esc(field)}" data-value="{esc(json.dumps(value))}"'


def kv_table(rows: Iterable[tuple[str, str, str | None, object]]) -> str:
    """A two-column table of (label, shown text, record field or None, its raw value); text is escaped here."""
    body = "".join(f"<tr><th>{esc(label)}</th><td{data_attrs(field, value)}>{esc(text)}</td></tr>"
                   for label, text, field, value in rows)
    return f'<table class="kv">{body}</table>'


def tiles(items: Iterable[tuple[str, str, str | None, object, str]]) -> str:
    """Headline numbers as tiles: (label, shown text, record field or None, raw value, small line under it)."""
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="k">{esc(k)}</div><div class="v"{data_attrs(f, raw)}>{esc(v)}</div>'
        f'<div class="k">{esc(sub)}</div></div>' for k, v, f, raw, sub in items) + "</div>"


def table(header: list[str], rows: list[list[str]], numeric: set[int], *, classes: list[str] | None = None) -> str:
    """A table of already formatted cells (escaped here); columns in `numeric` align right; `classes`: one CSS
    class per row ('' for none)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{esc(cls)}">' + "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
                                            for i, c in enumerate(row)) + "</tr>"
        for row, cls in zip(rows, classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig: go.Figure, chart_id: str) -> str:
    """A chart: its div and the script that draws it with the inline plotly.js (light template, no toolbar)."""
    fig.update_layout(template="plotly_white", paper_bgcolor="#ffffff", plot_bgcolor="#ffffff",
                      width=fig.layout.width or CHART_WIDTH)
    spec = pio.to_json(fig, validate=False).replace("<", "\\u003c")  # no "</script>" can end the script early
    return (f'<div class="chart" id="{esc(chart_id)}"></div>\n<script>(function () {{ var f = {spec}; '
            f'Plotly.newPlot({json.dumps(chart_id)}, f.data, f.layout, {json.dumps(PLOT_CONFIG)}); }})();</script>')


def page(title: str, body: str) -> str:
    """The whole document: charset, CSP, the print style and plotly.js (once), then `body` (already HTML)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head>\n<body><main>\n{body}\n</main></body></html>\n")
