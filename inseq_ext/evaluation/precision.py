"""How close a low-precision (bfloat16 / float16) model's attribution maps are to its float32 copy's.

The maps are compared column by column (one column per generated token): the share of columns whose top-1
attributed token (largest absolute score of the default aggregation, i.e. what ``out.show()`` shows) is the same,
and the largest absolute difference of any raw score (every layer and head for the multi-dimensional methods: the
default aggregation of ``block_gradient_x_input``, the signed score of largest magnitude across layers, can jump
between two layers of similar magnitude and opposite sign, which says nothing about precision). Both models see the
same forced targets, so the columns correspond one to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import inseq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class MapAgreement:
    """Agreement of two sets of attribution maps over the same generated tokens.

    Attributes:
        columns: Generated tokens compared.
        same_top1: Columns whose top-1 attributed token (by absolute score) is the same in both.
        max_abs_difference: Largest absolute difference of any raw (unaggregated) score.
        max_abs_reference: Largest absolute raw score of the reference (the scale of the difference).
    """

    columns: int
    same_top1: int
    max_abs_difference: float
    max_abs_reference: float

    @property
    def top1_rate(self) -> float:
        return self.same_top1 / self.columns if self.columns else float("nan")

    def __add__(self, other: MapAgreement) -> MapAgreement:
        return MapAgreement(
            self.columns + other.columns,
            self.same_top1 + other.same_top1,
            max(self.max_abs_difference, other.max_abs_difference),
            max(self.max_abs_reference, other.max_abs_reference),
        )


def compare_maps(reference, other) -> MapAgreement:
    """Compare two inseq outputs of the same inputs and forced targets (raw scores and default aggregation)."""
    worst = scale = 0.0
    for ref_seq, other_seq in zip(reference.sequence_attributions, other.sequence_attributions, strict=True):
        ref_raw, other_raw = _joined(ref_seq), _joined(other_seq)
        if ref_raw.shape != other_raw.shape:
            raise ValueError(f"maps of different shapes: {tuple(ref_raw.shape)} and {tuple(other_raw.shape)}")
        worst = max(worst, (ref_raw - other_raw).nan_to_num().abs().max().item())
        scale = max(scale, ref_raw.nan_to_num().abs().max().item())
    reference, other = reference.aggregate(), other.aggregate()
    columns = same = 0
    for ref_seq, other_seq in zip(reference.sequence_attributions, other.sequence_attributions, strict=True):
        ref_map, other_map = _joined(ref_seq), _joined(other_seq)
        for column in range(ref_map.shape[1]):
            ref_column, other_column = ref_map[:, column].abs(), other_map[:, column].abs()
            # NaN marks tokens that are not attributable at this step (later positions, padding).
            ref_top = ref_column.nan_to_num(float("-inf")).argmax()
            other_top = other_column.nan_to_num(float("-inf")).argmax()
            columns += 1
            same += int(ref_top == other_top)
    return MapAgreement(columns, same, worst, scale)


def _joined(sequence_output) -> torch.Tensor:
    """Source and target scores of one sequence, stacked along the attributed-token axis, in float32."""
    parts = [sequence_output.source_attributions, sequence_output.target_attributions]
    return torch.cat([part.float() for part in parts if part is not None], dim=0)


def low_precision_agreement(
    model_path: str,
    method: str,
    prompts: Sequence[str],
    targets: Sequence[str],
    dtype: torch.dtype = torch.bfloat16,
    **attribute_args: Any,
) -> MapAgreement:
    """Attribute ``targets`` (forced) with a ``dtype`` copy and a float32 copy of a causal LM, and compare the maps.

    Args:
        model_path: A local model folder (e.g. ``inseq_ext.demo_model("llama")``) or a cached hub name.
        method: An inseq method name (``"custom_saliency"``, ``"block_gradient_x_input"``, ...).
        prompts: Input texts.
        targets: Forced generations, each starting with its prompt.
        dtype: The low-precision dtype (``torch.bfloat16`` or ``torch.float16``).
        **attribute_args: Further keyword arguments of ``model.attribute``.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    outputs = []
    for model_dtype in (torch.float32, dtype):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=model_dtype)
        wrapper = inseq.load_model(model, method, tokenizer=tokenizer)
        outputs.append(wrapper.attribute(list(prompts), list(targets), show_progress=False, **attribute_args))
    return compare_maps(*outputs)
