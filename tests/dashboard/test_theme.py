"""The theme follows the system (light or dark): no forced base or colours, and chart lines readable on both."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dashboard.charts import common

ROOT = Path(__file__).resolve().parents[2]
BACKGROUNDS = {"light": "#ffffff", "dark": "#0e1117"}  # Streamlit's own light and dark backgrounds
LINES = ("HIGHLIGHT_COLOR", "REFERENCE_COLOR", "THRESHOLD_COLOR", "LEVEL_COLOR", "AFTER_COLOR")


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours (1 = the same, 21 = black on white)."""
    def luminance(h: str) -> float:
        c = [int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_shipped_theme_does_not_force_light_or_dark():
    theme = tomllib.loads((ROOT / "dashboard" / "streamlit.toml").read_text())["theme"]
    colours = {"base", "primaryColor", "backgroundColor", "secondaryBackgroundColor", "textColor"}
    assert not colours & set(theme)  # a colour here makes one custom theme, based on light, for everyone
    for scheme in ("light", "dark"):  # the accents of the two themes the system setting chooses between
        assert set(theme[scheme]) == {"primaryColor"}
        assert contrast(theme[scheme]["primaryColor"], BACKGROUNDS[scheme]) > 3


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_chart_lines_and_points_are_readable_on_both_backgrounds(background):
    for name in LINES:
        assert contrast(getattr(common, name), BACKGROUNDS[background]) >= 3.0, name
    for bits, color in common.BIT_COLORS.items():  # filled markers with a white rim: a weaker bound
        assert contrast(color, BACKGROUNDS[background]) >= 1.8, bits

