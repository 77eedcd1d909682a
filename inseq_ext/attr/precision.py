"""Low-precision (bfloat16 / float16) models: what an attribution computes in float32, and how.

A model loaded in ``torch.bfloat16`` or ``torch.float16`` computes its logits in that dtype. inseq's step
functions (``probability``, ``logprob``, ``entropy``, ...) then take a softmax over the vocabulary in that dtype:
bfloat16 keeps 8 significant bits, so a probability close to 1 rounds to exactly 1 and its gradient (the
attributed quantity of every gradient method) is dominated by rounding. While one of this package's methods runs,
:func:`upcast_logits` makes the output-embedding layer (the language-model head) return float32 logits, so the
step function, its softmax and the gradient flowing back from it start in float32; the weights and every other
activation keep the model's dtype (a float32 copy of the model would double its memory). The methods themselves
reduce in float32 (norms and normalization of ``custom_saliency``, the products and sums of
``block_gradient_x_input``, the scores and softmax of ``rotary_attention``).
"""

from __future__ import annotations

import torch

from .model_state import HookSet, _embedding_module

#: Floating-point dtypes whose logits are upcast to float32 during an attribution.
LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (``float32`` for a model without one)."""
    return next((param.dtype for param in model.parameters() if param.is_floating_point()), torch.float32)


def is_low_precision(model: torch.nn.Module) -> bool:
    """Whether the model computes in bfloat16 or float16."""
    return model_dtype(model) in LOW_PRECISION_DTYPES


def upcast_logits(model: torch.nn.Module, hooks: HookSet) -> bool:
    """Make the model's output-embedding layer return float32 logits while ``hooks`` are registered.

    A no-op (returns ``False``) for float32/float64 models and for models without output embeddings. The hook
    only changes the dtype of the layer's output, so the logits are the same numbers as the model's, and the
    gradient that flows back into the head is cast to the head's dtype by autograd.

    Returns:
        Whether a hook was registered.
    """
    if not is_low_precision(model):
        return False
    head = _embedding_module(model, "get_output_embeddings")
    if head is None:
        return False

    def to_float32(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if isinstance(output, torch.Tensor) and output.dtype in LOW_PRECISION_DTYPES:
            return output.float()
        return None

    hooks.forward_hook(head, to_float32)
    return True


class GradientScale:
    r"""Loss scaling for the backward passes of float16 models (Micikevicius et al., 2018, Mixed Precision
    Training, https://arxiv.org/abs/1710.03740).

    float16 stops at :math:`6 \cdot 10^{-8}` (subnormals) and :math:`6.5 \cdot 10^{4}`; gradients of a step function
    with respect to embeddings and hidden states of a trained model are often far below the former, so they flush
    to zero and the saliency of whole tokens is lost. The backward pass is therefore run on :math:`c \, F_t` (its
    gradients are :math:`c` times larger, the computation is otherwise identical) and the results are divided by
    :math:`c` in float32. :math:`c` starts at :math:`2^{16}` and is divided by :math:`2^4` whenever a gradient
    overflows (is not finite), down to 1, where the gradients are kept as they are. bfloat16 has float32's range
    and float32/float64 need no scaling: :math:`c = 1`, a no-op.
    """

    INITIAL = 2.0**16
    REDUCTION = 2.0**4

    def __init__(self, dtype: torch.dtype) -> None:
        self.value = self.INITIAL if dtype == torch.float16 else 1.0

    @property
    def active(self) -> bool:
        return self.value != 1.0

    def accept(self, gradients: tuple[torch.Tensor | None, ...]) -> bool:
        """Whether the scaled ``gradients`` are usable; if not, the scale is reduced for a retry."""
        if not self.active or all(grad is None or bool(torch.isfinite(grad).all()) for grad in gradients):
            return True
        self.value = max(1.0, self.value / self.REDUCTION)
        return False

    def unscale(self, gradient: torch.Tensor) -> torch.Tensor:
        """The true gradient: ``gradient / c`` in float32 (``gradient`` itself when ``c = 1``)."""
        return gradient.float() / self.value if self.active else gradient
