"""Guaranteed restore of a user's model around an attribution call.

Every method of this package runs its work inside :func:`preserved_model_state`, and registers any PyTorch hook
through a :class:`HookSet`, so that after a call (successful or not) the model has the same train/eval flags, the
same ``requires_grad`` flags, the same input/output embedding modules and no hook of ours left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class ModelSnapshot:
    """What an attribution call must leave unchanged on a model."""

    training: tuple[bool, ...]
    requires_grad: tuple[bool, ...]
    input_embeddings: torch.nn.Module | None
    output_embeddings: torch.nn.Module | None
    hook_counts: tuple[int, ...]

    @classmethod
    def take(cls, model: torch.nn.Module) -> ModelSnapshot:
        return cls(
            training=tuple(module.training for module in model.modules()),
            requires_grad=tuple(param.requires_grad for param in model.parameters()),
            input_embeddings=_embedding_module(model, "get_input_embeddings"),
            output_embeddings=_embedding_module(model, "get_output_embeddings"),
            hook_counts=tuple(count_hooks(module) for module in model.modules()),
        )

    def restore(self, model: torch.nn.Module) -> None:
        """Put back the embedding modules, then the train/eval and ``requires_grad`` flags of the snapshot."""
        # Embeddings first: a swapped embedding changes the module and parameter lists the flags are zipped with.
        if (
            self.input_embeddings is not None
            and _embedding_module(model, "get_input_embeddings") is not self.input_embeddings
        ):
            model.set_input_embeddings(self.input_embeddings)
        if (
            self.output_embeddings is not None
            and _embedding_module(model, "get_output_embeddings") is not self.output_embeddings
        ):
            model.set_output_embeddings(self.output_embeddings)
        for module, training in zip(model.modules(), self.training, strict=True):
            module.training = training
        for param, requires_grad in zip(model.parameters(), self.requires_grad, strict=True):
            param.requires_grad_(requires_grad)


def _embedding_module(model: torch.nn.Module, getter: str) -> torch.nn.Module | None:
    get = getattr(model, getter, None)
    if get is None:
        return None
    try:
        return get()
    except NotImplementedError:
        return None


def count_hooks(module: torch.nn.Module) -> int:
    """Number of forward, forward-pre and backward hooks registered on one module (not its children)."""
    return sum(
        len(getattr(module, name, {}))
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


class _UndoHandle:
    """A change outside PyTorch's hook lists (e.g. an entry of transformers' attention registry), undone on remove."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def is_dispatched(model: torch.nn.Module | None) -> bool:
    """Whether accelerate placed ``model`` (``dispatch_model``, ``cpu_offload``, ``device_map=`` loading): some
    module carries accelerate's hook (``_hf_hook``), which moves inputs and, when offloaded, loads weights."""
    return isinstance(model, torch.nn.Module) and any(hasattr(module, "_hf_hook") for module in model.modules())


def parameter_value(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The value of ``module``'s parameter ``name`` (``None`` if it has none), also when accelerate offloaded it.

    Offloaded parameters sit on the ``meta`` device outside the module's own forward; their values are then read
    from the weights map of accelerate's hook on the module.
    """
    param = getattr(module, name, None)
    if param is None or param.device.type != "meta":
        return param
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", (hook,)):
        weights_map = getattr(part, "weights_map", None)
        if weights_map is not None and name in weights_map:
            return weights_map[name]
    raise ValueError(f"{type(module).__name__}.{name} is on the meta device and accelerate holds no value for it.")


class HookSet:
    """Hooks registered by one attribution call; :meth:`remove_all` takes every one of them off again."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle | _UndoHandle] = []

    def forward_hook(self, module: torch.nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        handle = module.register_forward_hook(hook, **kwargs)
        self._handles.append(handle)
        return handle

    def forward_pre_hook(self, module: torch.nn.Module, hook: Callable, **kwargs) -> RemovableHandle:
        handle = module.register_forward_pre_hook(hook, **kwargs)
        self._handles.append(handle)
        return handle

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` when the hooks are removed (in reverse order of registration, with the hooks)."""
        self._handles.append(_UndoHandle(undo))

    def remove_all(self) -> None:
        """Remove every hook and run every undo, newest first; the first error is raised after all have run."""
        error: BaseException | None = None
        while self._handles:
            try:
                self._handles.pop().remove()
            except BaseException as exc:  # noqa: BLE001 - keep removing the others, then re-raise
                error = error or exc
        if error is not None:
            raise error

    def __len__(self) -> int:
        return len(self._handles)


@contextmanager
def preserved_model_state(model: torch.nn.Module, freeze_parameters: bool = True) -> Iterator[HookSet]:
    """Run a block against ``model`` and restore it afterwards, whatever happens inside.

    Args:
        model: The user's model.
        freeze_parameters: Turn ``requires_grad`` off on every parameter while the block runs. Attributions only
            need gradients with respect to inputs or activations; frozen weights keep autograd from saving what
            weight gradients would need, which saves memory. The flags are restored on exit.

    Yields:
        A :class:`HookSet` for the block's hooks, all removed on exit.
    """
    snapshot = ModelSnapshot.take(model)
    hooks = HookSet()
    try:
        if freeze_parameters:
            for param in model.parameters():
                param.requires_grad_(False)
        yield hooks
    finally:
        hooks.remove_all()
        snapshot.restore(model)
