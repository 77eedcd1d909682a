"""The ``inseq-ext`` command line: happy path on the embedded demo model, and every bad-input case."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import inseq
import pytest

import inseq_ext
from inseq_ext import cli

PROMPT = "The first president of America is"


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    status = cli.main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_clean_error(status: int, err: str, *fragments: str) -> None:
    """Exit status 2, one ``inseq-ext: error:`` line naming the problem, no traceback."""
    assert status == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("inseq-ext: error:")]
    assert len(error_lines) == 1, err
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])


def leftover_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def happy_run(tmp_path_factory):
    """One full ``attribute`` run writing all three files (shared by the happy-path checks)."""
    folder = tmp_path_factory.mktemp("cli")
    paths = {
        "html": folder / "map.html",
        "heatmap": folder / "heatmap.html",
        "json": folder / "map.json",
        "save": folder / "sub" / "out.json",
    }
    # capsys is function-scoped; this module-scoped run captures by hand.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(
            ["attribute", PROMPT, "--max-new-tokens", "8", "--html", str(paths["html"]), "--heatmap-html",
             str(paths["heatmap"]), "--json",
             str(paths["json"]), "--save", str(paths["save"]), "--step-scores", "probability"]
        )  # fmt: skip
    return status, out.getvalue(), err.getvalue(), paths


def test_attribute_prints_heatmap_and_generation(happy_run):
    status, out, err, _ = happy_run
    assert status == 0, err
    # inseq's terminal heatmap: the prompt tokens and the generated answer of the trained demo model.
    for token in ("first", "president", "America", "George", "Washington"):
        assert token in out
    assert "generated: 'The first president of America is George Washington.'" in out
    assert "Attributing with custom_saliency" in out + err  # inseq's progress display


def test_attribute_writes_html_json_and_inseq_format(happy_run):
    status, _, _, paths = happy_run
    assert status == 0
    html = paths["html"].read_text(encoding="utf-8")
    # --html is the interactive explorer: one offline file whose embedded data holds the generation.
    assert 'id="explorer-data"' in html and "Washington" in html
    assert "http://" not in html and "https://" not in html
    assert "Washington" in paths["heatmap"].read_text(encoding="utf-8")  # inseq's static heatmap
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert payload["method"] == "custom_saliency"
    sequence = payload["sequences"][0]
    assert sequence["generated_text"] == PROMPT + " George Washington."
    assert [token.lstrip("\u0120") for token in sequence["target_tokens"]][:6] == PROMPT.split()
    scores = sequence["target_attributions"]
    first_step = [row[0] for row in scores[: sequence["attr_pos_start"]]]
    # custom_saliency is sum-normalized per generated token.
    assert sum(first_step) == pytest.approx(1.0, abs=1e-4)
    assert len(sequence["step_scores"]["probability"]) == sequence["attr_pos_end"] - sequence["attr_pos_start"]
    loaded = inseq.FeatureAttributionOutput.load(str(paths["save"]))
    assert loaded.info["generated_texts"] == [PROMPT + " George Washington."]
    assert loaded.sequence_attributions[0].target_attributions is not None
    # No temporary files left beside the outputs.
    assert leftover_files(paths["html"].parent) == ["heatmap.html", "map.html", "map.json", "sub"]
    assert leftover_files(paths["save"].parent) == ["out.json"]


def test_unknown_method(capsys, tmp_path):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--method", "saliencee", "--html", str(tmp_path / "a.html"))
    assert_clean_error(status, err, "unknown attribution method 'saliencee'", "custom_saliency", "saliency")
    assert leftover_files(tmp_path) == []


def test_empty_prompt(capsys, tmp_path):
    status, _, err = run_cli(capsys, "attribute", "   ", "--json", str(tmp_path / "a.json"))
    assert_clean_error(status, err, "prompt is empty")
    assert leftover_files(tmp_path) == []


def test_hub_name_that_cannot_be_loaded(capsys, tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    status, _, err = run_cli(
        capsys, "attribute", PROMPT, "--model", "no-such-user/no-such-model", "--html", str(tmp_path / "a.html")
    )
    assert_clean_error(status, err, "could not load model 'no-such-user/no-such-model'", "HF_HUB_OFFLINE", "demo:gpt2")
    assert "--model PATH" in err
    assert leftover_files(tmp_path) == []


def test_local_folder_that_is_not_a_model(capsys, tmp_path):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--model", str(tmp_path))
    assert_clean_error(status, err, "could not load a model from the local folder", str(tmp_path))


def test_unknown_demo_model(capsys):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--model", "demo:gpt5")
    assert_clean_error(status, err, "gpt2, llama")


@pytest.mark.parametrize("option", ["--html", "--json", "--save"])
def test_unwritable_output_path(capsys, tmp_path, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status, _, err = run_cli(capsys, "attribute", PROMPT, option, str(blocker / "out.html"))
    assert_clean_error(status, err, option, "cannot be written")
    status, _, err = run_cli(capsys, "attribute", PROMPT, option, str(tmp_path))
    assert_clean_error(status, err, option, "is a folder")
    assert leftover_files(tmp_path) == ["a_file"]


def test_failed_write_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves neither a partial file nor a temporary one."""

    def failing_save(self, path, **kwargs):
        Path(path).write_text('{"half": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inseq.FeatureAttributionOutput, "save", failing_save)
    target = tmp_path / "out.json"
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "2", "--no-show", "-q",
                             "--save", str(target))  # fmt: skip
    assert_clean_error(status, err, "--save", "No space left on device")
    assert leftover_files(tmp_path) == []


