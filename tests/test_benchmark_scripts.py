"""The GPU suite runs on the CPU with a tiny config and prints its tables; the benchmark texts have exact lengths."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from inseq_ext.tiny_models import build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_common  # noqa: E402
import gpu_suite  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def table_rows(text: str, title: str) -> list[list[str]]:
    """Cells of the data rows of the Markdown table printed after ``title``."""
    block = text.split(title, 1)[1].strip().split("\n\n", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_gpu_suite_tiny_prints_both_tables(capsys):
    gpu_suite.main(["--tiny", "--attention-lengths", "24", "48", "--saliency-lengths", "24", "--new-tokens", "3"])
    printed = capsys.readouterr().out
    assert printed.startswith("model: tiny Llama, 2 layers x 64 hidden")
    attention = table_rows(printed, "Attention weights:")
    saliency = table_rows(printed, "Gradient saliency:")
    assert [row[0] for row in attention] == ["24", "48"] and [row[0] for row in saliency] == ["24"]
    for row in attention + saliency:
        assert re.fullmatch(r"[\d.]+ s", row[1]) and re.fullmatch(r"[\d.]+ s", row[2])  # both sides ran
        assert re.fullmatch(r"[\d.]+x \([\d.]+x\)", row[3])
        assert re.fullmatch(r"[\d,]+ MiB", row[4]) and re.fullmatch(r"[\d,]+ MiB", row[5])
        # Same numbers as inseq's methods: rotary_attention = eager attention, custom_saliency = saliency.
        assert float(row[7]) <= 1e-5


def test_out_of_memory_baseline_is_reported_not_raised():
    def exhausted():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 GiB")

    row = bench_common.compare(32768, exhausted, lambda: torch.zeros(2, 2))
    assert row.baseline.error == "out of memory (OutOfMemoryError)" and row.time_ratio is None
    table = bench_common.pair_table([row], "attention (eager)", "rotary_attention", lambda row: "-")
    assert "| 32,768 | out of memory (OutOfMemoryError) |" in table


@pytest.mark.parametrize("add_bos", [False, True])
def test_benchmark_texts_have_exact_token_counts(add_bos):
    tokenizer = build_tokenizer(add_bos=add_bos)
    prompt, full = bench_common.make_texts(tokenizer, 300, 16)
    assert full.startswith(prompt)
    assert len(tokenizer(prompt).input_ids) == 300 and len(tokenizer(full).input_ids) == 316
