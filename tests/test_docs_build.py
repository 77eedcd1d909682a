"""The documentation site builds in MkDocs' strict mode (any warning fails), offline, with the API reference, and
browses from disk (``file://``) with every table inside the page column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site, result.stdout + result.stderr


def test_docs_build_strictly(site):
    site, log = site
    assert "WARNING" not in log, log
    # The API page is generated from the docstrings: the comparison functions and a method class appear in it.
    api = (site / "api.html").read_text(encoding="utf-8")
    for anchor in (
        "inseq_ext.evaluation.explanations.compare_with_attribution",
        "inseq_ext.evaluation.explanations.parse_explanation",
        "inseq_ext.attr.custom_saliency.CustomSaliencyAttribution",
        "inseq_ext.views.viz.plot_layer_heatmap",
        "inseq_ext.adapters.supported_model_types",
        "inseq_ext.examples.load_example_model",
        "inseq_ext.chat.data_block_scores",
        "inseq_ext.chat.SIMPLE_CHAT_TEMPLATE",
        "inseq_ext.evaluation.translation_truth.evaluate_translation",
        "inseq_ext.demo_models.demo_model",
    ):
        assert f'id="{anchor}"' in api, anchor
    assert "Kendall" in api  # a docstring formula citation made it through
    # Every page in the nav was rendered, as page.html (use_directory_urls: false).
    for page in ("getting_started", "methods/custom_saliency", "methods/block_gradient_x_input", "explanations"):
        assert (site / f"{page}.html").is_file(), page


def test_docs_browse_from_disk_and_tables_fit(site, browser):
    """Opened from disk, every navigation link leads to a file that exists, and no table runs past the column."""
    site, _ = site
    # One Chromium for the whole session (tests/conftest.py::browser).
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((site / "index.html").as_uri())
    links = page.evaluate("() => Array.from(document.querySelectorAll('.wy-menu a')).map(a => a.href)")
    pages = [link.split("#")[0] for link in links]
    assert all(link.startswith("file://") for link in links) and len(set(pages)) >= 10, links
    for url in dict.fromkeys(pages):
        assert url.endswith(".html"), url  # a folder URL would show a directory listing from disk
        assert Path(url.removeprefix("file://")).is_file(), url
        page.goto(url)
        widths = page.evaluate(
            "() => Array.from(document.querySelectorAll('.wy-nav-content table'))"
            ".map(t => [t.scrollWidth, t.parentElement.clientWidth])"
        )
        assert all(table <= column + 1 for table, column in widths), (url, widths)
    # Clicking through from the home page works as in a served site.
    page.goto((site / "index.html").as_uri())
    page.click(".wy-menu a:text('Getting started')")
    assert page.url.endswith("/getting_started.html") and "Getting started" in page.title()
    page.close()
