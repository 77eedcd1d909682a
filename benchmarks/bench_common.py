"""Pieces shared by the benchmark scripts: texts of a given token length, the Llama-style benchmark model, and peak
memory of one call (resident set size on CPU, the allocator's peak on CUDA).

Peak memory on CPU: a background thread samples the process's resident set size (``/proc/self/statm``) every 2 ms
while a call runs; the figure is the highest sample minus the resident size measured just before the call (after
``gc.collect()`` and glibc's ``malloc_trim(0)``, which hands freed heap memory back to the system, so that a previous
call's freed memory does not hide this one's). Short spikes between two samples can be missed. On CUDA it is
``torch.cuda.max_memory_allocated()`` during the call minus the memory allocated before it (exact, PyTorch tensors
only).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from inseq_ext.attr.memory_budget import is_out_of_memory
from inseq_ext.tiny_models import build_model, build_tokenizer

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: The Llama-style benchmark model: 8 layers x 512 hidden units, grouped-query attention with 8 query and 2
#: key/value heads, a Llama-sized 32,000-token vocabulary; random weights (time and memory do not depend on them).
LLAMA_BENCH_SIZE = {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 2, "ffn": 1536, "vocab_size": 32000}


def make_texts(tokenizer, prompt_tokens: int, new_tokens: int) -> tuple[str, str]:
    """A prompt of ``prompt_tokens`` tokens and a forced text ``new_tokens`` tokens longer, stable under re-tokenizing.

    Byte-level BPE never merges across a space, so appending `` word`` adds that word's own tokens: the lengths are
    counted piece by piece (fast for 32k-token prompts) and checked once on the final texts.
    """
    words = "the model reads every token of the prompt before it writes the next word of its answer".split()

    def pieces(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    sentence = " " + " ".join(words)
    sentence_tokens = pieces(sentence)

    def extend(text: str, count: int, budget: int) -> tuple[str, int]:
        repeats = max(0, (budget - count) // sentence_tokens - 1)
        text, count = text + sentence * repeats, count + repeats * sentence_tokens
        idx = 0
        while count < budget:
            word = words[idx % len(words)]
            idx += 1
            for piece in (" " + word, " a"):
                if count + pieces(piece) <= budget:
                    text, count = text + piece, count + pieces(piece)
                    break
        return text, count

    start = "Hello"
    prompt, count = extend(start, len(tokenizer(start).input_ids), prompt_tokens)
    full, _ = extend(prompt, count, prompt_tokens + new_tokens)
    for text, expected in ((prompt, prompt_tokens), (full, prompt_tokens + new_tokens)):
        if len(tokenizer(text).input_ids) != expected:
            raise RuntimeError(f"the tokenizer does not split words on their own: {expected} tokens expected")
    return prompt, full


def llama_benchmark_models(max_positions: int, eager_copy: bool = True, **size: int):
    """``(sdpa_model, eager_model or None, tokenizer)``: the Llama benchmark model twice with the same weights.

    ``size`` overrides entries of :data:`LLAMA_BENCH_SIZE`. The eager copy is what inseq's ``attention`` needs
    (``output_attentions``); every other method runs the default SDPA model.
    """
    tokenizer = build_tokenizer(vocab_size=384, add_bos=True)
    size = {**LLAMA_BENCH_SIZE, **size, "max_positions": max_positions}
    size["vocab_size"] = max(size["vocab_size"], len(tokenizer))
    sdpa_model, _ = build_model("llama", tokenizer=tokenizer, **size)
    eager_model = None
    if eager_copy:
        eager_model, _ = build_model("llama", tokenizer=tokenizer, attn_implementation="eager", **size)
    return sdpa_model, eager_model, tokenizer


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo``: what the machine can still give without swapping."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def release_freed_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may then include freed memory
        pass


class PeakResidentMemory:
    """Highest resident set size above the level at entry, sampled by a background thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakResidentMemory:
        release_freed_memory()
        self.baseline = self.peak = resident_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def above_baseline_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


