"""``block_gradient_x_input``: gradient x input at the embeddings and at the output of every transformer block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from inseq.data.attribution import (
    MultiDimensionalFeatureAttributionSequenceOutput,
    MultiDimensionalFeatureAttributionStepOutput,
)

from ..adapters import BlockStacks, get_adapter, resolve_module_list
from .activation_capture import ActivationCapture
from .gradient_attribution import StepGradientAttribution, check_single_forward

LAYER_DIMENSION_NAME = "Layer (0 = embeddings, l = block l-1)"


@dataclass(eq=False, repr=False)
class BlockGradientXInputSequenceOutput(MultiDimensionalFeatureAttributionSequenceOutput):
    """Per-sequence output with a trailing layer axis: index 0 is the embeddings, index ``l`` block ``l - 1``.

    Default reduction over layers (used by ``aggregate()`` and ``show()``): ``absmax``, the signed score of largest
    magnitude across depth. The entries of the layer axis are successive estimates of one token's contribution
    carried by the residual stream, not disjoint parts of it, so a sum (or a mean, which is a rescaled sum) counts
    the same influence once per layer; the peak keeps each token's strongest estimate and its sign. Pick one layer
    or a span instead with ``show(select_idx=l)`` / ``show(select_idx=(start, end))``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._aggregator = ["absmax"] * self._num_dimensions
        for field in ("source_attributions", "target_attributions"):
            self._attribution_dim_names[field] = {0: "Input Tokens", 1: "Generated Tokens", 2: LAYER_DIMENSION_NAME}

    def aggregate(self, aggregator=None, *args: Any, **kwargs: Any):
        if aggregator is None and not self._aggregator:
            # inseq's save() does not store private fields: after load() the layer axis is recovered from the data.
            scores = self.source_attributions if self.source_attributions is not None else self.target_attributions
            self._num_dimensions = scores.ndim - 2 if isinstance(scores, torch.Tensor) else 0
            self._aggregator = ["absmax"] * self._num_dimensions
        return super().aggregate(aggregator, *args, **kwargs)


@dataclass(eq=False, repr=False)
class BlockGradientXInputStepOutput(MultiDimensionalFeatureAttributionStepOutput):
    """Step output of ``block_gradient_x_input``: ``(batch, tokens, layers)`` tensors."""

    _sequence_cls: type[MultiDimensionalFeatureAttributionSequenceOutput] = BlockGradientXInputSequenceOutput

    def get_sequence_cls(self, **kwargs: Any) -> BlockGradientXInputSequenceOutput:
        return BlockGradientXInputSequenceOutput(_num_dimensions=self._num_dimensions, **kwargs)


