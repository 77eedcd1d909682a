"""Base class of the methods built on gradients of the step function (w.r.t. inputs and captured activations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch
from inseq.utils import Registry

from .activation_capture import ActivationCapture
from .base import ExtFeatureAttribution
from .memory_budget import MemoryPlan, is_out_of_memory, parse_memory
from .precision import GradientScale, model_dtype
from .step_gradients import PerStepFallback, SingleForwardGradients, per_step_gradients, supports_single_forward


def check_single_forward(value: Any) -> bool | None:
    """Validate the ``single_forward`` option: ``None`` (automatic), ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"single_forward must be None (automatic), True or False; got {value!r}.")
    return value


class StepGradientAttribution(ExtFeatureAttribution, Registry):
    """Gradient-based method whose steps need ``dF_t / dx`` for the input embeddings (and captured activations).

    With ``single_forward`` left to ``None``, inseq's registered step functions known to read only the logits of
    their step (see :data:`~inseq_ext.attr.step_gradients.SINGLE_FORWARD_STEP_FUNCTIONS`) are served from one
    forward pass over the full sequences; custom step functions get one forward pass per step, exactly as inseq's
    own methods. ``single_forward=True`` forces the fast path and ``False`` the per-step one. Subclasses that also
    need activations return an :class:`ActivationCapture` from :meth:`activation_capture`.

    ``max_memory`` (bytes or a string such as ``"2GB"``; default: a share of the free memory) bounds the single
    forward pass and its vectorized backward passes; out of memory, the method retries with fewer steps per
    backward pass and finally one forward pass per step (:mod:`~inseq_ext.attr.memory_budget`). After each batch,
    :attr:`last_memory_plan` tells how the gradients were computed.
    """

    def __init__(self, attribution_model, **kwargs) -> None:
        super().__init__(attribution_model, **kwargs)
        self.single_forward: SingleForwardGradients | None = None
        self.capture: ActivationCapture | None = None
        self.scale: GradientScale | None = None
        self.last_memory_plan: MemoryPlan | None = None

    def activation_capture(self, attribute_target: bool, attribution_args: dict[str, Any]) -> ActivationCapture | None:
        """Activations to differentiate with respect to, besides the inputs. None by default."""
        return None

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        self.capture = self.activation_capture(attribute_target, attribution_args)
        self.scale = GradientScale(model_dtype(self.attribution_model.model))
        requested = check_single_forward(attribution_args.get("single_forward"))
        use_single_forward = supports_single_forward(attributed_fn) if requested is None else requested
        if use_single_forward:
            self.single_forward = SingleForwardGradients(
                self.attribution_model,
                batch,
                attributed_fn,
                attributed_fn_args,
                steps,
                attribute_target,
                capture=self.capture,
                max_memory=parse_memory(attribution_args.get("max_memory")),
                scale=self.scale,
            )
            self.last_memory_plan = self.single_forward.plan
        else:
            reason = "per-step forward passes (single_forward=False or a custom step function)"
            self.last_memory_plan = MemoryPlan(budget=None, steps_per_backward=0, events=[reason])

    def end_batch(self) -> None:
        if self.single_forward is not None:
            self.single_forward.release()
        self.single_forward = self.capture = self.scale = None

    def step_gradients(
        self, attribute_fn_main_args: dict[str, Any]
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """``(gradients, values)`` of the current step: inputs (source, then target prefix), then activations."""
        if self.single_forward is not None:
            try:
                return self.single_forward.gradients(self.current_step, self.current_rows)
            except PerStepFallback:
                self.single_forward = None  # released by the engine; the plan records why
        try:
            return per_step_gradients(self.attribution_model, attribute_fn_main_args, self.capture, self.scale)
        except Exception as error:
            if is_out_of_memory(error):
                error.add_note(
                    "inseq_ext: out of memory with one forward and one backward pass per step, the least memory "
                    "a gradient method needs; attribute a shorter prompt, fewer sequences per batch, or load the "
                    "model in bfloat16."
                )
            raise
