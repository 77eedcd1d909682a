r"""``attnlrp``: attention-aware layer-wise relevance propagation, one signed relevance per input token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inseq.attr.feat.attribution_utils import get_source_target_attributions
from inseq.data import CoarseFeatureAttributionStepOutput, DecoderOnlyBatch, EncoderDecoderBatch

from .attnlrp_rules import install_attnlrp_rules, relevance_spec
from .gradient_attribution import StepGradientAttribution, check_single_forward


@dataclass(frozen=True)
class AttnLrpOptions:
    """Options of ``attnlrp`` (keyword arguments of ``model.attribute``).

    Attributes:
        single_forward: As for ``custom_saliency``: ``None`` (default) serves all steps from one forward pass when
            the step function allows it; ``True``/``False`` force that path on or off.
    """

    single_forward: bool | None = None

    def __post_init__(self) -> None:
        check_single_forward(self.single_forward)


class AttnLrpAttribution(StepGradientAttribution):
    r"""AttnLRP (Achtibat et al., ICML 2024, https://arxiv.org/abs/2402.05602): relevance of every input token.

    For generated token :math:`t` with step function :math:`F_t` (inseq's ``attributed_fn``) and input embedding
    :math:`e_i`, the relevance is gradient x input summed over the hidden size, with the gradient taken through a
    backward pass whose rules are AttnLRP's (the efficient gradient x input formulation of the authors'
    implementation lxt, described by Arras et al., 2025, arXiv:2502.15886):

    .. math::
        R_{i,t} = \sum_d e_i[d] \, \widetilde{\partial}_{e_i[d]} F_t

    where :math:`\widetilde{\partial}` is the gradient with these rules (forward values are the model's own):

    * **Linear layers** (projections, LM head, rotary embedding, scaling, residual sums): ε-rule with
      :math:`\epsilon \to 0`, :math:`R(x_i) = \sum_j x_i W_{ji} R(z_j) / z_j`, which is exactly gradient x input
      (Ancona et al., ICLR 2018): unmodified gradients. Biases keep their share :math:`b_j R(z_j) / z_j`.
    * **Normalization layers** (RMSNorm, LayerNorm): identity rule; the statistic :math:`r = (\overline{x^2} +
      \epsilon)^{-1/2}` or :math:`(\operatorname{var} x + \epsilon)^{-1/2}` is a constant in the backward pass
      (:class:`~inseq_ext.attr.attnlrp_rules.NormalizationRule`): RMSNorm passes :math:`R(x_i) = R(y_i)`,
      LayerNorm's mean subtraction is linear and its bias keeps its share.
    * **Element-wise activations** (SiLU, GELU): identity rule :math:`R(x_i) = R(y_i)`, i.e. gradient
      :math:`f(x)/x` (:class:`~inseq_ext.attr.attnlrp_rules.IdentityRule`).
    * **Gated MLPs** :math:`\mathrm{act}(g) \odot u`: uniform rule, each factor gets :math:`R/2` (gradient x 1/2).
    * **Attention** :math:`O = \operatorname{softmax}(s\, Q K^\top + M)\, V`: uniform rule on both bilinear
      products, so values get gradient x 1/2 and queries and keys x 1/4 (1/2 for :math:`QK^\top`, times the 1/2 the
      attention weights get as a factor of :math:`AV`); softmax rule (Proposition 3.1)
      :math:`R(s_i) = s_i\,(R(a_i) - a_i \sum_j R(a_j))`, which is gradient x input of the softmax: unmodified
      gradient. The softmax is where relevance is not conserved (its bias term absorbs some).
    * **Output**: the step function is explained as inseq attributes it. With ``attributed_fn="logit"`` the
      relevance starts as the target logit :math:`z_t` (the paper's and lxt's set-up); with inseq's default
      ``"probability"`` the output softmax gets the softmax rule, so the relevance entering the logits sums to
      :math:`p_t\,(z_t - \sum_j p_j z_j)`: why :math:`t` rather than the average alternative.

    Conservation: on bias-free Llama-style blocks, :math:`\sum_i R_{i,t}` equals the explained logit minus what the
    attention softmaxes absorb (up to float round-off); biases, learned position embeddings (GPT-2, BART) and
    LayerNorm biases keep relevance elsewhere. Scores are signed (positive: supports the target).

    The rules are installed for the call only (forward hooks from the model family's adapter, and a wrapper in
    transformers' attention registry around the attention function the model already uses, so SDPA/flash kernels
    run unchanged); the single-forward engine serves all generation steps from one forward pass when the step
    function allows it. Output: inseq's token-level step output, one score per (input token, generated token).
    """

    method_name = "attnlrp"

    def __init__(self, attribution_model, **kwargs) -> None:
        super().__init__(attribution_model, **kwargs)
        relevance_spec(attribution_model.model)

    def get_attribution_args(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``model.attribute`` keyword arguments into this method's options (validated) and the rest."""
        ours = {name: value for name, value in kwargs.items() if name in AttnLrpOptions.__dataclass_fields__}
        AttnLrpOptions(**ours)
        return ours, {name: value for name, value in kwargs.items() if name not in ours}

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn,
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        install_attnlrp_rules(self.attribution_model.model, self.hooks)
        super().begin_batch(batch, attributed_fn, steps, attribute_target, attribution_args, attributed_fn_args)

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}
    ) -> CoarseFeatureAttributionStepOutput:
        gradients, values = self.step_gradients(attribute_fn_main_args)
        relevances = tuple(
            (grad.float() * value.float()).sum(-1) for grad, value in zip(gradients, values, strict=True)
        )
        source, target = get_source_target_attributions(relevances, self.attribution_model.is_encoder_decoder)
        return CoarseFeatureAttributionStepOutput(
            source_attributions=source, target_attributions=target, step_scores={}
        )
