"""Lessons and looks in real Chromium: a lesson link opens Explore with its settings, the theme follows the
system's light / dark setting, and the Size tile fits at 1,400 px. Screenshots go to the test's tmp folder
(and to $LESSONS_SCREENSHOTS when set, to look at them)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from dashboard import lessons

EXCEPTION = "[data-testid='stException']"
DARK_MAX = 80  # the app background's brightest channel (0-255) in the dark theme
LIGHT_MIN = 230
LOAD_MS = 120_000  # a page's first run loads a model on a shared 2-core machine


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LESSONS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _selectbox(page, label: str):
    """The text input of the selectbox labelled `label` (its value is the option shown)."""
    return page.get_by_role("combobox", name=label, exact=True)


def test_a_lesson_link_opens_explore_with_its_settings(page, app_url, wait_idle, tmp_path):
    lesson = lessons.lesson("clipping")
    page.goto(f"{app_url}/lessons")
    wait_idle(page)
    card = page.locator("[data-testid='stVerticalBlockBorderWrapper'], [data-testid='stVerticalBlock']").filter(
        has=page.get_by_role("heading", name=lesson.title)).last
    card.get_by_role("link", name="Open in Explore").click()
    expect(page.get_by_role("heading", name="Explore", exact=True)).to_be_visible(timeout=LOAD_MS)
    wait_idle(page)
    assert page.locator(EXCEPTION).count() == 0
    assert "explore_range=percentile" in page.url and "/lessons" not in page.url
    bits = page.locator("[data-testid='stSlider']").filter(has_text="Weight bits").first
    expect(bits.locator("[data-testid='stSliderThumbValue']")).to_have_text(str(lesson.view.bits), timeout=LOAD_MS)
    expect(_selectbox(page, "Granularity")).to_have_value("per tensor")
    expect(_selectbox(page, "Range")).to_have_value("percentile")
    expect(_selectbox(page, "Pruning scope")).to_have_value("per layer")  # no pruning: the scope in force, disabled
    expect(_selectbox(page, "Pruning scope")).to_be_disabled()
    label = page.get_by_text(lesson.view.config().label, exact=False).first  # "int3 tensor sym p99.9"
    expect(label).to_be_visible(timeout=LOAD_MS)
    page.screenshot(path=str(_shots(tmp_path) / "lesson-clipping.png"), full_page=True)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_theme_follows_the_system_and_the_size_tile_fits(browser, app_url, wait_idle, tmp_path, scheme):
    context = browser.new_context(viewport={"width": 1400, "height": 1400}, color_scheme=scheme,
                                  device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(app_url)
        wait_idle(page)
        expect(page.locator("[data-testid='stMetric']").filter(has_text="Size").first).to_be_visible(timeout=LOAD_MS)
        background = page.evaluate("getComputedStyle(document.querySelector('.stApp')).backgroundColor")
        channels = [int(v) for v in background[background.index("(") + 1:-1].split(",")[:3]]
        assert max(channels) <= DARK_MAX if scheme == "dark" else min(channels) >= LIGHT_MIN, background
        size = page.locator("[data-testid='stMetric']").filter(has_text="Size").first
        for part in ("stMetricValue", "stMetricDelta"):
            box = size.locator(f"[data-testid='{part}']")
            fits = box.evaluate("e => [...e.querySelectorAll('*'), e].every(n => n.scrollWidth <= n.clientWidth + 1)")
            assert fits, f"the Size tile's {part} is cut off: {box.inner_text()!r}"
        page.screenshot(path=str(_shots(tmp_path) / f"explore-{scheme}-1400.png"), full_page=True)
    finally:
        context.close()
