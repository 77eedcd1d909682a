"""How far to trust an attribution: ground truth on the demo models (probe hit rates, translation alignment) and
comparison with a language model's own explanation."""

from .explanations import compare_with_attribution, parse_explanation
from .ground_truth import evaluate as evaluate_ground_truth
from .hit_rates import GroundTruthResult, markdown_table

__all__ = [
    "GroundTruthResult",
    "compare_with_attribution",
    "evaluate_ground_truth",
    "markdown_table",
    "parse_explanation",
]
