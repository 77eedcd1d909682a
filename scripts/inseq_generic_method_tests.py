"""Run inseq's own generic method tests (every registered method on a Marian encoder-decoder) with stand-in models.

inseq's test suite (``tests/models/test_huggingface_model.py`` of an inseq checkout) iterates three tests over every
registered attribution method on ``Helsinki-NLP/opus-mt-en-it``: ``test_batched_attribution_consistency_seq2seq``
(4 cases per method), ``test_attribute_seq2seq`` (48: 3 inputs x reference x attribute_target x convergence delta x
step_scores) and ``test_attribute_long_text_seq2seq`` (2), i.e. 54 cases per method. ``import inseq_ext`` puts this
package's methods in that registry. The models cannot be downloaded here, so this script runs the tests unchanged,
from a copy of the checkout's ``tests`` folder, with ``inseq.load_model`` answering the hub names with seeded tiny
models of the same architectures (:mod:`inseq_ext.tiny_models`; the tests check plumbing, shapes and consistency,
not trained behaviour).

Usage (the inseq checkout's tag should match the installed inseq, 0.7.1)::

    git clone --branch v0.7.1 https://github.com/inseq-team/inseq /tmp/inseq
    python scripts/inseq_generic_method_tests.py /tmp/inseq/tests --methods rotary_attention attention_rollout

Prints pytest's summary; exits with pytest's status.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Generic tests over every registered method on the seq2seq model (54 cases per method).
GENERIC_TESTS = (
    "test_batched_attribution_consistency_seq2seq",
    "test_attribute_seq2seq",
    "test_attribute_long_text_seq2seq",
)

STAND_IN_CONFTEST = '''
"""Stand-in models for inseq's tests: hub names answered by seeded tiny models."""
import inseq

import inseq_ext  # registers inseq_ext's methods
from inseq_ext.tiny_models import build_model

STAND_INS = {
    "Helsinki-NLP/opus-mt-en-it": "marian",
    "hf-internal-testing/tiny-random-t5": "t5",
    "distilgpt2": "gpt2",
    "gpt2": "gpt2",
    "hf-internal-testing/tiny-random-GPT2LMHeadModel": "gpt2",
}
_load_model = inseq.load_model


def load_stand_in(model, attribution_method=None, **kwargs):
    if isinstance(model, str) and model in STAND_INS:
        hf_model, tokenizer = build_model(STAND_INS[model])
        hf_model.config.name_or_path = model  # the tests check out.info["model_name"]
        kwargs.setdefault("tokenizer", tokenizer)
        return _load_model(hf_model, attribution_method, **kwargs)
    return _load_model(model, attribution_method, **kwargs)


inseq.load_model = load_stand_in
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inseq_tests", type=Path, help="the 'tests' folder of an inseq checkout")
    parser.add_argument("--methods", nargs="+", default=None, help="methods to run (default: every registered one)")
    args = parser.parse_args(argv)
    test_file = args.inseq_tests / "models" / "test_huggingface_model.py"
    if not test_file.is_file():
        parser.error(f"{test_file} not found: pass the 'tests' folder of an inseq checkout.")
    with tempfile.TemporaryDirectory(prefix="inseq-generic-tests-") as root:
        shutil.copytree(args.inseq_tests, Path(root) / "tests")
        (Path(root) / "conftest.py").write_text(STAND_IN_CONFTEST, encoding="utf-8")
        selection = " or ".join(GENERIC_TESTS)
        if args.methods:
            # Parametrized ids hold the method name between dashes or before the closing bracket, e.g.
            # test_attribute_seq2seq[step_scores0-True-True-True-saliency-texts0-reference_texts0].
            methods = " or ".join(f"-{method}- or -{method}]" for method in args.methods)
            selection = f"({selection}) and ({methods})"
        test_path = "tests/models/test_huggingface_model.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_path, "-k", selection]
        return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
