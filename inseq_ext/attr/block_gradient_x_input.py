"""``block_gradient_x_input``: gradient x input at the embeddings and at the output of every transformer block."""

from __future__ import annotations

import copy
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
from .memory_budget import parse_memory

LAYER_DIMENSION_NAME = "Layer (0 = embeddings, l = block l-1)"


@dataclass(eq=False, repr=False)
class BlockGradientXInputSequenceOutput(MultiDimensionalFeatureAttributionSequenceOutput):
    r"""Per-sequence output with a trailing layer axis: index 0 is the embeddings, index ``l`` block ``l - 1``.

    Default reduction over layers (used by ``aggregate()`` and ``show()``): ``absmax``, the signed score of largest
    magnitude across depth. The entries of the layer axis are successive estimates of one token's contribution
    carried by the residual stream, not disjoint parts of it, so a sum (or a mean, which is a rescaled sum) counts
    the same influence once per layer; the peak keeps each token's strongest estimate and its sign. Pick one layer
    or a span instead with ``show(select_idx=l)`` / ``show(select_idx=(start, end))``.

    Left out of that default reduction (kept in the raw scores and in ``select_idx`` choices): the output of the last
    block when it only enters a LayerNorm or RMSNorm (pre-norm models: GPT-2, Llama, Mistral, Qwen, GPT-NeoX, Phi,
    and the encoder of T5 and mBART). A norm is invariant to scaling its input, ``norm(c h) = norm(h)`` up to its
    epsilon, so for any step function ``F``

    .. math::
        \sum_d \frac{\partial F}{\partial h[d]} \, h[d]
        = \frac{d}{dc} F(\operatorname{norm}(c \, h)) \Big|_{c=1} = 0 ,

    i.e. gradient x input of that layer is identically zero (Euler's theorem for functions homogeneous of degree 0)
    and says nothing about the token. :attr:`scale_invariant_layers` lists these layer indices per attribution
    field (kept by ``save``/``load``).
    """

    _scale_invariant_layers: dict[str, tuple[int, ...]] | None = None

    @property
    def scale_invariant_layers(self) -> dict[str, tuple[int, ...]]:
        """Per attribution field, the layers left out of the default reduction (their scores are zero)."""
        return {field: tuple(layers) for field, layers in (self._scale_invariant_layers or {}).items()}

    def __json_encode__(self) -> dict[str, Any]:
        # inseq saves public fields only; this one decides the default reduction, so it is saved too.
        encoded = super().__json_encode__()
        if self._scale_invariant_layers:
            encoded["_scale_invariant_layers"] = {k: list(v) for k, v in self._scale_invariant_layers.items()}
        return encoded

    def __json_decode__(self, **attributes: Any) -> None:
        layers = attributes.pop("_scale_invariant_layers", None)
        super().__json_decode__(**attributes)
        self._scale_invariant_layers = {k: tuple(v) for k, v in layers.items()} if layers else None

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
        if aggregator is None and kwargs.get("select_idx") is None and self._scale_invariant_layers:
            return self.without_scale_invariant_layers().aggregate(aggregator, *args, **kwargs)
        return super().aggregate(aggregator, *args, **kwargs)

    def without_scale_invariant_layers(self) -> BlockGradientXInputSequenceOutput:
        """A shallow copy without the layers of :attr:`scale_invariant_layers` on the layer axis."""
        trimmed = copy.copy(self)
        trimmed._scale_invariant_layers = None
        for field, layers in self.scale_invariant_layers.items():
            scores = getattr(self, field, None)
            if not isinstance(scores, torch.Tensor) or scores.ndim < 3:
                continue  # already reduced over layers
            keep = [layer for layer in range(scores.shape[-1]) if layer not in set(layers)]
            setattr(trimmed, field, scores[..., keep])
        return trimmed


@dataclass(eq=False, repr=False)
class BlockGradientXInputStepOutput(MultiDimensionalFeatureAttributionStepOutput):
    """Step output of ``block_gradient_x_input``: ``(batch, tokens, layers)`` tensors."""

    _sequence_cls: type[MultiDimensionalFeatureAttributionSequenceOutput] = BlockGradientXInputSequenceOutput
    _scale_invariant_layers: dict[str, tuple[int, ...]] | None = None

    def get_sequence_cls(self, **kwargs: Any) -> BlockGradientXInputSequenceOutput:
        return BlockGradientXInputSequenceOutput(
            _num_dimensions=self._num_dimensions, _scale_invariant_layers=self._scale_invariant_layers, **kwargs
        )


