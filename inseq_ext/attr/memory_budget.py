r"""A memory budget for the single-forward gradient engine, and what to do when memory runs out.

The single-forward engine (:class:`~inseq_ext.attr.step_gradients.SingleForwardGradients`) keeps the autograd
graph of one forward pass over the whole sequences and serves ``k`` generation steps with one vectorized backward
pass. Its memory is, approximately,

.. math::
    M(k) \approx G + k \, S, \qquad S = \frac{G}{L} + 2 V,

where :math:`G` is the size of the tensors autograd saved during the forward pass (measured while it runs, see
:class:`SavedTensorMeter`; model weights excluded: they exist anyway), :math:`L` the number of transformer blocks
(a vectorized backward holds about one block's worth of gradients per step at a time) and :math:`V` the size of the
tensors differentiated with respect to (input embeddings, captured block outputs: their gradients are accumulated
and returned for every step of the chunk). ``k`` is the largest value with :math:`M(k)` within the budget, capped
at the speed-optimal :data:`MAX_STEPS_PER_BACKWARD`, and at least 1 once the graph exists. When the graph itself
outgrows the budget while the forward pass runs, the pass is abandoned and the engine falls back to inseq's way:
one forward and one backward pass per step, whose graph covers only the step's prefix and is freed after each step
(this saves memory when many tokens are generated; after a long prompt each prefix graph is nearly as large, and
inseq's forward computes logits at every prefix position, so it is the last resort, not a cheaper default).

The budget is the ``max_memory`` option (bytes, or a string such as ``"2GB"``; :func:`parse_memory`) or, by default,
a share of the memory that is free when the batch starts (:func:`default_memory_budget`). An out-of-memory error
(:func:`is_out_of_memory`) during a backward pass halves ``k`` and retries, and at ``k = 1`` moves to the per-step
path; nothing partial is kept, the model is not touched.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch

#: Steps per vectorized backward pass when memory is plentiful (fastest measured on CPU; see the docs page
#: "Precision and memory").
MAX_STEPS_PER_BACKWARD = 4
#: Share of the free memory used as the default budget: a GPU is usually the process's own, a machine's RAM is
#: shared with everything else running there.
DEFAULT_SHARE = {"cuda": 0.8, "cpu": 0.5}

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
VALID_MEMORY_FORMS = (
    "None (a share of the free memory), a positive number of bytes (e.g. 2_000_000_000) or a string with a unit, "
    "e.g. '2GB', '512MiB', '1.5 GiB' (units: B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024)"
)

#: Phrases of the out-of-memory errors raised by PyTorch's allocators (CUDA, CPU, MPS) and the C library.
_OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def parse_memory(value: int | float | str | None) -> int | None:
    """A memory amount in bytes from the ``max_memory`` option; ``None`` stays ``None`` (use the default).

    Raises:
        ValueError: for anything else than :data:`VALID_MEMORY_FORMS` (booleans, zero or negative amounts,
            unknown units), naming the valid forms.
    """
    if value is None:
        return None
    amount: float | None = None
    if isinstance(value, bool):
        amount = None
    elif isinstance(value, int | float):
        amount = float(value)
    elif isinstance(value, str):
        match = _MEMORY_PATTERN.match(value)
        unit = match.group(2).lower() if match else None
        if match and (unit or "b") in _UNITS:
            amount = float(match.group(1)) * _UNITS[unit or "b"]
    if amount is None or not math.isfinite(amount) or amount < 1:
        raise ValueError(f"Invalid max_memory {value!r}: valid forms are {VALID_MEMORY_FORMS}.")
    return int(amount)


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of ``/proc/meminfo`` (or
    the free physical pages) for the CPU; ``None`` where it cannot be told (other devices)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget(device: torch.device) -> int | None:
    """The default budget: :data:`DEFAULT_SHARE` of :func:`available_memory` (``None``: unknown, no limit)."""
    free = available_memory(device)
    if free is None:
        return None
    return int(free * DEFAULT_SHARE.get(device.type, 0.5))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` reports exhausted memory: ``torch.OutOfMemoryError``, ``MemoryError``, or a
    ``RuntimeError`` with an allocator's out-of-memory message (the CPU allocator raises plain ``RuntimeError``)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OUT_OF_MEMORY_TEXT)


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error, so that a retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class MemoryBudgetExceeded(RuntimeError):
    """Raised inside the forward pass when the graph it saves grows past the budget (caught by the engine)."""


class SavedTensorMeter:
    """Bytes autograd saves for the backward pass while the block runs (``torch.autograd.graph.saved_tensors_hooks``).

    Each storage counts once; the model's parameters and buffers do not count (they are in memory anyway). With a
    ``limit``, :class:`MemoryBudgetExceeded` is raised as soon as the total passes it, so a graph that does not fit
    is abandoned while it is being built rather than after.

    Args:
        model: The model whose weights are excluded.
        limit: Bytes the saved tensors may reach; ``None``: no limit.
    """

    def __init__(self, model: torch.nn.Module, limit: int | None = None) -> None:
        self.limit = limit
        self.total = 0
        self._seen: set[int] = set()
        self._weights = {tensor.untyped_storage().data_ptr() for tensor in (*model.parameters(), *model.buffers())}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key not in self._weights:
            self._seen.add(key)
            self.total += storage.nbytes()
            if self.limit is not None and self.total > self.limit:
                raise MemoryBudgetExceeded(
                    f"the graph of the single forward pass outgrew the budget of {format_bytes(self.limit)}"
                )
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._seen.clear()


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def count_blocks(model: torch.nn.Module) -> int:
    """Transformer blocks of the model (encoder and decoder), from its config; 1 when the config does not say."""
    config = getattr(model, "config", None)
    if config is None:
        return 1
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    decoder = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "decoder_layers", None) or 0
    encoder = getattr(text_config, "encoder_layers", 0) if getattr(config, "is_encoder_decoder", False) else 0
    return max(1, int(decoder) + int(encoder or 0))


@dataclass
class MemoryPlan:
    """How the gradients of one batch were computed, and the figures the choice was made from.

    Attributes:
        budget: Bytes allowed (``None``: unknown free memory, no limit).
        graph_bytes: Saved-tensor bytes of the single forward pass (``G``; ``None`` if it was not run).
        per_step_bytes: Estimated extra bytes per step of a vectorized backward (``S``).
        steps_per_backward: Steps per backward pass (after any out-of-memory retry; 0: per-step forward passes).
        events: What happened, in order (``"out of memory at k=4: retrying with k=2"``, ...).
    """

    budget: int | None
    graph_bytes: int | None = None
    per_step_bytes: int | None = None
    steps_per_backward: int = MAX_STEPS_PER_BACKWARD
    events: list[str] = field(default_factory=list)

    @property
    def per_step_forward(self) -> bool:
        """Whether (some) steps were served by one forward and backward pass each instead of the single forward."""
        return self.steps_per_backward == 0


def plan_steps_per_backward(budget: int | None, graph_bytes: int, per_step_bytes: int, n_steps: int) -> int:
    """Largest ``k <= min(MAX_STEPS_PER_BACKWARD, n_steps)`` with ``graph_bytes + k * per_step_bytes <= budget``.

    At least 1: the graph exists already, and one step per backward pass is the least the engine can do with it.
    """
    cap = max(1, min(MAX_STEPS_PER_BACKWARD, n_steps))
    if budget is None:
        return cap
    fitting = (budget - graph_bytes) // max(per_step_bytes, 1)
    return int(min(cap, max(fitting, 1)))


def format_bytes(amount: int | float) -> str:
    """``1536 -> '1.5 KiB'``: binary units, one decimal."""
    value = float(amount)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
