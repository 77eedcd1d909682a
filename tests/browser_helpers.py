"""Headless Chromium (Debian's package, driven by Playwright) for the explorer's browser tests.

The ``browser`` fixture (tests/conftest.py) skips when Chromium or Playwright is missing, unless
INSEQ_EXT_REQUIRE_BROWSER=1 (set by .ci/run), which turns the skip into a failure. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from inseq_ext.views.explorer import score_color

CHROMIUM = os.environ.get("INSEQ_EXT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (Debian: apt-get install -y --no-install-recommends chromium)"
    return None


@contextmanager
def launched_browser() -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        if os.environ.get("INSEQ_EXT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"INSEQ_EXT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str, width: int = 1200, height: int = 800) -> Any:
    """A new tab on ``url``, recording requests (``tab.requests``) and script errors (``tab.errors``)."""
    tab = browser.new_page(viewport={"width": width, "height": height})
    tab.requests, tab.errors = [], []
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.goto(url)
    return tab


UNITS_JS = """elements => elements.map(e => ({axis: e.dataset.axis, index: Number(e.dataset.index),
    role: e.dataset.role, generated: e.dataset.generated, step: e.dataset.step, score: e.dataset.score,
    text: e.textContent, title: e.title, color: getComputedStyle(e).backgroundColor,
    selected: e.classList.contains('selected'), clickable: e.classList.contains('generated'),
    panel: e.parentElement.id}))"""


def units(page_or_frame: Any) -> list[dict]:
    """Every unit span of the page (or of a frame): axis, index, role, scores, colors, selection."""
    return page_or_frame.locator(".unit").evaluate_all(UNITS_JS)


def rgba(css: str) -> tuple[float, float, float, float]:
    if css == "transparent":
        return (0.0, 0.0, 0.0, 0.0)
    values = [float(v) for v in re.findall(r"[\d.]+", css)]
    return tuple(values) if len(values) == 4 else (*values, 1.0)


def assert_map(page: Any, span: Any, fixed_scale: float | None = None, min_checked: int = 2) -> None:
    """Every unit's shown score and color equal the Python span map (NaN: no score, transparent).

    ``span`` is a :func:`~inseq_ext.views.span.span_attribution` result; units are matched by axis and index.
    """
    expected = {}
    for axis, scores in (("source", span.source_scores), ("target", span.target_scores)):
        if scores is not None:
            expected.update({(axis, idx): value for idx, value in enumerate(scores.tolist())})
    finite = [abs(v) for v in expected.values() if not math.isnan(v)]
    scale = fixed_scale if fixed_scale is not None else max(finite)
    shown_units = units(page)
    assert len(shown_units) == len(span.source) + len(span.target) or span.source_scores is None
    checked = 0
    for unit in shown_units:
        value = expected.get((unit["axis"], unit["index"]), float("nan"))
        if math.isnan(value):
            assert unit["score"] == "", unit
            assert rgba(unit["color"])[3] == 0
            continue
        shown = float(unit["score"])
        assert shown == pytest.approx(value, rel=1e-4, abs=1e-6), unit
        assert rgba(unit["color"]) == pytest.approx(rgba(score_color(value, scale)), abs=5e-3), (
            unit
        )  # Chromium stores opacity in 8 bits
        checked += 1
    assert checked >= min_checked