def test_bad_max_new_tokens(capsys):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "0")
    assert_clean_error(status, err, "--max-new-tokens")


def test_llama_demo_model_and_attention_method(capsys):
    status, out, err = run_cli(
        capsys, "attribute", "The capital of France is", "-m", "demo:llama", "-a", "attention", "-q"
    )
    assert status == 0, err
    assert "generated: 'The capital of France is Paris.'" in out
    assert "<s>" in out  # the Llama tokenizer's BOS token is shown as an attributed token


def test_demo_model_command(capsys):
    status, out, _ = run_cli(capsys, "demo-model", "llama")
    assert status == 0 and out.strip() == inseq_ext.demo_model("llama")
    status, _, err = run_cli(capsys, "demo-model", "bert")
    assert_clean_error(status, err, "gpt2, llama")


def test_ground_truth_command(capsys, tmp_path):
    table_path = tmp_path / "table.md"
    status, out, err = run_cli(capsys, "ground-truth", "--models", "gpt2", "--methods", "saliency", "random",
                               "--per-task", "1", "--markdown", str(table_path))  # fmt: skip
    assert status == 0, err
    assert "| gpt2 | `saliency` |" in out and "| gpt2 | random baseline |" in out
    assert table_path.read_text(encoding="utf-8") in out
    status, _, err = run_cli(capsys, "ground-truth", "--models", "gpt2", "--methods", "nope", "--per-task", "1")
    assert_clean_error(status, err, "nope", "custom_saliency")


def test_inseq_commands_are_reachable_with_our_methods(capsys, tmp_path):
    for command in ("attribute", "attribute-dataset", "attribute-context"):
        status, out, _ = run_cli(capsys, "inseq", command, "--help")
        assert status == 0
        assert "custom_saliency" in out and "block_gradient_x_input" in out, command
    saved = tmp_path / "inseq_out.json"
    status, out, err = run_cli(
        capsys, "inseq", "attribute", "-m", "demo:gpt2", "-a", "custom_saliency", "-i", "The capital of Italy is",
        "--generation_kwargs", '{"max_new_tokens": 2}', "--hide", "-o", str(saved),
    )  # fmt: skip
    assert status == 0, err
    loaded = inseq.FeatureAttributionOutput.load(str(saved))
    assert loaded.info["attribution_method"] == "custom_saliency"
    assert loaded.info["generated_texts"][0].startswith("The capital of Italy is Rome")
    assert leftover_files(tmp_path) == ["inseq_out.json"]
    status, _, err = run_cli(capsys, "inseq", "attribute", "-m", "demo:gpt2")
    assert_clean_error(status, err, "Input texts must be specified")


def test_python_dash_m_subprocess(tmp_path):
    html = tmp_path / "demo.html"
    completed = subprocess.run(
        [sys.executable, "-m", "inseq_ext", "attribute", "The capital of Japan is", "--html", str(html)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "Tokyo" in completed.stdout and "Saliency Heatmap" in completed.stdout
    assert "Tokyo" in html.read_text(encoding="utf-8")
