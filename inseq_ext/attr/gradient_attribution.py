"""Base class of the methods built on gradients of the step function with respect to the input embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch
from inseq.utils import Registry

from .base import ExtFeatureAttribution
from .step_gradients import SingleForwardGradients, per_step_input_gradients, supports_single_forward


def check_single_forward(value: Any) -> bool | None:
    """Validate the ``single_forward`` option: ``None`` (automatic), ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"single_forward must be None (automatic), True or False; got {value!r}.")
    return value


class InputGradientAttribution(ExtFeatureAttribution, Registry):
    """Gradient-based method whose steps need ``dF_t / d embeddings`` for every attributed input.

    With ``single_forward`` left to ``None``, inseq's registered step functions known to read only the logits of
    their step (see :data:`~inseq_ext.attr.step_gradients.SINGLE_FORWARD_STEP_FUNCTIONS`) are served from one
    forward pass over the full sequences; custom step functions get one forward pass per step, exactly as inseq's
    own methods. ``single_forward=True`` forces the fast path and ``False`` the per-step one.
    """

    def __init__(self, attribution_model, **kwargs) -> None:
        super().__init__(attribution_model, **kwargs)
        self.single_forward: SingleForwardGradients | None = None

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        requested = check_single_forward(attribution_args.get("single_forward"))
        use_single_forward = supports_single_forward(attributed_fn) if requested is None else requested
        if use_single_forward:
            self.single_forward = SingleForwardGradients(
                self.attribution_model, batch, attributed_fn, attributed_fn_args, steps, attribute_target
            )

    def end_batch(self) -> None:
        if self.single_forward is not None:
            self.single_forward.release()
        self.single_forward = None

    def input_gradients(self, attribute_fn_main_args: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Gradients of the current step's function w.r.t. each attributed input (source, then target prefix)."""
        if self.single_forward is not None:
            return self.single_forward.gradients(self.current_step, self.current_rows)
        return per_step_input_gradients(self.attribution_model, attribute_fn_main_args)
