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
import inseq_ext_cli
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
    """One full ``attribute`` run writing all four files, each into a folder that does not exist yet."""
    folder = tmp_path_factory.mktemp("cli")
    paths = {
        "html": folder / "explorer" / "map.html",
        "heatmap": folder / "static" / "heatmap.html",
        "json": folder / "data" / "nested" / "map.json",
        "save": folder / "sub" / "out.json",
    }
    # capsys is function-scoped; this module-scoped run captures by hand. --step-scores comes before the prompt:
    # it takes exactly one value (comma-separated names), so the prompt is not swallowed.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(
            ["attribute", "--step-scores", "probability,entropy", PROMPT, "--max-new-tokens", "8", "--html",
             str(paths["html"]), "--heatmap-html", str(paths["heatmap"]), "--json", str(paths["json"]), "--save",
             str(paths["save"])]
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
    static = paths["heatmap"].read_text(encoding="utf-8")  # inseq's static heatmap, with the terminal's labels
    assert "Washington" in static and "\u0120" not in static
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
    assert set(sequence["step_scores"]) == {"probability", "entropy"}
    # Missing folders were created (and said so); no temporary files are left beside the outputs.
    for path in paths.values():
        assert leftover_files(path.parent) == [path.name]


def test_created_folders_are_reported(happy_run):
    status, out, _, paths = happy_run
    assert status == 0
    assert f"Explorer written to {paths['html']} (created the folder {paths['html'].parent})" in out
    assert f"JSON heatmap written to {paths['json']} (created the folder {paths['json'].parent.parent})" in out


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
    assert_clean_error(status, err, "unknown demo model 'demo:gpt5'", "demo:gpt2, demo:llama, demo:translation")


@pytest.mark.parametrize("path", ["/nonexistent/path", "./no/such/model", "~/no-such-model-folder/"])
def test_model_folder_that_does_not_exist(capsys, path):
    """A value that can only be a path says "no such folder" (not offline mode or the hub cache)."""
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--model", path)
    assert_clean_error(status, err, "no such folder", path)
    assert "offline" not in err and "cache" not in err