@dataclass(frozen=True)
class BlockOptions:
    """Options of ``block_gradient_x_input`` (keyword arguments of ``inseq.load_model`` or ``model.attribute``).

    Attributes:
        blocks: Attribute path of the (decoder's) block list, e.g. ``"transformer.h"``; found from the model's
            family when omitted.
        encoder_blocks: Attribute path of the encoder's block list (encoder-decoder models).
        single_forward: As for ``custom_saliency``: ``None`` (automatic), ``True`` or ``False``.
        max_memory: As for ``custom_saliency``: bytes, a string such as ``"2GB"``, or ``None`` (a share of the
            free memory).
    """

    blocks: str | None = None
    encoder_blocks: str | None = None
    single_forward: bool | None = None
    max_memory: int | float | str | None = None

    def __post_init__(self) -> None:
        for name in ("blocks", "encoder_blocks"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be an attribute path such as 'model.layers'; got {value!r}.")
        check_single_forward(self.single_forward)
        parse_memory(self.max_memory)


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
    option_names = tuple(BlockOptions.__dataclass_fields__)

    def __init__(self, attribution_model, blocks: str | None = None, encoder_blocks: str | None = None, **kwargs):
        super().__init__(attribution_model, **kwargs)
        self.default_options = BlockOptions(blocks=blocks, encoder_blocks=encoder_blocks)
        self.layer_counts: tuple[int, int] = (0, 0)
        self.scale_invariant_layers: dict[str, tuple[int, ...]] = {}

    def options(self, args: dict[str, Any]) -> BlockOptions:
        names = BlockOptions.__dataclass_fields__
        return BlockOptions(**{**self.default_options.__dict__, **{k: v for k, v in args.items() if k in names}})

    def get_attribution_args(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``model.attribute`` keyword arguments into this method's options (validated) and the rest."""
        ours = {name: value for name, value in kwargs.items() if name in self.option_names}
        find_block_stacks(self.attribution_model.model, self.attribution_model.is_encoder_decoder, self.options(ours))
        return ours, {name: value for name, value in kwargs.items() if name not in ours}

    def activation_capture(self, attribute_target: bool, attribution_args: dict[str, Any]) -> ActivationCapture:
        is_encoder_decoder = self.attribution_model.is_encoder_decoder
        stacks = find_block_stacks(self.attribution_model.model, is_encoder_decoder, self.options(attribution_args))
        source_blocks = list(stacks.encoder) if is_encoder_decoder else []
        target_blocks = list(stacks.decoder) if attribute_target or not is_encoder_decoder else []
        self.layer_counts = (len(source_blocks), len(target_blocks))
        self.scale_invariant_layers = self.layers_before_final_norm(attribution_args, bool(target_blocks))
        sides = ["source"] * len(source_blocks) + ["target"] * len(target_blocks)
        return ActivationCapture(self.hooks, source_blocks + target_blocks, sides)

    def layers_before_final_norm(
        self, attribution_args: dict[str, Any], has_target: bool
    ) -> dict[str, tuple[int, ...]]:
        """Per attribution field, the layer index of the last block when it only enters a LayerNorm/RMSNorm.

        Only for the block stacks found by the family's adapter (named ``blocks=`` may end anywhere). The layer
        axis is ``[embeddings, block 0, ..., block n-1]``, so the last block is index ``n``.
        """
        model, is_encoder_decoder = self.attribution_model.model, self.attribution_model.is_encoder_decoder
        options = self.options(attribution_args)
        try:
            adapter = get_adapter(model)
        except ValueError:
            return {}
        layers: dict[str, tuple[int, ...]] = {}
        n_source, n_target = self.layer_counts
        if is_encoder_decoder and options.encoder_blocks is None:
            if adapter.last_block_feeds_scale_invariant_norm(model, encoder=True):
                layers["source_attributions"] = (n_source,)
        if has_target and options.blocks is None and adapter.last_block_feeds_scale_invariant_norm(model):
            layers["target_attributions"] = (n_target,)
        return layers

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
            source_attributions=source,
            target_attributions=target,
            step_scores={},
            _num_dimensions=1,
            _scale_invariant_layers=self.scale_invariant_layers or None,
        )
