"""The package layout: moved modules stay importable under their old paths, and the subpackages import alone."""

import importlib
import subprocess
import sys

import pytest

import inseq_ext
from inseq_ext.moved_modules import MOVED_MODULES


@pytest.mark.parametrize("old_name", sorted(MOVED_MODULES))
def test_old_module_path_is_the_moved_module(old_name):
    assert importlib.import_module(old_name) is importlib.import_module(MOVED_MODULES[old_name])


def test_from_import_through_an_old_path():
    from inseq_ext.viz import plot_layer_heatmap

    from inseq_ext.views.viz import plot_layer_heatmap as moved

    assert plot_layer_heatmap is moved


def test_unknown_submodule_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("inseq_ext.no_such_module")


@pytest.mark.parametrize("module", ["inseq_ext.evaluation.translation_truth", "inseq_ext.evaluation.ground_truth"])
def test_ground_truth_modules_import_first_without_a_circle(module):
    """Either evaluation module can be the first one imported (no import circle between them)."""
    code = f"import importlib; importlib.import_module({module!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_public_names_stay_at_the_top_level():
    for name in ("write_explorer", "aggregate_granularity", "score_of", "span_attribution", "attribute_chat"):
        assert hasattr(inseq_ext, name)
