"""The real app in real Chromium: loads clean, a slider changes the metrics, a sweep draws its Pareto plot,
a clicked point opens its details, and the CSV downloads. Also saves the README screenshots to assets/."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from playwright.sync_api import expect

from compression_core.grid import expand_grid
from tests.e2e.locators import slider_input

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
FAST = "model=digits-cnn&dataset=digits"
EXCEPTION = "[data-testid='stException']"
SWEEP_TIMEOUT_MS = 300_000


def accuracy_value(page):
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Accuracy").first
    return metric.locator("[data-testid='stMetricValue']")


def test_explore_loads_without_exception_and_screenshot(page, app_url, wait_idle):
    page.set_viewport_size({"width": 1440, "height": 1500})  # tall enough for metrics + explored chart
    page.goto(app_url)  # the first view: lenet5 on mnist, int4 per channel + 50 % magnitude pruning
    wait_idle(page)
    expect(accuracy_value(page)).to_have_text(re.compile(r"\d+\.\d\d %"))
    chart = page.locator("[data-testid='stVegaLiteChart']").first  # an SVG, its mark groups named by layer
    # the points explored here, and the shipped precomputed front (open circles) drawn beside them
    explored = chart.locator("g.explored_marks path")
    shipped = chart.locator("g.precomputed_marks path")
    expect(explored).to_have_count(1)  # the first view's config
    expect(chart.locator("g.current_marks path")).to_have_count(1)  # ringed: the config on screen
    assert shipped.count() >= 20  # a real trade-off at once: the bits x sparsity front, not one fp32 dot
    compression = page.locator("[data-testid='stMetric']").filter(has_text="Compression")
    assert float(compression.locator("[data-testid='stMetricValue']").inner_text().rstrip("×")) > 5

    page.goto(f"{app_url}/?explore_bits=32&explore_sparsity=0")  # fp32, then explore like a user
    wait_idle(page)
    expect(explored).to_have_count(1)  # the fp32 point
    wait_idle(page)
    assert page.locator(EXCEPTION).count() == 0
    assert "LeNet-5" in page.locator("[data-testid='stSidebar']").inner_text()  # the default model's description

    # explore like a user: step the weight bits down from 32 to 2, each config adds a point to the chart
    bits = slider_input(page, "Weight bits")
    for n_seen in range(2, 10):
        bits.focus()
        bits.press("ArrowLeft")
        expect(explored).to_have_count(n_seen)
        wait_idle(page)
    for _ in range(2):  # back up to 4 bits (already explored: no new point) and prune half the weights
        bits.focus()
        bits.press("ArrowRight")
        wait_idle(page)
    sparsity = slider_input(page, "Sparsity")
    for n_seen in range(10, 15):  # PageUp: +0.1 sparsity, up to 0.5
        sparsity.focus()
        sparsity.press("PageUp")
        expect(explored).to_have_count(n_seen)
        wait_idle(page)
    expect(sparsity).to_have_value("0.5")
    assert page.locator(EXCEPTION).count() == 0
    page.mouse.move(5, 5)
    page.wait_for_timeout(800)  # let the charts finish their transition before the picture
    page.screenshot(path=str(ASSETS / "screenshot.png"))


def test_sparsity_slider_changes_accuracy(page, app_url, wait_idle):
    page.goto(f"{app_url}/?{FAST}")
    wait_idle(page)
    value = accuracy_value(page)
    expect(value).to_have_text(re.compile(r"\d+\.\d\d %"))
    before = value.inner_text()
    thumb = slider_input(page, "Sparsity")
    thumb.focus()
    thumb.press("End")  # the keyboard way to the far end: 0.99 sparsity
    expect(thumb).to_have_value("0.99")
    expect(value).not_to_have_text(before)
    wait_idle(page)
    after = value.inner_text()
    assert float(after.split()[0]) < float(before.split()[0])
    assert page.locator(EXCEPTION).count() == 0


def test_sweep_pareto_select_and_csv(page, app_url, wait_idle, tmp_path):
    page.goto(f"{app_url}/sweep?{FAST}")
    wait_idle(page)
    expect(page.get_by_text("No sweep yet")).to_be_visible()
    # the form's defaults: bits 2, 4, 8, 32 x sparsity 0-90 % in steps of 30 %, magnitude pruning
    n_configs = len(expand_grid(bits=[2, 4, 8, 32], sparsity=[0.0, 0.3, 0.6, 0.9], prune=["magnitude"]))
    page.get_by_role("button", name="Launch sweep").click()
    expect(page.get_by_text("Sweep finished")).to_be_visible(timeout=SWEEP_TIMEOUT_MS)
    wait_idle(page)
    assert page.locator(EXCEPTION).count() == 0

    pareto = page.locator("[data-testid='stPlotlyChart']").first
    points = pareto.locator(".scatterlayer .trace path.point")
    expect(points).to_have_count(n_configs)

    # click the fp32 point (largest size, top right): plotly selects it and Streamlit reruns with the selection
    points.last.scroll_into_view_if_needed()
    box = points.last.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly picks the clicked point from the hover state
    expect(page.locator(".hoverlayer .hovertext")).to_have_count(1)
    page.mouse.click(x, y)
    expect(page.get_by_text("weights before vs after")).to_be_visible()
    wait_idle(page)
    expect(page.locator("[data-testid='stDataFrame']").first).to_be_visible()
    assert page.locator(EXCEPTION).count() == 0
    page.get_by_role("heading", name="Accuracy vs honest size").scroll_into_view_if_needed()
    page.mouse.move(5, 5)  # no tooltip in the picture
    page.wait_for_timeout(500)
    page.screenshot(path=str(ASSETS / "screenshot-sweep.png"))

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    path = tmp_path / "sweep.csv"
    download.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == n_configs
    assert {r["bits"] for r in rows} == {"2", "4", "8", "32"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and int(float(r["size_bytes"])) > 0 for r in rows)
