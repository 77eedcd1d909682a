"""``custom_saliency``: normalized gradient saliency, one score per input token."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from inseq.attr.feat.attribution_utils import get_source_target_attributions
from inseq.data import CoarseFeatureAttributionStepOutput

from .gradient_attribution import StepGradientAttribution, check_single_forward
from .memory_budget import parse_memory

#: Vector norms over the embedding dimension, by name.
NORMS: dict[str, float] = {"l2": 2.0, "l1": 1.0, "linf": math.inf}
#: Per-step normalizations, by name (``None``: raw magnitudes).
NORMALIZATIONS: tuple[str | None, ...] = ("sum", "max", None)


@dataclass(frozen=True)
class SaliencyOptions:
    """Options of ``custom_saliency``, passed as keyword arguments of ``model.attribute(...)``.

    Attributes:
        norm: Vector norm of the gradient over the embedding dimension: ``"l2"`` (default), ``"l1"`` or ``"linf"``.
        normalize: ``"sum"`` (default): the scores of each generated token sum to 1 over the attributed tokens;
            ``"max"``: the largest is 1; ``None``: raw magnitudes. ``True``/``False`` are read as ``"sum"``/``None``.
        single_forward: ``None`` (default): serve all steps from one forward pass when the step function allows
            it; ``True``/``False``: force that path on or off.
        max_memory: Memory budget of the single forward pass and its backward passes: bytes or a string such as
            ``"2GB"``; ``None`` (default): a share of the free memory (see :mod:`inseq_ext.attr.memory_budget`).
    """

    norm: str = "l2"
    normalize: str | None = "sum"
    single_forward: bool | None = None
    max_memory: int | float | str | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            choices = ", ".join(repr(n) for n in NORMS)
            raise ValueError(f"Unknown norm {self.norm!r} for custom_saliency; valid choices: {choices}.")
        if isinstance(self.normalize, bool):
            object.__setattr__(self, "normalize", "sum" if self.normalize else None)
        if self.normalize not in NORMALIZATIONS:
            choices = ", ".join(repr(n) for n in NORMALIZATIONS)
            raise ValueError(f"Unknown normalize {self.normalize!r} for custom_saliency; valid choices: {choices}.")
        check_single_forward(self.single_forward)
        parse_memory(self.max_memory)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> SaliencyOptions:
        return cls(**{name: args[name] for name in cls.__dataclass_fields__ if name in args})


def normalized_saliency(
    gradients: tuple[torch.Tensor, ...], norm: str = "l2", normalize: str | None = "sum"
) -> tuple[torch.Tensor, ...]:
    r"""Per-token saliency from input gradients (Simonyan et al., 2014, https://arxiv.org/abs/1312.6034).

    For generated token :math:`t` with step function :math:`F_t` and input embeddings :math:`e_i`:

    .. math::
        s_{i,t} = \left\lVert \frac{\partial F_t}{\partial e_i} \right\rVert_p, \qquad
        \hat s_{i,t} = \frac{s_{i,t}}{\sum_j s_{j,t}} \ (\text{sum}) \quad\text{or}\quad
        \frac{s_{i,t}}{\max_j s_{j,t}} \ (\text{max}),

    where :math:`j` runs over every attributed token (source tokens and, when attributed, the target prefix).
    As in :func:`torch.nn.functional.normalize`, the denominator is at least ``1e-12``.

    Args:
        gradients: One tensor per attributed input, each ``(batch, tokens, hidden)``.
        norm: ``"l2"``, ``"l1"`` or ``"linf"``.
        normalize: ``"sum"``, ``"max"`` or ``None``.

    Returns:
        One ``(batch, tokens)`` tensor per input.
    """
    magnitudes = tuple(torch.linalg.vector_norm(grad.float(), ord=NORMS[norm], dim=-1) for grad in gradients)
    if normalize is None:
        return magnitudes
    joint = torch.cat(magnitudes, dim=1)
    scale = joint.sum(dim=1, keepdim=True) if normalize == "sum" else joint.amax(dim=1, keepdim=True)
    scale = scale.clamp_min(1e-12)
    return tuple(magnitude / scale for magnitude in magnitudes)


class CustomSaliencyAttribution(StepGradientAttribution):
    """Normalized gradient saliency: one score per input token for every generated token.

    The gradient of inseq's step function (``attributed_fn``: probability by default, or ``"logit"``,
    ``"logprob"``, a contrastive function, ...) with respect to each input embedding is reduced to its norm and
    normalized per generated token (:func:`normalized_saliency`). With the defaults (``norm="l2"``,
    ``normalize="sum"``) the result equals inseq's ``saliency`` after its default aggregation.

    Options (keyword arguments of ``model.attribute``): see :class:`SaliencyOptions`.
    """

    method_name = "custom_saliency"
    option_names = tuple(SaliencyOptions.__dataclass_fields__)

    def get_attribution_args(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``model.attribute`` keyword arguments into this method's options (validated) and the rest."""
        ours = {name: value for name, value in kwargs.items() if name in SaliencyOptions.__dataclass_fields__}
        SaliencyOptions(**ours)
        return ours, {name: value for name, value in kwargs.items() if name not in ours}

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}
    ) -> CoarseFeatureAttributionStepOutput:
        options = SaliencyOptions.from_args(attribution_args)
        gradients, _ = self.step_gradients(attribute_fn_main_args)
        scores = normalized_saliency(gradients, options.norm, options.normalize)
        source, target = get_source_target_attributions(scores, self.attribution_model.is_encoder_decoder)
        return CoarseFeatureAttributionStepOutput(
            source_attributions=source, target_attributions=target, step_scores={}
        )
