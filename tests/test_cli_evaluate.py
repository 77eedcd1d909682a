"""``inseq-ext evaluate`` / ``evaluate-demos``: offline on the demo models, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from test_cli import assert_clean_error, leftover_files, run_cli

from inseq_ext import cli
from inseq_ext.evaluation.faithfulness.demo_table import demo_comparison, demo_markdown

PROMPT = "The capital of Norway is"


@pytest.fixture(scope="module")
def evaluate_run(tmp_path_factory):
    """One ``evaluate`` run on the demo Llama with two methods, writing JSON, Markdown and the curve plots."""
    folder = tmp_path_factory.mktemp("evaluate")
    prompts = folder / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": PROMPT, "truth_positions": [4]})
        + "\n\n"
        + json.dumps({"prompt": "The code is pear white stone. Once more, the code is", "continuation": " pear"})
        + "\n"
    )
    paths = {
        "json": folder / "r.json",
        "markdown": folder / "r.md",
        "plot": folder / "curves.png",
        "html": folder / "explorer.html",
    }
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(
            ["evaluate", "--prompts", str(prompts), "--model", "demo:llama", "--methods", "custom_saliency,attention",
             "--max-new-tokens", "3", "--bootstrap", "200", "--json", str(paths["json"]), "--markdown",
             str(paths["markdown"]), "--plot", str(paths["plot"]), "--html", str(paths["html"])]
        )  # fmt: skip
    return status, out.getvalue(), err.getvalue(), paths


def test_evaluate_prints_a_ranked_table_with_the_random_baseline(evaluate_run):
    status, out, err, _ = evaluate_run
    assert status == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("rank"))
    for column in ("comp AOPC", "suff AOPC", "Soft-NC", "Soft-NS", "pointing", "deletion AUC"):
        assert column in header
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert sorted(row[1] for row in rows) == ["attention", "custom_saliency"]
    assert any(line.startswith("-") and "random baseline" in line for line in lines)
    comp = [float(row[2]) for row in rows]
    assert comp == sorted(comp, reverse=True)  # ranked by comprehensiveness AOPC
    assert "95% bootstrap CI" in out and "(comp AOPC)" in out  # legend, paired difference line


def test_evaluate_writes_json_markdown_and_one_plot_per_method(evaluate_run):
    status, out, _, paths = evaluate_run
    assert status == 0
    payload = json.loads(paths["json"].read_text())
    assert payload["ranking"] == [line.split()[1] for line in out.splitlines() if line[:1].isdigit()]
    result = payload["results"]["custom_saliency"]
    assert result["sequences"] == 2 and len(result["metrics"]["comprehensiveness"]["values"]) == 2
    assert payload["targets"][1].endswith(" pear")  # the forced continuation
    assert result["metrics"]["pointing_accuracy"]["values"][1] == [None]  # no rationale for the second prompt
    assert paths["markdown"].read_text().count("| ") > 3
    for method in ("custom_saliency", "attention"):
        assert (paths["plot"].parent / f"curves_{method}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_explorer_shows_each_methods_faithfulness_beside_its_map(evaluate_run):
    """--html: one page, a method menu over both maps of each prompt, each map's per-prompt faithfulness."""
    status, _, _, paths = evaluate_run
    assert status == 0
    page = paths["html"].read_text()
    data = page.split('<script type="application/json" id="explorer-data">', 1)[1].split("</script>", 1)[0]
    payload = json.loads(data.replace("<\\/", "</"))
    values = json.loads(paths["json"].read_text())["results"]
    entries = payload["sequences"]
    assert len(entries) == 2  # one entry per prompt
    for index, entry in enumerate(entries):
        assert [method["label"] for method in entry["methods"]] == list(values)  # ranked order
        for method in entry["methods"]:
            tokens = values[method["label"]]["metrics"]["comprehensiveness"]["values"][index]
            expected = sum(tokens) / len(tokens)
            assert method["metrics"]["comp AOPC"] == pytest.approx(expected, abs=1e-3)


