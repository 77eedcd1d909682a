"""inseq_ext: extra feature-attribution methods for generative language models, registered in inseq.

``import inseq_ext`` adds the package's methods to inseq's registry, so that ``inseq.load_model(model,
"custom_saliency")`` (or ``"rotary_attention"``, ...) and ``model.attribute(..., method="custom_saliency")`` work
in any inseq workflow.
"""

from .attr import (
    BlockGradientXInputAttribution,
    CustomSaliencyAttribution,
    RotaryAttentionAttribution,
    SaliencyOptions,
    capture_queries_keys,
    normalized_saliency,
)
from .step_functions import register_step_functions

register_step_functions()

__version__ = "0.1.0"

__all__ = [
    "BlockGradientXInputAttribution",
    "CustomSaliencyAttribution",
    "RotaryAttentionAttribution",
    "SaliencyOptions",
    "capture_queries_keys",
    "normalized_saliency",
    "__version__",
]
