"""Comparison helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread inside the block (tiny models: on a busy 2-core machine two threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def attribution_fields(output, aggregate: bool = True):
    """``(sequence index, field name, tensor)`` for every source/target attribution tensor of an inseq output."""
    if aggregate:
        output = output.aggregate()
    for idx, seq in enumerate(output.sequence_attributions):
        for name in ("source_attributions", "target_attributions"):
            tensor = getattr(seq, name)
            if tensor is not None:
                yield idx, name, tensor


def max_abs_difference(expected, actual) -> float:
    """Largest difference between two inseq outputs' aggregated attributions; NaN patterns must match."""
    expected_fields = list(attribution_fields(expected))
    actual_fields = list(attribution_fields(actual))
    assert [(i, n) for i, n, _ in expected_fields] == [(i, n) for i, n, _ in actual_fields]
    worst = 0.0
    for (_, name, a), (_, _, b) in zip(expected_fields, actual_fields, strict=True):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.equal(a.isnan(), b.isnan()), name
        worst = max(worst, (a - b).nan_to_num().abs().max().item())
    return worst
