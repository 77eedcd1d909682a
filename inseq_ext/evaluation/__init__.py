"""How far to trust an attribution: faithfulness metrics for any attribution output (``evaluate_faithfulness``),
ground truth on the demo models (probe hit rates, translation alignment) and comparison with a language model's own
explanation."""

from .explanations import compare_with_attribution, parse_explanation
from .faithfulness import FaithfulnessResult, MethodComparison, compare_methods, evaluate_faithfulness
from .ground_truth import evaluate as evaluate_ground_truth
from .hit_rates import GroundTruthResult, markdown_table

__all__ = [
    "FaithfulnessResult",
    "GroundTruthResult",
    "MethodComparison",
    "compare_methods",
    "compare_with_attribution",
    "evaluate_faithfulness",
    "evaluate_ground_truth",
    "markdown_table",
    "parse_explanation",
]
