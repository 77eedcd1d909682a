r"""AttnLRP's backward rules as autograd functions, and their installation on a Hugging Face model.

AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024,
https://arxiv.org/abs/2402.05602) propagates relevance with rules chosen per operation. In the paper's efficient
formulation, relevance is gradient x input, :math:`R(x) = x \odot \partial F / \partial x`: every rule becomes a
change of the backward pass of one operation while the forward pass stays exactly the model's. This module holds
those changes:

* :class:`ScaleGradient` - the uniform rule for a product of two inputs (each receives half the relevance);
* :class:`IdentityRule` - the identity rule for element-wise activations (relevance passes through unchanged);
* :class:`NormalizationRule` - the identity rule for normalization layers (statistics treated as constants);

and :func:`install_attnlrp_rules`, which attaches them to a model through its family adapter (forward hooks on the
normalization, activation and gated-product modules) and through transformers' attention registry (a wrapper around
the attention function the model already calls, SDPA, flash or eager, so its kernel keeps running). Everything is
registered on the call's :class:`~inseq_ext.attr.model_state.HookSet` and removed with it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import Function

from ..adapters import RelevanceSpec, get_adapter, registered_adapters, resolve_module
from .model_state import HookSet, parameter_value

#: Gradient factors of the attention function's inputs. The value enters one product (attention weights x values):
#: uniform rule, 1/2. The query and the key enter the product q k^T (1/2), whose softmax output then enters the
#: product with the values (1/2): 1/4 in all. The softmax itself keeps its own gradient (its rule is gradient x input).
QUERY_KEY_FACTOR = 0.25
VALUE_FACTOR = 0.5
#: Gradient factor of each factor of an element-wise gate product act(gate) * up (uniform rule).
GATE_FACTOR = 0.5


class ScaleGradient(Function):
    r"""Identity in the forward pass; the backward pass multiplies the gradient by a constant factor.

    Uniform rule (AttnLRP, for bilinear products): for a product :math:`y = a \cdot b` of two inputs, gradient x
    input gives each factor the whole relevance
    (:math:`a\,\partial y/\partial a = b\,\partial y / \partial b = y`), so each must receive half of it: the
    gradient reaching each factor is multiplied by 1/2. For a sum of products (a matrix product), the same holds
    term by term.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class IdentityRule(Function):
    r"""Element-wise activation :math:`y = f(x)` whose backward pass is the identity rule.

    Identity rule (AttnLRP, for element-wise functions): :math:`R(x_i) = R(y_i)`. In gradient x input form the
    gradient becomes :math:`\partial F / \partial x_i := (f(x_i) / x_i)\, \partial F / \partial y_i`, so that
    :math:`x_i \cdot \partial F/\partial x_i = y_i \cdot \partial F / \partial y_i`; where :math:`x_i = 0` the
    factor is 0 (SiLU and GELU give :math:`f(0) = 0`: there is no relevance to pass). The forward value is the
    model's own output ``y``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x32 = x.detach().float()
        ratio = torch.where(x32 == 0, torch.zeros_like(x32), y.float() / x32)
        ctx.save_for_backward(ratio.to(x.dtype))
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class NormalizationRule(Function):
    r"""Normalization layer whose backward pass treats the normalizing statistic as a constant.

    Identity rule for normalization (AttnLRP; Ali et al., ICML 2022, "XAI for Transformers"): the
    division by the standard deviation (or root mean square) is an element-wise rescaling by a per-token constant
    :math:`r`, so the layer becomes linear in :math:`x` and the ε-rule applies to what remains:

    * RMSNorm, :math:`y = w \odot x\, r`, :math:`r = (\overline{x^2} + \epsilon)^{-1/2}`:
      :math:`\partial F/\partial x = r\, w \odot \partial F/\partial y`, hence :math:`R(x_i) = R(y_i)` exactly;
    * LayerNorm, :math:`y = w \odot (x - \bar x)\, r + b`, :math:`r = (\operatorname{var} x + \epsilon)^{-1/2}`:
      :math:`\partial F/\partial x = r\, (h - \bar h)` with :math:`h = w \odot \partial F / \partial y`: the
      mean subtraction stays a linear map (conservative), the bias :math:`b` keeps its share of relevance.

    The forward value is the model's own output ``y``; only :math:`r` (one number per token) is stored.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, epsilon: float, centered: bool
    ) -> torch.Tensor:
        x32 = x.detach().float()
        if centered:
            statistic = x32.var(dim=-1, unbiased=False, keepdim=True)
        else:
            statistic = x32.pow(2).mean(dim=-1, keepdim=True)
        ctx.save_for_backward(torch.rsqrt(statistic + epsilon), weight)
        ctx.centered = centered
        ctx.input_dtype = x.dtype
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scale, weight = ctx.saved_tensors
        weighted = grad.float() if weight is None else grad.float() * weight.float()
        if ctx.centered:
            weighted = weighted - weighted.mean(dim=-1, keepdim=True)
        return (weighted * scale).to(ctx.input_dtype), None, None, None, None


