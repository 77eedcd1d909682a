"""The processes of a run: one, or several started by ``accelerate launch`` / ``torchrun``.

Started by a launcher (``WORLD_SIZE`` > 1 in the environment), the processes join accelerate's process group
(``PartialState``): NCCL with one GPU per process when there are GPUs, gloo on CPUs. The run uses the group for one
barrier only (after process 0 has prepared the output folder); shards are split by number, each process writes its
own, and process 0 waits for the others' shard files before it writes the manifest, so an uneven split never meets a
collective timeout.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

#: Long enough for process 0 to read a large data set and load a large model while the others wait at the barrier.
BARRIER_TIMEOUT = timedelta(hours=2)


@dataclass
class Processes:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    device: str | None = None
    _state: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def close(self) -> None:
        if self._state is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_processes(device: str | None = None) -> Processes:
    """The run's processes: this one alone, or its place in the launcher's group (joined here)."""
    if launched_world_size() <= 1:
        _warn_single_process_launch()
        return Processes(device=device)
    from accelerate import PartialState

    use_cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu, timeout=BARRIER_TIMEOUT)
    if state.num_processes <= 1:  # a launcher environment accelerate does not recognise
        return Processes(device=device)
    run_device = "cpu" if use_cpu else str(state.device)
    return Processes(rank=state.process_index, world=state.num_processes, device=run_device, _state=state)


def _warn_single_process_launch() -> None:
    """``accelerate launch --num_processes N`` without GPUs starts ONE process; say so instead of running slowly."""
    asked_several = os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_MIXED_PRECISION") is not None
    if asked_several and "WORLD_SIZE" not in os.environ:
        print(
            "inseq-ext: note: accelerate started a single process (without GPUs, `accelerate launch "
            "--num_processes N` runs one); for N CPU processes add --multi_gpu to accelerate launch, or use "
            "torchrun --nproc-per-node N",
            file=sys.stderr,
        )
