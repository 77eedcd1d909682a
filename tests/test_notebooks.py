"""Every notebook in notebooks/ runs top to bottom, offline, in a kernel of this environment's own Python."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "inseq-ext-tests"
# Wall-clock budget of one notebook, kernel start excluded (each notebook is meant to take well under 30 s).
NOTEBOOK_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A kernelspec that starts ``sys.executable`` (this venv), found through JUPYTER_PATH; offline settings."""
    prefix = tmp_path_factory.mktemp("kernel")
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL_NAME],
        check=True,
        capture_output=True,
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    monkeypatch_module.delenv("INSEQ_EXT_NOTEBOOK_MODEL", raising=False)  # the notebooks' offline default
    return prefix


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def execute(notebook: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in order; a cell error raises, and so does running past NOTEBOOK_TIMEOUT_S in total."""
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        # Each cell gets what is left of the notebook's budget, so the limit is per notebook, not per cell.
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    return client.execute()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_offline(kernel_env, tmp_path, path):
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{path.name} is stored with outputs; clear them before committing"
    )
    # A last cell reports the kernel's interpreter: it must be this environment's, not some other Python 3.
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    started = time.monotonic()
    executed = execute(notebook, tmp_path)
    elapsed = time.monotonic() - started
    kernel_python = executed.cells[-1].outputs[0]["text"].strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve()
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code_cells and all(cell.execution_count for cell in code_cells)
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    print(f"{path.name}: {elapsed:.1f} s")


def test_model_setting_names_another_model(kernel_env, tmp_path, monkeypatch_module):
    """INSEQ_EXT_NOTEBOOK_MODEL picks the model: here a local folder (a hub name works the same with a network)."""
    from inseq_ext.tiny_models import build_model

    hf_model, tokenizer = build_model("llama", layers=3)
    folder = tmp_path / "local-llama"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    notebook = nbformat.read(ROOT / "notebooks" / "02_block_gradient_x_input.ipynb", as_version=4)
    # The settings cell loads the model; the next code cell attributes with it.
    code_indices = [idx for idx, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    notebook.cells = notebook.cells[: code_indices[1] + 1]
    monkeypatch_module.setenv("INSEQ_EXT_NOTEBOOK_MODEL", str(folder))
    try:
        executed = execute(notebook, tmp_path)
    finally:
        monkeypatch_module.delenv("INSEQ_EXT_NOTEBOOK_MODEL")
    printed = "".join(
        output.get("text", "") for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert f"Model: {folder}" in printed
    # Llama: 3 blocks plus the embeddings on the layer axis, and the <s> its tokenizer adds is attributed.
    assert "x layers): (" in printed and ", 4)" in printed and "'<s>'" in printed