@dataclass(frozen=True)
class BlockOptions:
    """Options of ``block_gradient_x_input`` (keyword arguments of ``inseq.load_model`` or ``model.attribute``).

    Attributes:
        blocks: Attribute path of the (decoder's) block list, e.g. ``"transformer.h"``; found from the model's
            family when omitted.
        encoder_blocks: Attribute path of the encoder's block list (encoder-decoder models).
        single_forward: As for ``custom_saliency``: ``None`` (automatic), ``True`` or ``False``.
    """

    blocks: str | None = None
    encoder_blocks: str | None = None
    single_forward: bool | None = None

    def __post_init__(self) -> None:
        for name in ("blocks", "encoder_blocks"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be an attribute path such as 'model.layers'; got {value!r}.")
        check_single_forward(self.single_forward)


def find_block_stacks(model: torch.nn.Module, is_encoder_decoder: bool, options: BlockOptions) -> BlockStacks:
    """The model's block lists: from ``options`` where named, else from the model family's adapter."""
    if options.blocks is not None and (options.encoder_blocks is not None or not is_encoder_decoder):
        encoder = resolve_module_list(model, options.encoder_blocks) if options.encoder_blocks else None
        return BlockStacks(encoder=encoder, decoder=resolve_module_list(model, options.blocks))
    try:
        stacks = get_adapter(model).block_stacks(model)
    except ValueError as error:
        names = "blocks='path.to.blocks'" + (
            " and encoder_blocks='path.to.encoder.blocks'" if is_encoder_decoder else ""
        )
        raise ValueError(f"{error} For block_gradient_x_input you can also pass {names}.") from None
    return BlockStacks(
        encoder=resolve_module_list(model, options.encoder_blocks) if options.encoder_blocks else stacks.encoder,
        decoder=resolve_module_list(model, options.blocks) if options.blocks else stacks.decoder,
    )


class BlockGradientXInputAttribution(StepGradientAttribution):
    r"""Gradient x input at the embeddings and at the output of every transformer block.

    For generated token :math:`t`, attributed token :math:`i` and layer :math:`l` (``0``: the embeddings;
    ``l >= 1``: the hidden state :math:`h_l` leaving block ``l - 1``), with :math:`F_t` the step function inseq
    attributes (Shrikumar et al., 2016, https://arxiv.org/abs/1605.01713, applied per layer as in captum's
    ``LayerGradientXActivation``):

    .. math::
        a_{i,t,l} = \sum_d \frac{\partial F_t}{\partial h_l[i, d]} \, h_l[i, d]

    Source tokens of encoder-decoders use the encoder's blocks, target-prefix tokens the decoder's. All layers come
    from one forward pass and one backward pass per step: hooks record every block's output and the gradient is
    taken with respect to all of them at once (with ``single_forward``, one forward pass serves every step).
    Output: inseq's multi-dimensional step output with a trailing layer axis; see
    :class:`BlockGradientXInputSequenceOutput` for the default reduction over layers.
    """

    method_name = "block_gradient_x_input"

    def __init__(self, attribution_model, blocks: str | None = None, encoder_blocks: str | None = None, **kwargs):
        super().__init__(attribution_model, **kwargs)
        self.default_options = BlockOptions(blocks=blocks, encoder_blocks=encoder_blocks)
        self.layer_counts: tuple[int, int] = (0, 0)

    def options(self, args: dict[str, Any]) -> BlockOptions:
        names = BlockOptions.__dataclass_fields__
        return BlockOptions(**{**self.default_options.__dict__, **{k: v for k, v in args.items() if k in names}})

    def get_attribution_args(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``model.attribute`` keyword arguments into this method's options (validated) and the rest."""
        ours = {name: value for name, value in kwargs.items() if name in BlockOptions.__dataclass_fields__}
        find_block_stacks(self.attribution_model.model, self.attribution_model.is_encoder_decoder, self.options(ours))
        return ours, {name: value for name, value in kwargs.items() if name not in ours}

    def activation_capture(self, attribute_target: bool, attribution_args: dict[str, Any]) -> ActivationCapture:
        is_encoder_decoder = self.attribution_model.is_encoder_decoder
        stacks = find_block_stacks(self.attribution_model.model, is_encoder_decoder, self.options(attribution_args))
        source_blocks = list(stacks.encoder) if is_encoder_decoder else []
        target_blocks = list(stacks.decoder) if attribute_target or not is_encoder_decoder else []
        self.layer_counts = (len(source_blocks), len(target_blocks))
        sides = ["source"] * len(source_blocks) + ["target"] * len(target_blocks)
        return ActivationCapture(self.hooks, source_blocks + target_blocks, sides)

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}
    ) -> BlockGradientXInputStepOutput:
        gradients, values = self.step_gradients(attribute_fn_main_args)
        # On the embeddings' device: the blocks of a model dispatched by accelerate may sit on other devices.
        device = values[0].device
        products = [
            (grad.float() * value.float()).sum(-1).to(device) for grad, value in zip(gradients, values, strict=True)
        ]
        n_inputs = len(attribute_fn_main_args["inputs"])
        embeddings, blocks = products[:n_inputs], products[n_inputs:]
        n_source_blocks = self.layer_counts[0]
        source = target = None
        if self.attribution_model.is_encoder_decoder:
            source = torch.stack([embeddings[0], *blocks[:n_source_blocks]], dim=-1)
            if n_inputs > 1:
                target = torch.stack([embeddings[1], *blocks[n_source_blocks:]], dim=-1)
        else:
            target = torch.stack([embeddings[0], *blocks], dim=-1)
        return BlockGradientXInputStepOutput(
            source_attributions=source, target_attributions=target, step_scores={}, _num_dimensions=1
        )