def test_evaluate_translation_scores_rebuilt_and_eager_attention_alike(capsys, tmp_path):
    """Encoder-decoder: the source is perturbed; rotary_attention (SDPA, rebuilt cross-attention) and inseq's
    attention (eager copy) give the same maps, hence the same values."""
    status, out, err = run_cli(
        capsys, "evaluate", "this small baker helps a green teacher .", "--model", "demo:translation", "--methods",
        "attention,rotary_attention", "--bootstrap", "0", "--random-seeds", "1", "--metrics", "comprehensiveness",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert status == 0, err
    assert "rotary_attention: attributed" in err and "attention: attributed" in err
    assert sorted(line.split()[1] for line in out.splitlines() if line[:1].isdigit()) == [
        "attention",
        "rotary_attention",
    ]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    eager, rebuilt = (results[m]["metrics"]["comprehensiveness"]["values"] for m in ("attention", "rotary_attention"))
    assert len(eager[0]) > 3 and eager[0] == pytest.approx(rebuilt[0], abs=1e-6)


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--methods", "saliencee"], ["unknown attribution method 'saliencee'"]),
        (["--metrics", "comprehensivness"], ["choose from: comprehensiveness"]),
        (["--metrics", "auprc"], ["rationale"]),
        (["--ks", "0.05,abc"], ["--ks", "'abc'"]),
        (["--ks", "1.5"], ["(0, 1]"]),
        (["--ks", "0"], ["at least 1"]),
        (["--removal", "mask"], ["--removal", "'delete', 'replace'"]),
        (["--baseline-token", "<unk>"], ["--removal replace"]),
        (["--random-seeds", "-1"], ["--random-seeds"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--model", "demo:gpt5"], ["gpt5"]),
    ],
)
def test_evaluate_bad_input_is_one_line(capsys, tmp_path, arguments, fragments):
    status, _, err = run_cli(capsys, "evaluate", PROMPT, "--json", str(tmp_path / "r.json"), *arguments)
    assert_clean_error(status, err, *fragments)
    assert leftover_files(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
        ('{"text": "a"}\n', 'line 1: needs a non-empty "prompt"'),
        ('{"prompt": "a", "truth_positions": "3"}\n', "truth_positions"),
        ("\n", "no prompts"),
    ],
)
def test_evaluate_bad_prompts_file(capsys, tmp_path, content, fragment):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content)
    status, _, err = run_cli(capsys, "evaluate", "--prompts", str(prompts))
    assert_clean_error(status, err, fragment)


def test_evaluate_needs_exactly_one_prompt_source(capsys, tmp_path):
    status, _, err = run_cli(capsys, "evaluate")
    assert_clean_error(status, err, "PROMPT or --prompts")
    status, _, err = run_cli(capsys, "evaluate", PROMPT, "--prompts", str(tmp_path / "missing.jsonl"))
    assert_clean_error(status, err, "one of them")
    status, _, err = run_cli(capsys, "evaluate", "--prompts", str(tmp_path / "missing.jsonl"))
    assert_clean_error(status, err, "cannot be read")


def test_demo_table_lists_every_method_with_ground_truth_and_random_baseline():
    comparison = demo_comparison(
        "gpt2", ["custom_saliency", "attention", "value_zeroing"], per_task=1, bootstrap=50, random_seeds=2
    )
    assert set(comparison.results) == {"custom_saliency", "attention"}
    assert "value_zeroing" in comparison.failures  # fails inside inseq 0.7.1 with transformers 5: reported
    table = demo_markdown({"gpt2": comparison})
    assert "| model | method | comp AOPC ↑ | suff AOPC ↓ | Soft-NC ↑ | Soft-NS ↑ | pointing ↑ |" in table
    assert "| gpt2 | random baseline |" in table and "`value_zeroing`: not evaluated" in table
    result = comparison.results["custom_saliency"]
    assert result.sequences == 4 and result.steps == 4  # one probe per task, its first answer token
    # Pointing accuracy on the probes' known source tokens equals the ground-truth hit rate of that method.
    from inseq_ext.evaluation.ground_truth import evaluate_model

    hits = evaluate_model("gpt2", ["custom_saliency"], per_task=1)[0]
    assert result["pointing_accuracy"].mean == pytest.approx(hits.overall)


@pytest.mark.parametrize(
    "arguments",
    [
        ["evaluate", "--help"],
        ["evaluate-demos", "--help"],
        ["evaluate", PROMPT, "--methods", "saliency,saliencee"],
        ["evaluate", PROMPT, "--metrics", "comprehensivness"],
        ["evaluate", PROMPT, "--ks", "2.5"],
        ["evaluate", "  "],
        ["evaluate-demos", "--models", "gpt5"],
    ],
)
def test_evaluate_help_and_argument_errors_import_nothing_heavy(arguments):
    from test_cli_launcher import imported_after

    status, heavy, stderr = imported_after(arguments)
    assert heavy == [], heavy
    assert status == (0 if "--help" in arguments else 2), stderr


def test_static_metric_names_equal_the_evaluation_metrics():
    import inseq_ext_cli
    from inseq_ext.evaluation.faithfulness import METRICS

    assert inseq_ext_cli.FAITHFULNESS_METRICS == METRICS