class PeakCudaMemory:
    """Peak bytes allocated by PyTorch on a CUDA device during the block, above what was allocated at entry."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        self.baseline = self.peak = 0

    def __enter__(self) -> PeakCudaMemory:
        release_freed_memory()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = self.peak = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def above_baseline_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


def peak_memory(device: torch.device | str) -> PeakResidentMemory | PeakCudaMemory:
    """The peak-memory meter for ``device``."""
    return PeakCudaMemory(device) if torch.device(device).type == "cuda" else PeakResidentMemory()


@dataclass
class Measurement:
    """Wall and CPU seconds, peak MiB above the baseline, and the call's result (or the error that ended it)."""

    wall_s: float
    cpu_s: float
    peak_mib: float
    result: Any = None
    error: str | None = None


def measure(fn: Callable[[], Any], device: torch.device | str = "cpu", catch_out_of_memory: bool = False):
    """Run ``fn()`` once under a peak-memory meter; with ``catch_out_of_memory`` an OOM is reported, not raised."""
    with peak_memory(device) as memory:
        start, start_cpu = time.perf_counter(), time.process_time()
        result, error = None, None
        try:
            result = fn()
        except (RuntimeError, MemoryError) as exc:
            if not (catch_out_of_memory and is_out_of_memory(exc)):
                raise
            error = f"out of memory ({type(exc).__name__})"
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return Measurement(elapsed, cpu, memory.above_baseline_mib, result, error)


@dataclass
class PairRow:
    """One prompt length: inseq's method (``baseline``) against ours, and the largest score difference."""

    prompt_tokens: int
    baseline: Measurement
    ours: Measurement
    max_abs_difference: float | None

    @property
    def time_ratio(self) -> float | None:
        """Baseline wall time / ours (above 1: ours is faster); None when the baseline did not finish."""
        return None if self.baseline.error else self.baseline.wall_s / self.ours.wall_s

    @property
    def cpu_ratio(self) -> float | None:
        return None if self.baseline.error else self.baseline.cpu_s / max(self.ours.cpu_s, 1e-9)

    @property
    def memory_ratio(self) -> float | None:
        """Baseline peak / ours (above 1: ours needs less)."""
        return None if self.baseline.error else self.baseline.peak_mib / max(self.ours.peak_mib, 1e-3)


def compare(prompt_tokens: int, baseline: Callable[[], Any], ours: Callable[[], Any], device="cpu") -> PairRow:
    """Run ``baseline`` then ``ours`` (each returns a score tensor); an out-of-memory baseline is reported as such."""
    theirs = measure(baseline, device, catch_out_of_memory=True)
    release_freed_memory()
    mine = measure(ours, device)
    difference = None
    if theirs.result is not None and mine.result is not None:
        difference = (theirs.result.float().cpu() - mine.result.float().cpu()).nan_to_num().abs().max().item()
    theirs.result = mine.result = None
    return PairRow(prompt_tokens, theirs, mine, difference)


def pair_table(rows: list[PairRow], baseline_name: str, ours_name: str, target: Callable[[PairRow], str]) -> str:
    """A Markdown table of the rows: times, peak memories, ratios (inseq / ours), max difference, target."""
    header = (
        f"| prompt tokens | {baseline_name} | {ours_name} | time ratio (CPU time ratio) | peak {baseline_name} "
        f"| peak {ours_name} | peak ratio | max abs diff | target |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        theirs = row.baseline.error or f"{row.baseline.wall_s:.2f} s"
        theirs_peak = row.baseline.error or f"{row.baseline.peak_mib:,.0f} MiB"
        ratio = f"{row.time_ratio:.2f}x ({row.cpu_ratio:.2f}x)" if row.time_ratio is not None else "-"
        memory = f"{row.memory_ratio:.1f}x" if row.memory_ratio is not None else "-"
        diff = f"{row.max_abs_difference:.1e}" if row.max_abs_difference is not None else "-"
        lines.append(
            f"| {row.prompt_tokens:,} | {theirs} | {row.ours.wall_s:.2f} s | {ratio} | {theirs_peak} "
            f"| {row.ours.peak_mib:,.0f} MiB | {memory} | {diff} | {target(row)} |"
        )
    return "\n".join(lines)
