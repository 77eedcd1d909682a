"""Where a model family keeps its internals: one :class:`ModelAdapter` per family.

Methods reach model internals only through an adapter, so that supporting a new architecture means adding one
adapter (see :func:`~inseq_ext.adapters.register_adapter`), not special cases spread through the methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockStacks:
    """The transformer block lists of a model: the encoder's (encoder-decoders only) and the decoder's."""

    encoder: torch.nn.ModuleList | None
    decoder: torch.nn.ModuleList


@dataclass(frozen=True)
class ModelAdapter:
    """Locations of one model family's internals, as attribute paths relative to the Hugging Face model.

    Attributes:
        family: Short name shown in messages (e.g. ``"llama"``).
        model_types: ``config.model_type`` values this adapter serves.
        decoder_blocks: Path of the decoder's (or decoder-only model's) block list, e.g. ``"model.layers"``.
        encoder_blocks: Path of the encoder's block list, for encoder-decoder models.
    """

    family: str
    model_types: tuple[str, ...]
    decoder_blocks: str
    encoder_blocks: str | None = None

    def block_stacks(self, model: torch.nn.Module) -> BlockStacks:
        return BlockStacks(
            encoder=resolve_module_list(model, self.encoder_blocks) if self.encoder_blocks else None,
            decoder=resolve_module_list(model, self.decoder_blocks),
        )


def resolve_module_list(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    """The ``torch.nn.ModuleList`` at attribute path ``path`` of ``model``; a ``ValueError`` says what is there."""
    module: object = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(
                f"{type(model).__name__} has no module at {path!r} (no attribute {part!r} on {type(module).__name__})."
            )
        module = getattr(module, part)
    if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
        raise ValueError(
            f"{path!r} on {type(model).__name__} is a {type(module).__name__}, not a non-empty list of blocks "
            "(torch.nn.ModuleList)."
        )
    return module
