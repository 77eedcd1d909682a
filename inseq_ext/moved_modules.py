"""Old module paths kept importable after modules moved into subpackages.

``inseq_ext.explorer`` now lives in ``inseq_ext.views.explorer``, ``inseq_ext.ground_truth`` in
``inseq_ext.evaluation.ground_truth``, and so on. Code written against the old paths
(``from inseq_ext.viz import plot_layer_heatmap``) keeps working: the old name resolves, on first import, to the
very same module object as the new one (no copy, so patches and ``isinstance`` checks agree).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED_MODULES = {
    "inseq_ext.explorer": "inseq_ext.views.explorer",
    "inseq_ext.granularity": "inseq_ext.views.granularity",
    "inseq_ext.lookup": "inseq_ext.views.lookup",
    "inseq_ext.span": "inseq_ext.views.span",
    "inseq_ext.terminal": "inseq_ext.views.terminal",
    "inseq_ext.viz": "inseq_ext.views.viz",
    "inseq_ext.explanations": "inseq_ext.evaluation.explanations",
    "inseq_ext.ground_truth": "inseq_ext.evaluation.ground_truth",
    "inseq_ext.translation_truth": "inseq_ext.evaluation.translation_truth",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The new module was executed when it was imported; nothing more to run."""


def install_moved_module_finder() -> None:
    """Put the finder on ``sys.meta_path`` once (importing ``inseq_ext`` does it)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
