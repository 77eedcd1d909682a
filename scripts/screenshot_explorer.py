"""Write a demo explorer and save a screenshot of it (for the README) with headless Chromium.

Usage: ``python scripts/screenshot_explorer.py [--html out/explorer_demo.html] [--png docs/images/explorer.png]``.
The model is a tiny GPT-2 with random weights (offline), so the colors show the mechanics, not meaning.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import inseq

import inseq_ext  # noqa: F401  (registers the package's methods)
from inseq_ext.explorer import write_explorer
from inseq_ext.files import atomic_output
from inseq_ext.tiny_models import build_model

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=Path("out/explorer_demo.html"))
    parser.add_argument("--png", type=Path, default=Path("docs/images/explorer.png"))
    parser.add_argument("--chromium", default=os.environ.get("INSEQ_EXT_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("inseq").setLevel(logging.ERROR)

    model, tokenizer = build_model("gpt2", hidden=64, layers=2, heads=4)
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    prompts = ["The first president of America is", "Hello ladies and"]
    forced = [
        "The first president of America is George Washington. He was born in America.",
        "Hello ladies and gentlemen, I am a member of the Board.",
    ]
    outputs = [
        attribution_model.attribute(prompts, forced, show_progress=False, step_scores=["probability"]),
        attribution_model.attribute(prompts[0], forced[0], method="block_gradient_x_input", show_progress=False),
    ]
    write_explorer(outputs, args.html, title="inseq_ext explorer (tiny random GPT-2)")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 430})
        page.goto(args.html.resolve().as_uri())
        page.select_option("#granularity-select", "word")
        page.click('.unit.generated[data-generated="0"]')
        page.click('.unit.generated[data-generated="1"]', modifiers=["Shift"])
        page.hover('.unit[data-axis="target"][data-index="4"]')
        with atomic_output(args.png) as temporary:
            page.screenshot(path=str(temporary), type="png")
        browser.close()
    print(f"Explorer written to {args.html}; screenshot saved to {args.png}")


if __name__ == "__main__":
    main()
