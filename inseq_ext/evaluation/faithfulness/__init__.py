"""Faithfulness evaluation of attribution maps for generation: which map to trust.

:func:`evaluate_faithfulness` scores any inseq attribution output by removing tokens in order of importance
(comprehensiveness, sufficiency, deletion/insertion curves; DeYoung et al., 2020), by perturbing embeddings in
proportion to importance (Soft-NC/Soft-NS; Zhao & Aletras, 2023) and, given known rationales, by plausibility
(pointing accuracy, token F1, AUPRC), each next to a random baseline with bootstrap confidence intervals.
"""

from .compare import MethodComparison, compare_methods
from .evaluate import DEFAULT_METRICS, evaluate_faithfulness
from .metrics import HIGHER_IS_BETTER, METRICS, PLAUSIBILITY_METRICS
from .ranking import DEFAULT_KS
from .result import CurveResult, FaithfulnessResult, MetricResult
from .scorer import EmbeddingQuery, ProbabilityScorer, TokenQuery
from .statistics import Estimate, bootstrap_estimate

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_METRICS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "PLAUSIBILITY_METRICS",
    "CurveResult",
    "EmbeddingQuery",
    "Estimate",
    "FaithfulnessResult",
    "MethodComparison",
    "MetricResult",
    "ProbabilityScorer",
    "TokenQuery",
    "bootstrap_estimate",
    "compare_methods",
    "evaluate_faithfulness",
]
