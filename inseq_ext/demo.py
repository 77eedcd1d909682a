"""Offline demo: attribute a generation with ``custom_saliency`` and show inseq's heatmap.

Run with ``python -m inseq_ext.demo`` (or ``make demo``). Until the package ships trained demo models, the model is
a tiny GPT-2 built from a config with seeded random weights, so the map shows the mechanics, not meaning.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import inseq

import inseq_ext  # noqa: F401  (registers custom_saliency in inseq)
from inseq_ext.tiny_models import build_model


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="Hello ladies and")
    parser.add_argument("--max-new-tokens", type=int, default=9)
    parser.add_argument("--html", type=Path, default=Path("out/custom_saliency_demo.html"))
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("the prompt is empty; give some text to continue, e.g. 'Hello ladies and'")

    model, tokenizer = build_model("gpt2", hidden=64, layers=2, heads=4)
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    out = attribution_model.attribute(
        args.prompt,
        generation_args={"max_new_tokens": args.max_new_tokens, "do_sample": False},
        step_scores=["probability"],
    )
    print("Model: tiny GPT-2 with random weights (offline demo); scores: custom_saliency, L2 norm, sum-normalized.")
    html = out.show(return_html=True)
    write_atomically(args.html, html)
    print(f"Heatmap written to {args.html}")


if __name__ == "__main__":
    main()
