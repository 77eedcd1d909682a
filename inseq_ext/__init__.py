"""inseq_ext: extra feature-attribution methods for generative language models, registered in inseq.

``import inseq_ext`` adds the package's methods to inseq's registry, so that ``inseq.load_model(model,
"custom_saliency")`` and ``model.attribute(..., method="custom_saliency")`` work in any inseq workflow.
``inseq_ext.demo_model("gpt2")`` is the local folder of a small trained demo model that loads with no network.
"""

from .attr import BlockGradientXInputAttribution, CustomSaliencyAttribution, SaliencyOptions, normalized_saliency
from .demo_models import DEMO_MODEL_NAMES, demo_model
from .step_functions import register_step_functions

register_step_functions()

__version__ = "0.1.0"

__all__ = [
    "BlockGradientXInputAttribution",
    "CustomSaliencyAttribution",
    "DEMO_MODEL_NAMES",
    "SaliencyOptions",
    "demo_model",
    "normalized_saliency",
    "__version__",
]
