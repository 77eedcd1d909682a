"""Offline demo (``make demo``): ``inseq-ext attribute`` on the embedded, trained demo GPT-2.

``python -m inseq_ext.demo [PROMPT] [--html FILE]`` attributes the greedy continuation of PROMPT with
``custom_saliency``, prints inseq's heatmap in the terminal and writes it as HTML (default ``out/demo.html``).
Further ``inseq-ext attribute`` options (``--model``, ``--method``, ``--json``, ...) are passed through.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import main as cli_main

DEFAULT_PROMPT = "The first president of America is"
DEFAULT_HTML = "out/demo.html"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status of ``inseq-ext attribute``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0].startswith("-"):
        arguments.insert(0, DEFAULT_PROMPT)
    if "--html" not in arguments:
        arguments += ["--html", DEFAULT_HTML]
    return cli_main(["attribute", *arguments])


if __name__ == "__main__":
    raise SystemExit(main())
