"""PNG plot of a method's mean deletion and insertion curves next to the random baseline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ...files import atomic_output
from .metrics import DELETION, INSERTION

if TYPE_CHECKING:
    from .result import FaithfulnessResult

_TITLES = {
    DELETION: "deletion: most important tokens removed first (lower is better)",
    INSERTION: "insertion: most important tokens kept first (higher is better)",
}


def plot_curves(result: FaithfulnessResult, path: str | os.PathLike) -> Path:
    """Write the deletion and insertion curves of ``result`` (attribution and random baseline) to a PNG file.

    x: fraction of the step's rankable tokens removed (deletion) or kept (insertion); y: mean probability of the
    generated token over all evaluated tokens. The legend gives each curve's area (the metric).

    Raises:
        ValueError: when the result has no curves (evaluate with ``metrics=[..., "deletion", "insertion"]``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [name for name in (DELETION, INSERTION) if name in result.curves]
    if not curves:
        raise ValueError("The result has no deletion/insertion curves: evaluate with metrics including them.")
    figure = Figure(figsize=(5.2 * len(curves), 3.8))
    FigureCanvasAgg(figure)
    for index, name in enumerate(curves, start=1):
        axes = figure.add_subplot(1, len(curves), index)
        curve = result.curves[name]
        metric = result.metrics[name]
        axes.plot(curve.fractions, curve.attribution, marker="o", label=f"{result.method} (AUC {metric.mean:.3f})")
        if curve.random is not None and metric.random is not None:
            axes.plot(curve.fractions, curve.random, linestyle="--", color="gray",
                      label=f"random baseline (AUC {metric.random.mean:.3f})")  # fmt: skip
        axes.set_xlabel("fraction of tokens " + ("removed" if name == DELETION else "kept"))
        axes.set_ylabel("probability of the generated token")
        axes.set_title(_TITLES[name], fontsize=9)
        axes.set_xlim(0, 1)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)
    figure.suptitle(f"{result.method}: {result.steps} generated token(s), {result.sequences} sequence(s)", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return Path(path)
