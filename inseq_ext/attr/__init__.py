"""Attribution methods of inseq_ext, registered in inseq's method registry on import."""

from .attention_pass import AttentionPass
from .attention_rollout import AttentionRolloutAttribution
from .attnlrp import AttnLrpAttribution
from .base import ExtFeatureAttribution
from .block_gradient_x_input import BlockGradientXInputAttribution, BlockGradientXInputSequenceOutput
from .custom_saliency import CustomSaliencyAttribution, SaliencyOptions, normalized_saliency
from .gradient_attribution import StepGradientAttribution
from .memory_budget import MemoryPlan, parse_memory
from .model_state import HookSet, ModelSnapshot, preserved_model_state
from .query_key_attribution import QueryKeyAttribution
from .query_key_capture import QueryKeyCapture, capture_queries_keys, rebuild_attention
from .rotary_attention import RotaryAttentionAttribution

__all__ = [
    "AttnLrpAttribution",
    "AttentionRolloutAttribution",
    "AttentionPass",
    "BlockGradientXInputAttribution",
    "BlockGradientXInputSequenceOutput",
    "CustomSaliencyAttribution",
    "ExtFeatureAttribution",
    "HookSet",
    "MemoryPlan",
    "StepGradientAttribution",
    "ModelSnapshot",
    "SaliencyOptions",
    "normalized_saliency",
    "parse_memory",
    "preserved_model_state",
    "QueryKeyAttribution",
    "QueryKeyCapture",
    "RotaryAttentionAttribution",
    "capture_queries_keys",
    "rebuild_attention",
]
