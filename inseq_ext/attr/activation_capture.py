"""Record module outputs during a forward pass, so gradients can be taken with respect to them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from .model_state import HookSet

Side = Literal["source", "target"]


class ActivationCapture:
    """Output tensors of some modules, recorded only while :meth:`recording` is active.

    The hooks only read the output (they return nothing), so the recorded tensor is the very tensor the rest of
    the model consumes and ``torch.autograd.grad`` with respect to it gives ``dF / d output``. Recording is off
    outside :meth:`recording`, so other forward passes (inseq's step scores, generation) leave it untouched.

    Args:
        hooks: The attribution call's :class:`HookSet`; the hooks go away with it.
        modules: Modules whose output to record (for tuple outputs, the first element: the hidden states).
        sides: For each module, whether its positions are ``"source"`` tokens (encoder) or ``"target"`` ones.
    """

    def __init__(self, hooks: HookSet, modules: Sequence[torch.nn.Module], sides: Sequence[Side]) -> None:
        if len(modules) != len(sides):
            raise ValueError("modules and sides must have the same length")
        self.sides: tuple[Side, ...] = tuple(sides)
        self._recorded: list[torch.Tensor | None] = [None] * len(modules)
        self._active = False
        for idx, module in enumerate(modules):
            hooks.forward_hook(module, self._recorder(idx))

    def _recorder(self, idx: int):
        def record(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            if self._active:
                self._recorded[idx] = output[0] if isinstance(output, tuple) else output

        return record

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._recorded = [None] * len(self._recorded)
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def clear(self) -> None:
        """Drop the recorded outputs (and the graph they keep alive)."""
        self._recorded = [None] * len(self._recorded)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The outputs recorded by the last :meth:`recording` block, in module order."""
        missing = [idx for idx, tensor in enumerate(self._recorded) if tensor is None]
        if missing:
            raise RuntimeError(f"modules {missing} produced no output during the recorded forward pass")
        return tuple(self._recorded)