def test_model_given_as_a_file(capsys, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--model", str(weights))
    assert_clean_error(status, err, "is a file", "model folder")


def test_method_that_refuses_the_model_is_blamed(capsys):
    """A method that cannot attribute a model gets a method error, not a model-loading error."""
    status, _, err = run_cli(capsys, "attribute", "the cat sleeps .", "-m", "demo:translation", "-a",
                             "rotary_attention")  # fmt: skip
    if status == 0:  # rotary_attention learned encoder-decoders: the generic check below still covers the rule
        return
    assert_clean_error(status, err, "the method 'rotary_attention' cannot attribute", "demo:translation",
                       "Choose another --method")  # fmt: skip
    assert "could not load" not in err and "leave out --model" not in err


def test_any_method_refusal_is_a_method_error(capsys, monkeypatch):
    from inseq_ext.attr.custom_saliency import CustomSaliencyAttribution

    def refuse(self, attribution_model, **kwargs):
        raise ValueError("custom_saliency cannot handle this model family.")

    monkeypatch.setattr(CustomSaliencyAttribution, "__init__", refuse)
    status, _, err = run_cli(capsys, "attribute", PROMPT, "-a", "custom_saliency")
    assert_clean_error(status, err, "the method 'custom_saliency' cannot attribute embedded demo model demo:gpt2",
                       "cannot handle this model family")  # fmt: skip


@pytest.mark.parametrize("option", ["--html", "--heatmap-html", "--json", "--save"])
def test_unwritable_output_path(capsys, tmp_path, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status, _, err = run_cli(capsys, "attribute", PROMPT, option, str(blocker / "out.html"))
    assert_clean_error(status, err, option, "cannot be written", "is not a folder")
    status, _, err = run_cli(capsys, "attribute", PROMPT, option, str(blocker / "deeper" / "out.html"))
    assert_clean_error(status, err, option, "cannot be written", "is not a folder")
    status, _, err = run_cli(capsys, "attribute", PROMPT, option, str(tmp_path))
    assert_clean_error(status, err, option, "is a folder")
    assert leftover_files(tmp_path) == ["a_file"]


def test_unwritable_markdown_path(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status, _, err = run_cli(capsys, "ground-truth", "--models", "gpt2", "--markdown", str(blocker / "t.md"))
    assert_clean_error(status, err, "--markdown", "cannot be written")


def test_failed_write_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves neither a partial file nor a temporary one."""

    def failing_save(self, path, **kwargs):
        Path(path).write_text('{"half": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inseq.FeatureAttributionOutput, "save", failing_save)
    target = tmp_path / "new" / "folder" / "out.json"
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "2", "--no-show", "-q",
                             "--save", str(target))  # fmt: skip
    assert_clean_error(status, err, "--save", "No space left on device")
    assert leftover_files(tmp_path) == []  # the folders created for the file are removed with it


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_max_new_tokens(capsys, value):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", value)
    assert_clean_error(status, err, "--max-new-tokens")


def test_generation_past_the_model_positions(capsys):
    """The demo GPT-2 has 128 positions: a generation that would run past them is refused before generating."""
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "200", "--no-show")
    assert_clean_error(status, err, "206 tokens (6 + 200 new tokens), over the limit of 128 tokens",
                       "At most 122 new tokens fit after this prompt: use --max-new-tokens 122 or less")  # fmt: skip
    status, out, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "122", "--no-show", "-q")
    assert status == 0, err


def test_default_length_comes_from_the_model_and_fits_its_positions():
    model = inseq.load_model(inseq_ext.demo_model("gpt2"), "dummy")
    assert cli.resolve_max_new_tokens(model, PROMPT, None) == inseq_ext_cli.DEFAULT_MAX_NEW_TOKENS
    long_prompt = " ".join(["the"] * 120)
    length = len(model.tokenizer(long_prompt)["input_ids"])
    assert cli.decoder_input_length(model, long_prompt) == length and 128 - 20 < length < 128
    assert cli.resolve_max_new_tokens(model, long_prompt, None) == 128 - length  # shortened to fit
    assert cli.resolve_max_new_tokens(model, long_prompt, 5) == 5
    model.model.generation_config.max_new_tokens = 3
    assert cli.resolve_max_new_tokens(model, PROMPT, None) == 3
    translation = inseq.load_model(inseq_ext.demo_model("translation"), "dummy")
    # Its generation config says max_length=32 decoder tokens, the first being the decoder start token.
    assert translation.model.generation_config.max_length == 32
    assert cli.resolve_max_new_tokens(translation, "the cat sleeps .", None) == 31


def test_step_scores_unknown_name(capsys):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--step-scores", "nonexistent")
    assert_clean_error(status, err, "unknown step function 'nonexistent'", "probability", "entropy")
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--step-scores", "probability,nonexistent")
    assert_clean_error(status, err, "nonexistent")


def test_step_scores_refused_by_a_final_step_method(capsys):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "-a", "attention", "--step-scores", "probability")
    assert_clean_error(status, err, "--step-scores", "attention")


def test_method_args_reach_the_method(capsys, tmp_path):
    path = tmp_path / "map.json"
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--max-new-tokens", "3", "--no-show", "-q", "--json",
                             str(path), "--method-arg", "normalize=max", "--method-arg", "norm=linf")  # fmt: skip
    assert status == 0, err
    sequence = json.loads(path.read_text(encoding="utf-8"))["sequences"][0]
    start = sequence["attr_pos_start"]
    for step in range(start, sequence["attr_pos_end"]):
        column = [row[step - start] for row in sequence["target_attributions"][:step] if row[step - start] is not None]
        assert max(column) == pytest.approx(1.0)  # normalize=max: the largest score of each step is 1
    model = inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")
    expected = model.attribute(PROMPT, sequence["generated_text"], normalize="max", norm="linf", show_progress=False)
    first = expected.aggregate().sequence_attributions[0].target_attributions[:start, 0].tolist()
    assert [row[0] for row in sequence["target_attributions"][:start]] == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--method-arg", "nrm=l1"], ["--method-arg", "Unknown option 'nrm' for custom_saliency", "norm, normalize"]),
        (["--method-arg", "norm=l3"], ["--method-arg", "Unknown norm 'l3'", "'l1'"]),
        (["-a", "integrated_gradients", "--method-arg", "n_step=5"], ["'n_step'", "n_steps"]),
        (["-a", "block_gradient_x_input", "--method-arg", "blocks=no.such.blocks"], ["no module at 'no.such.blocks'"]),
        (["--method-arg", "norm"], ["expected NAME=VALUE"]),
        (["--method-arg", "norm=l1", "--method-arg", "norm=l2"], ["norm given twice"]),
    ],
)
def test_bad_method_args(capsys, arguments, fragments):
    status, _, err = run_cli(capsys, "attribute", PROMPT, "--no-show", "-q", *arguments)
    assert_clean_error(status, err, *fragments)


@pytest.mark.parametrize(
    ("text", "value"),
    [("50", 50), ("0.5", 0.5), ("True", True), ("false", False), ("none", None), ("[1, 2]", [1, 2]), ("l1", "l1"),
     ('"50"', "50"), ("model.layers", "model.layers")],
)  # fmt: skip
def test_method_arg_values(text, value):
    assert inseq_ext_cli.parse_value(text) == value


def test_non_ascii_prompt_shows_decoded_text(capsys):
    """Byte-level tokens are shown as the text they decode to, not as GPT-2's byte alphabet (``Ã§``)."""
    status, out, err = run_cli(capsys, "attribute", "Le garçon ¾ İstanbul is", "--max-new-tokens", "2", "-q")
    assert status == 0, err
    heatmap = out.split("Saliency Heatmap", 1)[1]
    for char in ("ç", "¾", "İ"):
        assert char in heatmap
    for mojibake in ("Ã", "Â", "Ä°", "Ġ"):
        assert mojibake not in heatmap


def test_translation_prompt_with_capitals_and_unknown_words(capsys):
    status, out, err = run_cli(capsys, "attribute", "The Big dog sees a small zebra .", "-m", "demo:translation",
                               "--no-show", "-q")  # fmt: skip
    assert status == 0, err
    assert "vocabulary is lowercase; the prompt is lowercased to 'the big dog sees a small zebra .'" in err
    assert "1 word of the prompt is not in the model's vocabulary and read as <unk>: 'zebra'" in err


def test_llama_demo_model_and_attention_method(capsys):
    status, out, err = run_cli(
        capsys, "attribute", "The capital of France is", "-m", "demo:llama", "-a", "attention", "-q"
    )
    assert status == 0, err
    assert "generated: 'The capital of France is Paris.'" in out
    assert "<s>" in out  # the Llama tokenizer's BOS token is shown as an attributed token
    assert "Target Attention Heatmap" in out and "Saliency" not in out  # attention weights are not saliency


def test_demo_model_command(capsys):
    status, out, _ = run_cli(capsys, "demo-model", "llama")
    assert status == 0 and out.strip() == inseq_ext.demo_model("llama")
    status, _, err = run_cli(capsys, "demo-model", "bert")
    assert_clean_error(status, err, "gpt2, llama")


def test_ground_truth_command(capsys, tmp_path):
    table_path = tmp_path / "tables" / "table.md"  # a folder that does not exist yet: created, and said so
    status, out, err = run_cli(capsys, "ground-truth", "--models", "gpt2", "--methods", "saliency", "random",
                               "--per-task", "1", "--markdown", str(table_path))  # fmt: skip
    assert status == 0, err
    assert "| gpt2 | `saliency` |" in out and "| gpt2 | random baseline |" in out
    assert table_path.read_text(encoding="utf-8") in out
    assert f"Table written to {table_path} (created the folder {table_path.parent})" in out
    assert "Loading weights" not in err
    status, _, err = run_cli(capsys, "ground-truth", "--models", "gpt2", "--methods", "nope", "--per-task", "1")
    assert_clean_error(status, err, "nope", "custom_saliency")


def test_inseq_commands_are_reachable_with_our_methods(capsys, tmp_path):
    for command in ("attribute", "attribute-dataset", "attribute-context"):
        status, out, _ = run_cli(capsys, "inseq", command, "--help")
        assert status == 0
        assert "custom_saliency" in out and "block_gradient_x_input" in out, command
    saved = tmp_path / "new_folder" / "inseq_out.json"
    status, out, err = run_cli(
        capsys, "inseq", "attribute", "-m", "demo:gpt2", "-a", "custom_saliency", "-i", "The capital of Italy is",
        "--generation_kwargs", '{"max_new_tokens": 2}', "--hide", "-o", str(saved),
    )  # fmt: skip
    assert status == 0, err
    loaded = inseq.FeatureAttributionOutput.load(str(saved))
    assert loaded.info["attribution_method"] == "custom_saliency"
    assert loaded.info["generated_texts"][0].startswith("The capital of Italy is Rome")
    assert leftover_files(saved.parent) == ["inseq_out.json"]
    # inseq's own message names the requested file, not the temporary one it is written to.
    assert f"attributions to {saved}" in out and ".partial" not in out
    assert f"(created the folder {saved.parent})" in out
    assert "Loading weights" not in out + err
    status, _, err = run_cli(capsys, "inseq", "attribute", "-m", "/no/such/model", "-i", "x")
    assert_clean_error(status, err, "no such folder: /no/such/model")
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


def test_translation_run_is_complete_and_quiet(capfd):
    """The translation demo: a whole sentence (the model's own length), and none of transformers' noise on the
    file descriptors: no "Loading weights" progress bar, no "Both max_new_tokens and max_length" warning."""
    status = cli.main(["attribute", "this small baker helps a green teacher .", "-m", "demo:translation", "-q",
                       "--no-show"])  # fmt: skip
    captured = capfd.readouterr()
    assert status == 0, captured.err
    assert "generated: 'rani talatu fogire sida gegi sosi fuzo .'" in captured.out  # the probe's reference
    noise = captured.out + captured.err
    assert "Loading weights" not in noise and "max_new_tokens" not in noise and "max_length" not in noise
