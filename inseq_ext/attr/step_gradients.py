"""Gradients of inseq's step function for every generation step, with respect to the input embeddings and,
optionally, activations recorded by an :class:`~inseq_ext.attr.activation_capture.ActivationCapture`.

Two ways to get the same numbers:

* :func:`per_step_gradients` runs one forward and one backward per generation step on the prefix, the way
  inseq's own gradient methods (through captum) do.
* :class:`SingleForwardGradients` runs **one** forward pass over the full sequences (prompt and every generated
  token) and serves each step from the retained graph. In a causal decoder the logits at position ``t - 1`` depend
  only on tokens ``< t``, so they equal the logits of a forward pass over the prefix of length ``t``, and so do
  their gradients (which are exactly zero on later positions); an encoder-decoder's decoder is causal in the same
  way. Each step then costs one backward pass instead of a forward and a backward, and the language-model head is
  not re-run over the whole prefix at every step.

How many steps share one vectorized backward pass follows a memory budget, and running out of memory retries with
fewer, then moves to :func:`per_step_gradients` (see :mod:`~inseq_ext.attr.memory_budget`). float16 models get
loss-scaled backward passes (:class:`~inseq_ext.attr.precision.GradientScale`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from inseq.attr.step_functions import STEP_SCORES_MAP
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch

from .activation_capture import ActivationCapture, Side
from .memory_budget import (
    MemoryBudgetExceeded,
    MemoryPlan,
    SavedTensorMeter,
    count_blocks,
    default_memory_budget,
    is_out_of_memory,
    plan_steps_per_backward,
    release_cached_memory,
)
from .precision import GradientScale, model_dtype

#: Registered step functions whose value for a step only reads the logits at that step's position (and, for the
#: contrastive ones, forward passes over other inputs). They may be served from one forward pass over the full
#: sequences. ``mc_dropout_prob_avg`` is not among them: it switches the model to train mode and re-runs it.
SINGLE_FORWARD_STEP_FUNCTIONS = (
    "logit",
    "probability",
    "logprob",
    "entropy",
    "crossentropy",
    "perplexity",
    "contrast_logits",
    "contrast_prob",
    "contrast_logits_diff",
    "contrast_prob_diff",
    "pcxmi",
    "kl_divergence",
    "in_context_pvi",
)


def supports_single_forward(attributed_fn: Callable[..., torch.Tensor]) -> bool:
    """Whether ``attributed_fn`` is one of the registered step functions known to be safe for a single forward."""
    return any(STEP_SCORES_MAP.get(name) is attributed_fn for name in SINGLE_FORWARD_STEP_FUNCTIONS)


def per_step_gradients(
    attribution_model,
    attribute_fn_main_args: dict[str, Any],
    capture: ActivationCapture | None = None,
    scale: GradientScale | None = None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Gradient of the step function w.r.t. each attributed input (and captured activation), from a prefix forward.

    ``attribute_fn_main_args`` are the captum-style arguments inseq builds for a step (``inputs`` and
    ``additional_forward_args``); the model wrapper's ``forward`` returns the step function's value per sequence.
    With a ``scale`` (float16 models), the backward pass runs on the scaled sum and the gradients come back
    unscaled in float32.

    Returns:
        ``(gradients, values)``: one gradient per differentiated tensor and the tensors themselves, inputs first.
    """
    scale = scale or GradientScale(torch.float32)
    inputs = tuple(tensor.detach().requires_grad_(True) for tensor in attribute_fn_main_args["inputs"])
    with torch.enable_grad():
        with capture.recording() if capture is not None else nullcontext():
            scores = attribution_model(*inputs, *attribute_fn_main_args["additional_forward_args"])
        values = inputs + (capture.tensors() if capture is not None else ())
        while True:
            # Sequences of a batch do not interact, so the gradient of the sum is each sequence's own gradient.
            gradients = torch.autograd.grad(
                scores.sum() * scale.value, values, allow_unused=True, retain_graph=scale.active
            )
            if scale.accept(gradients):
                break
    gradients = tuple(
        torch.zeros_like(x) if g is None else scale.unscale(g) for x, g in zip(values, gradients, strict=True)
    )
    return gradients, values


class PerStepFallback(Exception):
    """The single forward pass cannot serve the remaining steps (memory); the caller switches to per-step passes."""


