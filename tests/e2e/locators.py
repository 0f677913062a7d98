"""Locators the browser tests share."""
from __future__ import annotations


def slider_input(page, label: str):
    """The keyboard-focusable range input inside the thumb of the slider labelled `label`."""
    return page.locator("[data-testid='stSlider']").filter(has_text=label).locator("input[type='range']")
