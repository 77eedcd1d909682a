"""The ``inseq-ext`` launcher: help and argument errors without heavy imports; static name lists = the registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import inseq
import pytest

import inseq_ext
import inseq_ext_cli
from inseq_ext.evaluation import ground_truth

HEAVY_MODULES = ("torch", "transformers", "inseq", "inseq_ext")


def imported_after(arguments: list[str]) -> tuple[int, list[str], str]:
    """Exit status, heavy modules imported and stderr of ``inseq_ext_cli.main(arguments)`` in a fresh interpreter."""
    code = (
        "import json, sys, inseq_ext_cli\n"
        f"status = inseq_ext_cli.main({arguments!r})\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})\n"
        "print(json.dumps([status, heavy]), file=sys.stderr)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    status, heavy = json.loads(completed.stderr.strip().splitlines()[-1])
    return status, heavy, completed.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["attribute", "--help"],
        ["ground-truth", "--help"],
        ["attribute-dataset", "--help"],
        ["attribute-dataset", "data.jsonl", "--out", "run", "--batch-size", "0"],
        ["summarize", "--help"],
        ["attribute", "The capital of France is", "--method", "saliencee"],
        ["attribute", "The capital of France is", "--step-scores", "nonexistent"],
        ["attribute", "The capital of France is", "--max-new-tokens", "0"],
        ["attribute", "   "],
        ["attribute"],
        ["no-such-command"],
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(arguments):
    status, heavy, stderr = imported_after(arguments)
    assert heavy == [], heavy
    if "--help" in arguments:
        assert status == 0
    else:
        assert status == 2
        errors = [line for line in stderr.splitlines() if line.startswith("inseq-ext: error:")]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr


def test_console_script_help_imports_nothing_heavy():
    """The installed ``inseq-ext`` script itself (its import log, ``-X importtime``, lists no heavy module)."""
    script = Path(sys.executable).parent / "inseq-ext"
    assert script.is_file(), "inseq-ext console script not installed (pip install -e .)"
    for arguments in (["--help"], ["attribute", "x", "--method", "nope"]):
        completed = subprocess.run(
            [str(script), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        )
        imported = [line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines() if "|" in line]
        assert "inseq_ext_cli" in imported  # the import log is on
        assert [name for name in imported if name.split(".")[0] in HEAVY_MODULES] == [], arguments


def test_python_dash_m_launcher_help():
    completed = subprocess.run(
        [sys.executable, "-m", "inseq_ext_cli", "attribute", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and "--max-new-tokens" in completed.stdout


def test_method_list_equals_the_registry():
    assert sorted(inseq_ext_cli.ATTRIBUTION_METHODS) == sorted(inseq.list_feature_attribution_methods())
    assert len(set(inseq_ext_cli.ATTRIBUTION_METHODS)) == len(inseq_ext_cli.ATTRIBUTION_METHODS)
    from inseq_ext.attr.base import ExtFeatureAttribution

    ours = {cls.method_name for cls in ExtFeatureAttribution.__subclasses__() if getattr(cls, "method_name", None)}
    assert ours <= set(inseq_ext_cli.PACKAGE_METHODS)


def test_step_function_list_equals_the_registry():
    assert list(inseq_ext_cli.STEP_FUNCTIONS) == list(inseq.list_step_functions())


def test_demo_and_ground_truth_lists_equal_the_package():
    assert inseq_ext_cli.DEMO_MODEL_NAMES == inseq_ext.DEMO_MODEL_NAMES
    assert inseq_ext_cli.GROUND_TRUTH_METHODS == ground_truth.DEFAULT_METHODS
    assert inseq_ext_cli.RANDOM_BASELINE == ground_truth.RANDOM_BASELINE
    assert inseq_ext_cli.DEFAULT_METHOD == "custom_saliency"


def test_help_lists_methods_defaults_and_demo_models(capsys):
    assert inseq_ext_cli.main(["attribute", "--help"]) == 0
    # argparse wraps help text at the terminal width; compare without line breaks.
    text = " ".join(capsys.readouterr().out.split())
    assert "default: custom_saliency" in text
    for method in inseq_ext_cli.ATTRIBUTION_METHODS:
        assert method in text
    assert "demo:translation" in text and "default: demo:gpt2" in text
    assert "(default: the model's generation config, max_new_tokens or max_length, else 20;" in text


def test_every_subcommand_handler_resolves():
    """Each command's handler string names a function of the package (so a typo fails here, not for a user)."""
    parser = inseq_ext_cli.build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    for name, subparser in subparsers.choices.items():
        handler = subparser.get_default("handler")
        assert callable(inseq_ext_cli.load_handler(handler)), name


def test_packaging_declares_the_launcher_and_an_spdx_license():
    """The console script is the launcher, which ships as a module; the license is an SPDX string (setuptools
    deprecates the ``license = {text = ...}`` table and warns at every install)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["scripts"]["inseq-ext"] == "inseq_ext_cli:main"
    assert "inseq_ext_cli" in project["tool"]["setuptools"]["py-modules"]
