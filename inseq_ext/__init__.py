"""inseq_ext: extra feature-attribution methods for generative language models, registered in inseq.

``import inseq_ext`` adds the package's methods to inseq's registry, so that ``inseq.load_model(model,
"custom_saliency")`` (or ``"rotary_attention"``, ...) and ``model.attribute(..., method="custom_saliency")`` work
in any inseq workflow. It also registers the NaN-aware ``"nansum"``/``"nanmean"`` aggregation functions used for
word/sentence granularity. ``inseq_ext.demo_model("gpt2")`` is the local folder of a small trained demo model that
loads with no network. It also installs :mod:`inseq_ext.inseq_compat` (prompts of BOS-adding tokenizers such as
Llama's, and a length check before generating) for every inseq method.
"""

from .attr import (
    AttentionRolloutAttribution,
    AttnLrpAttribution,
    BlockGradientXInputAttribution,
    CustomSaliencyAttribution,
    RotaryAttentionAttribution,
    SaliencyOptions,
    capture_queries_keys,
    normalized_saliency,
)
from .chat import attribute_chat
from .dataset_runs import attribute_dataset, load_dataset_attributions
from .demo_models import DEMO_MODEL_NAMES, demo_model
from .generation_length import check_generation_length, context_limit
from .inseq_compat import install_inseq_compat
from .moved_modules import install_moved_module_finder
from .step_functions import register_step_functions
from .views import aggregate_granularity, explore, score_of, span_attribution, write_explorer

register_step_functions()
install_moved_module_finder()
install_inseq_compat()

__version__ = "0.1.0"

__all__ = [
    "AttentionRolloutAttribution",
    "DEMO_MODEL_NAMES",
    "AttnLrpAttribution",
    "BlockGradientXInputAttribution",
    "CustomSaliencyAttribution",
    "RotaryAttentionAttribution",
    "SaliencyOptions",
    "aggregate_granularity",
    "attribute_chat",
    "attribute_dataset",
    "capture_queries_keys",
    "check_generation_length",
    "context_limit",
    "demo_model",
    "explore",
    "load_dataset_attributions",
    "normalized_saliency",
    "score_of",
    "span_attribution",
    "write_explorer",
    "__version__",
]
