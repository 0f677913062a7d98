"""The report file in real Chromium with the network blocked: the charts draw from the inline plotly.js, nothing
leaves the page, hostile names stay text, and it prints on A4 and Letter without anything wider than the page."""
from __future__ import annotations

import pytest

from compression_core.store import Store
from dashboard.report import build_report, choose, load_run
from dashboard.report_html import CHART_WIDTH
from tests.report_run import sweep_run

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"
A4_PRINTABLE_PX = 703  # 210 mm - 2 x 12 mm margins at 96 px per inch; Letter's is wider (725 px)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """(path, records, chosen) of the report of an 8-config run, with a hostile run label and model name."""
    folder = tmp_path_factory.mktemp("report-e2e")
    store = Store(folder / "runs.sqlite")
    run, records = load_run(store, sweep_run(store, HOSTILE))
    records = [{**r, "model": HOSTILE} for r in records]
    chosen = choose(records)
    path = folder / "report.html"
    path.write_text(build_report(records, chosen, run=run), encoding="utf-8")
    return path, records, chosen


@pytest.fixture
def offline_page(browser):
    """A page whose every request but file:// is aborted and recorded; dialogs and page errors recorded too."""
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    seen = {"requests": [], "blocked": [], "dialogs": [], "errors": []}

    def block(route):
        seen["blocked"].append(route.request.url)
        route.abort()
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else block(route))
    page = context.new_page()
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    yield page, seen
    context.close()


def test_report_draws_offline_and_prints(report_file, offline_page):
    path, records, chosen = report_file
    page, seen = offline_page
    page.goto(path.as_uri())
    page.wait_for_selector("#chart-layers .main-svg")

    # the charts: every config, the front, the fp32 line and the ring; one stacked bar per layer
    pareto = page.locator("#chart-pareto")
    assert pareto.locator(".main-svg").count() >= 1
    n_traces = page.evaluate("document.getElementById('chart-pareto').data.length")
    assert pareto.locator(".scatterlayer .trace").count() == n_traces
    assert pareto.locator(".scatterlayer .trace .point").count() == len(records) + 1  # + the chosen ring
    n_parts = page.evaluate("document.getElementById('chart-layers').data.length")  # values, index, scales ...
    assert page.locator("#chart-layers .barlayer .trace").count() == n_parts >= 1
    assert page.locator("#chart-layers .barlayer .trace .point").count() == n_parts * len(chosen["layers"])
    assert page.evaluate("document.getElementById('chart-pareto')._fullLayout.width") == CHART_WIDTH

    # nothing left the page, nothing ran from a name
    assert seen["requests"] == [path.as_uri()] and seen["blocked"] == [], seen
    assert seen["dialogs"] == [] and seen["errors"] == [], seen
    assert page.locator("h1").inner_text() == f"Compression report: {HOSTILE}"
    assert page.locator("img").count() == 0 and page.locator("script").count() == 3

    # print: A4's printable width holds every element; the PDF has pages on A4 and Letter
    page.emulate_media(media="print")
    page.set_viewport_size({"width": A4_PRINTABLE_PX, "height": 1000})
    widest = page.evaluate("Math.max(...[...document.querySelectorAll('body *')]"
                           ".map(e => e.getBoundingClientRect().right))")
    assert widest <= A4_PRINTABLE_PX and page.evaluate("document.documentElement.scrollWidth") <= A4_PRINTABLE_PX
    assert page.locator(".modebar").count() == 0  # no interactive chrome
    for paper in ("A4", "Letter"):
        pdf = page.pdf(format=paper, print_background=True)
        assert pdf.startswith(b"%PDF") and 2 <= pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page>") <= 6
    assert seen["requests"] == [path.as_uri()] and seen["blocked"] == []
