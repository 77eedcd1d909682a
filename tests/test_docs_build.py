"""The documentation site builds in MkDocs' strict mode (any warning fails), offline, with the API reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    # The API page is generated from the docstrings: the comparison functions and a method class appear in it.
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
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
    # Every page in the nav was rendered.
    for page in ("getting_started", "methods/custom_saliency", "methods/block_gradient_x_input", "explanations"):
        assert (site / page / "index.html").is_file(), page
