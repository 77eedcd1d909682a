"""Step functions this package adds to inseq's registry."""

from __future__ import annotations

import torch
from inseq import register_step_function
from inseq.attr.step_functions import STEP_SCORES_MAP, StepFunctionArgs, probability_fn


def logprob_fn(args: StepFunctionArgs) -> torch.Tensor:
    """Log-probability of the target token: ``log softmax(logits)[target]`` at the current step."""
    return probability_fn(args, logprob=True)


def register_step_functions() -> None:
    """Add ``logprob`` to inseq's step functions (usable as ``attributed_fn`` and in ``step_scores``)."""
    if "logprob" not in STEP_SCORES_MAP:
        register_step_function(logprob_fn, "logprob")