def _tracks_gradient(tensor: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and tensor.requires_grad


def _normalization_hook(spec: RelevanceSpec) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        x = args[0]
        if not _tracks_gradient(x):
            return None
        weight = parameter_value(module, "weight")  # offloaded weights are read from accelerate's map
        weight = None if weight is None else weight.to(x.device)
        epsilon = float(getattr(module, spec.epsilon_attribute))
        return NormalizationRule.apply(x, output.detach(), weight, epsilon, spec.norm_kind == "layer")

    return hook


def _activation_hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    x = args[0]
    return IdentityRule.apply(x, output.detach()) if _tracks_gradient(x) else None


def _gate_product_hook(module: torch.nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    return (ScaleGradient.apply(x, GATE_FACTOR), *args[1:]) if _tracks_gradient(x) else None


def attnlrp_model_types() -> list[str]:
    """The ``config.model_type`` values whose adapter describes where AttnLRP's rules attach, sorted."""
    return sorted({t for adapter in registered_adapters() if adapter.relevance for t in adapter.model_types})


def relevance_spec(model: torch.nn.Module) -> RelevanceSpec:
    """The model family's :class:`RelevanceSpec`; a ``ValueError`` naming the supported model types otherwise."""
    supported = ", ".join(attnlrp_model_types())
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        spec = get_adapter(model).relevance
    except ValueError:
        spec = None
    if spec is None:
        raise ValueError(
            f"attnlrp does not support model type {model_type!r} ({type(model).__name__}). Supported model types: "
            f"{supported}. A family is added by giving its adapter a RelevanceSpec (inseq_ext.adapters)."
        )
    implementation = getattr(model.config, "_attn_implementation", None)
    for flag in spec.eager_bypass_flags:
        if implementation == "eager" and getattr(model.config, flag, False):
            raise ValueError(
                f"attnlrp cannot attach its attention rule to {type(model).__name__} with eager attention and "
                f"config.{flag}=True (that path bypasses transformers' attention registry). Load the model with "
                "attn_implementation='sdpa', or set the flag to False."
            )
    return spec


def install_attnlrp_rules(model: torch.nn.Module, hooks: HookSet) -> None:
    """Attach AttnLRP's backward rules to ``model`` for as long as ``hooks`` lives.

    Forward values are unchanged: the hooks return tensors equal to the modules' own outputs whose backward pass
    follows the rules, and only while gradients are tracked (generation and step scores run untouched).

    Raises:
        ValueError: for a model family without a :class:`RelevanceSpec` (the message names the supported ones).
    """
    spec = relevance_spec(model)
    stacks = get_adapter(model).block_stacks(model)
    blocks = [*(stacks.encoder or ()), *stacks.decoder]
    norms = [resolve_module(block, path) for block in blocks for path in spec.block_norms]
    norms += [resolve_module(model, path) for path in spec.model_norms]
    activations = [resolve_module(block, path) for block in blocks for path in spec.activations]
    gates = [resolve_module(block, path) for block in blocks for path in spec.gate_consumers]
    normalization_hook = _normalization_hook(spec)
    for module in _unique_present(norms):
        hooks.forward_hook(module, normalization_hook)
    for module in _unique_present(activations):
        hooks.forward_hook(module, _activation_hook)
    for module in _unique_present(gates):
        hooks.forward_pre_hook(module, _gate_product_hook)
    hooks.on_remove(_ATTENTION_RULE.enable(model))


def _unique_present(modules: list[torch.nn.Module | None]) -> list[torch.nn.Module]:
    return list({id(module): module for module in modules if module is not None}.values())


class _AttentionRule:
    """The attention rule, installed in transformers' attention registry while at least one model uses it.

    For every attention implementation a model uses (``config._attn_implementation``: ``"sdpa"``, ``"eager"``,
    a flash kernel), the registry entry of the attention registry its modeling code reads is replaced by a wrapper
    that scales the gradients of the query, key and value (:data:`QUERY_KEY_FACTOR`, :data:`VALUE_FACTOR`) of the
    attention modules of enabled models, and calls the original function, so the original kernel computes the
    forward pass. Calls from other models pass through unchanged. Entries are put back when the last model using
    them is disabled; enabling is reference-counted, so nested and concurrent calls are safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module_counts: dict[int, int] = {}
        # (id of the registry, implementation) -> [registry, implementation, previous local entry or None, users]
        self._entries: dict[tuple[int, str], list[Any]] = {}

    def enable(self, model: torch.nn.Module) -> Callable[[], None]:
        """Apply the rule to ``model``'s attention calls; returns the function that undoes exactly this call."""
        implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        registries = _attention_registries(model)
        if not registries:
            raise ValueError(
                f"attnlrp found no transformers attention registry (ALL_ATTENTION_FUNCTIONS) in the modeling code of "
                f"{type(model).__name__}: its attention rule cannot be installed."
            )
        module_ids = [id(module) for module in model.modules()]
        keys = []
        with self._lock:
            for module_id in module_ids:
                self._module_counts[module_id] = self._module_counts.get(module_id, 0) + 1
            for registry in registries:
                key = (id(registry), implementation)
                if key not in self._entries:
                    self._entries[key] = [registry, implementation, registry._local_mapping.get(implementation), 0]
                    registry[implementation] = self._wrap(registry, implementation)
                self._entries[key][3] += 1
                keys.append(key)

        def disable() -> None:
            with self._lock:
                for module_id in module_ids:
                    self._module_counts[module_id] -= 1
                    if self._module_counts[module_id] == 0:
                        del self._module_counts[module_id]
                for key in keys:
                    entry = self._entries[key]
                    entry[3] -= 1
                    if entry[3] == 0:
                        registry, name, previous, _ = self._entries.pop(key)
                        if previous is None:
                            del registry[name]
                        else:
                            registry[name] = previous

        return disable

    def _wrap(self, registry: Any, implementation: str) -> Callable:
        previous = registry._local_mapping.get(implementation)
        if previous is None and implementation != "eager":
            previous = registry[implementation]

        def attnlrp_attention(module, query, key, value, *args, **kwargs):
            original = previous if previous is not None else _eager_attention_function(module)
            if id(module) in self._module_counts and torch.is_grad_enabled():
                query = ScaleGradient.apply(query, QUERY_KEY_FACTOR)
                key = ScaleGradient.apply(key, QUERY_KEY_FACTOR)
                value = ScaleGradient.apply(value, VALUE_FACTOR)
            return original(module, query, key, value, *args, **kwargs)

        attnlrp_attention.__wrapped__ = previous
        return attnlrp_attention


def _attention_registries(model: torch.nn.Module) -> list[Any]:
    """The attention registries (``ALL_ATTENTION_FUNCTIONS``) read by the modeling code of ``model``'s modules."""
    registries = {}
    for module in model.modules():
        registry = getattr(sys.modules.get(type(module).__module__), "ALL_ATTENTION_FUNCTIONS", None)
        if registry is not None and hasattr(registry, "_local_mapping"):
            registries[id(registry)] = registry
    return list(registries.values())


def _eager_attention_function(module: torch.nn.Module) -> Callable:
    """The eager attention function of the modeling file that defines ``module``'s class (transformers' layout)."""
    function = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if function is None:
        raise ValueError(
            f"attnlrp: {type(module).__name__}'s modeling code has no eager_attention_forward; load the model with "
            "attn_implementation='sdpa'."
        )
    return function


_ATTENTION_RULE = _AttentionRule()