class SingleForwardGradients:
    """Per-step input gradients for a whole batch, all served from a single forward pass.

    The forward pass runs once, on the first request, over the full sequences. When the model accepts
    ``logits_to_keep``, logits are computed only at the positions the planned steps read. Gradients are then
    computed for ``k`` steps at a time with one vectorized backward pass
    (``torch.autograd.grad(..., is_grads_batched=True)``), or one backward per step where a model's backward
    cannot be vectorized, and cached until inseq's loop asks for them.

    ``k`` comes from the memory budget (:func:`~inseq_ext.attr.memory_budget.plan_steps_per_backward`, from the
    saved-tensor size of the forward pass measured while it runs). An out-of-memory error in a backward pass halves
    ``k`` and retries the same steps; at ``k = 1``, or when the forward pass itself outgrows the budget or memory,
    :meth:`gradients` raises :class:`PerStepFallback` after releasing the graph, and the caller serves the
    remaining steps with :func:`per_step_gradients`. :attr:`plan` records the figures and what happened.

    Args:
        attribution_model: inseq's model wrapper.
        batch: The full batch inseq attributes (prompt and generated tokens).
        attributed_fn: The step function being attributed.
        attributed_fn_args: Extra keyword arguments of the step function.
        steps: The generation steps inseq's loop will attribute.
        attribute_target: For encoder-decoders, also differentiate with respect to the target prefix.
        capture: Activations to differentiate with respect to as well, recorded during the single forward pass.
        max_memory: Budget in bytes; ``None``: a share of the memory free now
            (:func:`~inseq_ext.attr.memory_budget.default_memory_budget`).
        steps_per_backward: Fixed upper bound on ``k`` instead of
            :data:`~inseq_ext.attr.memory_budget.MAX_STEPS_PER_BACKWARD` (the budget still applies).
        scale: Loss scale of the backward passes (shared with the caller's per-step fallback); by default one for
            the model's dtype.
    """

    def __init__(
        self,
        attribution_model,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        attributed_fn_args: dict[str, Any],
        steps: range,
        attribute_target: bool = False,
        capture: ActivationCapture | None = None,
        max_memory: int | None = None,
        steps_per_backward: int | None = None,
        scale: GradientScale | None = None,
    ) -> None:
        self.attribution_model = attribution_model
        self.attributed_fn = attributed_fn
        # Kept by reference: inseq's loop adds contrastive alignments to this dict after the batch starts.
        self.attributed_fn_args = attributed_fn_args
        self.steps = steps
        self.max_steps_per_backward = steps_per_backward
        self.batch = batch.clone()
        if attribution_model.is_encoder_decoder:
            source = _leaf(batch.sources.input_embeds, requires_grad=True)
            target = _leaf(batch.targets.input_embeds, requires_grad=attribute_target)
            self.batch.sources.input_embeds, self.batch.targets.input_embeds = source, target
            self.inputs = (source, target) if attribute_target else (source,)
            self.sides: tuple[Side, ...] = ("source", "target")[: len(self.inputs)]
        else:
            target = _leaf(batch.input_embeds, requires_grad=True)
            self.batch.input_embeds = target
            self.inputs = (target,)
            self.sides = ("target",)
        self.device = self.inputs[0].device
        self.plan = MemoryPlan(budget=max_memory if max_memory is not None else default_memory_budget(self.device))
        self.scale = scale or GradientScale(model_dtype(attribution_model.model))
        self.capture = capture
        if capture is not None:
            self.sides += capture.sides
        # The tensors differentiated with respect to: the inputs, then the captured activations.
        self.values: tuple[torch.Tensor, ...] = self.inputs
        self.forward_output = None
        self.first_logit_position = 0
        self.vectorized_backward = True
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}

    def gradients(self, step: int, rows: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Gradients of the step function at generation ``step`` for the sequences ``rows`` of the batch.

        Returns:
            ``(gradients, values)`` as :func:`per_step_gradients` does: restricted to ``rows``, target-side tensors
            cut to the ``step`` prefix tokens, as after a forward pass on the prefix.

        Raises:
            PerStepFallback: memory does not allow serving ``step`` from the single forward pass (the graph is
                released; nothing of this step was produced).
        """
        if step not in self.cache:
            self._compute_from(step)
        gradients = self.cache.pop(step)

        def cut(tensor: torch.Tensor, side: Side) -> torch.Tensor:
            return tensor[rows] if side == "source" else tensor[rows, :step]

        return (
            tuple(self.scale.unscale(cut(grad, side)) for grad, side in zip(gradients, self.sides, strict=True)),
            tuple(cut(value.detach(), side) for value, side in zip(self.values, self.sides, strict=True)),
        )

    def release(self) -> None:
        """Free the retained graph and any cached gradients."""
        self.forward_output = None
        self.inputs = self.values = ()
        self.cache.clear()

    def _fall_back(self, reason: str) -> PerStepFallback:
        self.release()
        if self.capture is not None:
            self.capture.clear()
        release_cached_memory(self.device)
        self.plan.steps_per_backward = 0
        self.plan.events.append(f"{reason}: one forward and backward pass per step from here on")
        return PerStepFallback(reason)

    def _run_forward(self, first_step: int) -> None:
        kwargs = {}
        model = self.attribution_model.model
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            # Only the positions read by the planned steps need logits (step t reads position t - 1).
            self.first_logit_position = min(first_step, self.steps.start) - 1
            last_position = max(self.steps.stop, first_step + 1) - 1
            kwargs["logits_to_keep"] = torch.arange(self.first_logit_position, last_position)
        failure = None
        try:
            with SavedTensorMeter(model, limit=self.plan.budget) as meter:
                with self.capture.recording() if self.capture is not None else nullcontext():
                    self.forward_output = self.attribution_model.get_forward_output(
                        self.batch, use_embeddings=True, **kwargs
                    )
        except MemoryBudgetExceeded as error:
            failure = str(error)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            failure = f"out of memory in the single forward pass ({type(error).__name__})"
        if failure is not None:  # raised outside the except blocks: the failed pass's tensors are gone by now
            raise self._fall_back(failure)
        if self.capture is not None:
            self.values = self.inputs + self.capture.tensors()
        values_bytes = sum(value.nbytes for value in self.values)
        self.plan.graph_bytes = meter.total
        self.plan.per_step_bytes = meter.total // count_blocks(model) + 2 * values_bytes
        steps_left = len([step for step in self.steps if step >= first_step]) or 1
        self.plan.steps_per_backward = plan_steps_per_backward(
            self.plan.budget, meter.total, self.plan.per_step_bytes, steps_left
        )
        if self.max_steps_per_backward is not None:
            self.plan.steps_per_backward = min(self.plan.steps_per_backward, max(1, self.max_steps_per_backward))

    def _step_score_total(self, step: int) -> torch.Tensor:
        """Sum over the batch's unfinished sequences of the step function at ``step``."""
        output = self.forward_output
        position = step - 1 - self.first_logit_position
        # The step function reads the logits at the last position, as after a forward pass on the prefix.
        step_output = type(output)(**{**output, "logits": output.logits[:, position : position + 1]})
        target_ids, active = self.batch.get_step_target(step, with_attention=True)
        step_args = self.attribution_model.formatter.format_step_function_args(
            attribution_model=self.attribution_model,
            forward_output=step_output,
            target_ids=target_ids,
            batch=self.batch[:step],
            is_attributed_fn=True,
        )
        # inseq drops step-function arguments left to None before calling the function; so do we.
        scores = self.attributed_fn(step_args, **{k: v for k, v in self.attributed_fn_args.items() if v is not None})
        # Sequences of a batch do not interact, so the gradient of the sum is each sequence's own gradient.
        return scores.reshape(-1)[active.bool()].sum()

    def _compute_from(self, first_step: int) -> None:
        with torch.enable_grad():
            if self.forward_output is None:
                self._run_forward(first_step)
            while True:
                planned = [step for step in self.steps if step >= first_step][: self.plan.steps_per_backward]
                chunk = planned if planned and planned[0] == first_step else [first_step]
                out_of_memory = None
                try:
                    totals = torch.stack([self._step_score_total(step) for step in chunk])
                    gradients = self._backward(totals * self.scale.value)
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    out_of_memory = type(error).__name__
                if out_of_memory is None and self.scale.accept(gradients):
                    break
                if out_of_memory is None:
                    self.plan.events.append(f"float16 gradients overflowed: loss scale now {self.scale.value:g}")
                    continue
                # Out of memory: the failed attempt's tensors were freed with the exception; retry with fewer steps.
                totals = gradients = None
                release_cached_memory(self.device)
                if len(chunk) == 1:
                    raise self._fall_back(f"{out_of_memory} in a backward pass for one step")
                self.plan.steps_per_backward = len(chunk) // 2
                self.plan.events.append(
                    f"{out_of_memory} in a backward pass for {len(chunk)} steps: retrying with "
                    f"{self.plan.steps_per_backward}"
                )
        for idx, step in enumerate(chunk):
            self.cache[step] = tuple(grad[idx] for grad in gradients)

    def _backward(self, totals: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradients of each entry of ``totals`` w.r.t. every input, stacked on a leading step dimension."""
        if len(totals) > 1 and self.vectorized_backward:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*performance drop.*")
                    gradients = torch.autograd.grad(
                        totals,
                        self.values,
                        grad_outputs=torch.eye(len(totals), dtype=totals.dtype, device=totals.device),
                        retain_graph=True,
                        is_grads_batched=True,
                        allow_unused=True,
                    )
                return tuple(
                    torch.zeros(len(totals), *x.shape, dtype=x.dtype, device=x.device) if g is None else g
                    for x, g in zip(self.values, gradients, strict=True)
                )
            except (RuntimeError, NotImplementedError) as error:
                if is_out_of_memory(error):
                    raise
                # Some backward formulas have no batching rule: one backward pass per step gives the same numbers.
                self.vectorized_backward = False
        per_step = [torch.autograd.grad(total, self.values, retain_graph=True, allow_unused=True) for total in totals]
        return tuple(
            torch.stack([torch.zeros_like(x) if grads[idx] is None else grads[idx] for grads in per_step])
            for idx, x in enumerate(self.values)
        )


def _leaf(tensor: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    return tensor.detach().clone().requires_grad_(requires_grad)
