"""Model-family adapters: the only place that knows where a model keeps its blocks (and, later, q/k/rotary)."""

from __future__ import annotations

import torch

from .base import AttentionSpec, BlockStacks, ModelAdapter, RelevanceSpec, resolve_module, resolve_module_list
from .families import BUILT_IN_ADAPTERS

_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter, overwrite: bool = False) -> None:
    """Make ``adapter`` serve every ``config.model_type`` it lists (``overwrite`` replaces an existing one)."""
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS and not overwrite:
            raise ValueError(f"An adapter for model type {model_type!r} exists already; pass overwrite=True.")
        _ADAPTERS[model_type] = adapter


for _adapter in BUILT_IN_ADAPTERS:
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values that have an adapter, sorted."""
    return sorted(_ADAPTERS)


def registered_adapters() -> list[ModelAdapter]:
    """Every registered adapter, once each."""
    return list({id(adapter): adapter for adapter in _ADAPTERS.values()}.values())


def get_adapter(model: torch.nn.Module) -> ModelAdapter:
    """The adapter for a Hugging Face model, from its ``config.model_type``; a clear error when none is known."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"No inseq_ext adapter for model type {model_type!r} ({type(model).__name__}). Supported model types: "
            f"{', '.join(supported_model_types())}. Add one with inseq_ext.adapters.register_adapter(ModelAdapter("
            "family=..., model_types=(...,), decoder_blocks='path.to.blocks', ...)), or name the block list "
            "explicitly where the method accepts it."
        )
    return _ADAPTERS[model_type]


__all__ = [
    "AttentionSpec",
    "BlockStacks",
    "ModelAdapter",
    "RelevanceSpec",
    "get_adapter",
    "register_adapter",
    "registered_adapters",
    "resolve_module",
    "resolve_module_list",
    "supported_model_types",
]
