r"""Low-precision (bfloat16 / float16) models: what an attribution computes in float32, and how.

A model loaded in ``torch.bfloat16`` or ``torch.float16`` computes its logits in that dtype. inseq's step
functions (``probability``, ``logprob``, ``entropy``, ...) then take a softmax over the vocabulary in that dtype:
bfloat16 keeps 8 significant bits, so a probability close to 1 rounds to exactly 1 and its gradient (the
attributed quantity of every gradient method) is dominated by rounding. The gradient of a probability close to 1
is moreover a difference of nearly equal terms, :math:`\nabla p_t = p_t (\nabla z_t - \sum_j p_j \nabla z_j)`,
which the head's backward pass (a sum over the whole vocabulary) computes with cancellation.

So while one of this package's methods runs, :func:`upcast_logits` makes the language-model head compute in
float32 from the model's own (low-precision) weights and hidden states: the logits, the step function and its
softmax, and the head's backward pass (:class:`Float32LinearHead`), without a float32 copy of the weights. The rest
of the model keeps its dtype (a float32 copy of the model would double its memory). The methods themselves reduce
in float32 (norms and normalization of ``custom_saliency``, the products and sums of ``block_gradient_x_input``,
the scores and softmax of ``rotary_attention``), and :class:`GradientScale` keeps float16 gradients from
underflowing.
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


class Float32LinearHead(torch.autograd.Function):
    """``x W^T + b`` computed in float32 from low-precision ``x`` and ``W``, forward and backward, chunk by chunk.

    Neither pass materialises a float32 copy of ``W``: the vocabulary is processed :data:`CHUNK_BYTES` of float32
    weights at a time. The gradient with respect to ``x`` is accumulated in float32 and returned in ``x``'s dtype;
    the weights get none (attribution freezes them).
    """

    #: Bytes of float32 weights converted at a time.
    CHUNK_BYTES = 2**26

    @staticmethod
    def row_chunks(weight: torch.Tensor) -> list[slice]:
        """Slices of the weight's rows (vocabulary entries), each at most :data:`CHUNK_BYTES` in float32."""
        rows = max(1, Float32LinearHead.CHUNK_BYTES // (4 * weight.shape[1]))
        return [slice(start, start + rows) for start in range(0, weight.shape[0], rows)]

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.hidden_dtype = hidden.dtype
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        logits = flat.new_empty((flat.shape[0], weight.shape[0]))
        for rows in Float32LinearHead.row_chunks(weight):
            logits[:, rows] = flat @ weight[rows].float().T
        if bias is not None:
            logits += bias.float()
        return logits.reshape(*hidden.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        (weight,) = ctx.saved_tensors
        flat = grad_logits.reshape(-1, weight.shape[0]).float()
        grad_hidden = flat.new_zeros((flat.shape[0], weight.shape[1]))
        for rows in Float32LinearHead.row_chunks(weight):
            grad_hidden += flat[:, rows] @ weight[rows].float()
        grad_hidden = grad_hidden.reshape(*grad_logits.shape[:-1], weight.shape[1]).to(ctx.hidden_dtype)
        return grad_hidden, None, None


def upcast_logits(model: torch.nn.Module, hooks: HookSet) -> bool:
    """Make the model's language-model head compute float32 logits while ``hooks`` are registered.

    For a bfloat16/float16 model whose output embeddings are an ``nn.Linear`` with weights on the hidden states'
    device, a forward hook replaces the head's output with :class:`Float32LinearHead` of the same input, weights
    and bias (the model's low-precision result is dropped); for other heads (e.g. weights offloaded by accelerate
    hooks) the output is only cast to float32. A no-op (returns ``False``) for float32/float64 models and models
    without output embeddings.

    Returns:
        Whether a hook was registered.
    """
    if not is_low_precision(model):
        return False
    head = _embedding_module(model, "get_output_embeddings")
    if head is None:
        return False

    def to_float32(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor) or output.dtype not in LOW_PRECISION_DTYPES:
            return None
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else None
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, torch.nn.Linear)
            and hidden is not None
            and isinstance(weight, torch.Tensor)
            and weight.device == hidden.device
            and weight.device.type != "meta"
        ):
            return Float32LinearHead.apply(hidden, weight, module.bias)
        return output.float()

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
