"""inseq's step scores (``step_scores=["probability", ...]``) served from a forward pass a method has already run.

inseq computes the step scores of step ``t`` from a forward pass over the prefix of length ``t`` and the logits at its
last position. In a causal decoder these logits equal the ones at position ``t - 1`` of a single pass over the full
sequences, so the methods that run such a pass anyway (:class:`~inseq_ext.attr.attention_pass.AttentionPass`) serve
step scores at no extra forward pass: the registered step function is called exactly as inseq calls it (same
arguments, built by inseq's own formatter, on the same unfinished sequences), only its ``forward_output`` comes from
that pass. Step functions that do more than read their step's logits (``mc_dropout_prob_avg``, custom ones) are left
to inseq, which runs its usual forward pass per step for them.
"""

from __future__ import annotations

from typing import Any

import torch
from inseq.attr.step_functions import get_step_scores, get_step_scores_args
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch
from transformers.utils import ModelOutput

from .step_gradients import SINGLE_FORWARD_STEP_FUNCTIONS


def split_step_scores(names: list[str]) -> tuple[list[str], list[str]]:
    """``(served from the pass, left to inseq)``: registered step functions that only read their step's logits
    (:data:`~inseq_ext.attr.step_gradients.SINGLE_FORWARD_STEP_FUNCTIONS`), and the others."""
    served = [name for name in names if name in SINGLE_FORWARD_STEP_FUNCTIONS]
    return served, [name for name in names if name not in served]


def step_scores_from_output(
    attribution_model,
    forward_output: ModelOutput,
    batch: DecoderOnlyBatch | EncoderDecoderBatch,
    target_ids: torch.Tensor,
    names: list[str],
    step_scores_args: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """The step scores ``names`` of one step, as inseq's ``filtered_attribute_step`` computes them.

    Args:
        attribution_model: inseq's model wrapper.
        forward_output: Model output whose ``logits[:, -1]`` are the step's logits, one row per sequence of ``batch``.
        batch: The step's prefix batch (``batch[:step]``), restricted to the unfinished sequences.
        target_ids: ``(sequences, 1)`` ids of the step's target tokens for those sequences.
        names: Registered step function names.
        step_scores_args: Extra arguments of the step functions (inseq's ``step_scores_args``).

    Returns:
        ``name -> (sequences,)`` scores on the CPU.
    """
    # inseq squeezes the ids to (sequences,), but a single sequence to a scalar, on which its ``crossentropy`` and
    # ``perplexity`` fail ("Expected input batch_size (1) to match target batch_size (0)"); one id per sequence here.
    target_ids = target_ids.reshape(-1)
    args = attribution_model.formatter.format_step_function_args(
        attribution_model=attribution_model,
        forward_output=forward_output,
        target_ids=target_ids,
        is_attributed_fn=False,
        batch=batch,
    )
    return {
        name: get_step_scores(name, args, get_step_scores_args([name], step_scores_args)).to("cpu") for name in names
    }
