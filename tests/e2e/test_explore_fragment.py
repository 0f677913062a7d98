"""Explore's slider fragment in real Chromium: a slider step reruns only the sliders and results, yet everything the
page shows stays derived from the one canonical config (the settings below, the per-layer overrides, bias
correction). AppTest reruns whole scripts, so only a browser exercises the fragment-only path."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.locators import slider_input


def selectbox_input(page, label: str):
    return page.locator("[data-testid='stSelectbox']").filter(has_text=label).locator("input")


def config_caption(page):
    return page.locator("[data-testid='stCaptionContainer']").filter(has_text="evaluated on").first


def step(page, wait_idle, label: str, key: str) -> None:
    thumb = slider_input(page, label)
    thumb.focus()
    thumb.press(key)
    page.wait_for_timeout(300)  # the slider sends its value, the rerun starts
    wait_idle(page)


def test_a_bits_step_that_changes_the_settings_redraws_them(page, app_url, wait_idle):
    page.goto(f"{app_url}/?explore_bits=8&explore_sparsity=0.3")
    wait_idle(page)
    scheme = selectbox_input(page, "Scheme")
    expect(scheme).to_be_enabled()
    step(page, wait_idle, "Weight bits", "ArrowRight")  # 8 -> 16: still an integer grid
    expect(config_caption(page)).to_contain_text("int16")
    expect(scheme).to_be_enabled()
    step(page, wait_idle, "Weight bits", "ArrowRight")  # 16 -> 32: nothing is quantized, so no scheme applies
    expect(config_caption(page)).to_contain_text("fp32")
    expect(scheme).to_be_disabled()  # drawn outside the fragment: the step reran the page
    expect(page).to_have_url(re.compile(r"explore_bits=32"))
    step(page, wait_idle, "Weight bits", "ArrowLeft")  # and back
    expect(scheme).to_be_enabled()
    expect(config_caption(page)).to_contain_text("int16")


def test_overrides_and_bias_correction_stay_applied_through_slider_steps(page, app_url, wait_idle):
    page.goto(f"{app_url}/?explore_bits=4&explore_sparsity=0.3&explore_layers=fc1:skip=1"
              f"&explore_bias_correction=true")
    wait_idle(page)
    caption = config_caption(page)
    expect(caption).to_contain_text("magnitude global 30%")
    expect(caption).to_contain_text("biascorr")
    expect(caption).to_contain_text("1 overrides")
    size = page.locator("[data-testid='stMetric']").filter(has_text="Size").locator("[data-testid='stMetricValue']")
    expect(size).to_have_text(re.compile(r"MiB$"))  # fc1 (400,000 weights) left in fp32
    for key, shown in (("ArrowRight", "31%"), ("ArrowRight", "32%"), ("ArrowLeft", "31%")):
        step(page, wait_idle, "Sparsity", key)
        expect(caption).to_contain_text(f"magnitude global {shown}")
        expect(caption).to_contain_text("biascorr")
        expect(caption).to_contain_text("1 overrides")
        expect(size).to_have_text(re.compile(r"MiB$"))
    assert page.locator("[data-testid='stException']").count() == 0


def test_every_key_press_is_answered_with_the_value_the_thumb_shows(page, app_url, wait_idle):
    # A fragment rerun that hits the cache takes ~20 ms: it can start and finish within one browser render, so the
    # page's script state may never read "running". What counts is that the tiles follow the thumb, press by press
    # and after a burst of presses faster than the server answers.
    page.goto(f"{app_url}/?explore_bits=4&explore_sparsity=0.5")
    wait_idle(page)
    thumb, caption = slider_input(page, "Sparsity"), config_caption(page)
    for i, key in enumerate(["ArrowRight"] * 6 + ["ArrowLeft"] * 6):
        thumb.focus()
        thumb.press(key)
        shown = round(float(thumb.input_value()) * 100)
        expect(caption).to_contain_text(f"magnitude global {shown}%", timeout=10_000)
        page.wait_for_timeout(150 + 100 * (i % 3))  # a person's pace, varied
    assert thumb.input_value() == "0.5"
    thumb.focus()
    for key in ["ArrowRight"] * 4:
        thumb.press(key, delay=20)  # held briefly, one after another: later values overtake earlier reruns
    expect(thumb).to_have_value("0.54")
    expect(caption).to_contain_text("magnitude global 54%", timeout=10_000)
    wait_idle(page)
    expect(caption).to_contain_text("magnitude global 54%")  # and nothing older arrives after it
    expect(page).to_have_url(re.compile(r"explore_sparsity=0\.54"))
    assert page.locator("[data-testid='stException']").count() == 0


def test_the_served_page_loads_the_first_views_code_at_once(app_url):
    # dashboard.warmup.PreloadChunks, in the server `make run` starts: the page's <head> names the chart's chunks
    import urllib.request

    with urllib.request.urlopen(f"{app_url}/?explore_bits=4") as response:
        head = response.read().decode().split("</head>")[0]
    for chunk in ("ArrowVegaLiteChart", "embed", "Metric"):
        assert re.search(rf'<script type="module" crossorigin src="\./static/js/{chunk}\.[\w-]+\.js"></script>', head)


def test_the_app_asks_nothing_of_any_other_host(page, app_url, wait_idle):
    # a local tool: no fonts, icons or scripts from the internet (the page icon is a file the server serves)
    hosts = set()
    page.on("request", lambda request: hosts.add(request.url.split("/")[2] if "://" in request.url else ""))
    page.goto(f"{app_url}/?explore_sparsity=0.6")
    wait_idle(page)
    step(page, wait_idle, "Sparsity", "ArrowRight")
    page.goto(f"{app_url}/lessons")
    wait_idle(page)
    assert hosts - {""} == {app_url.split("/")[2]}
