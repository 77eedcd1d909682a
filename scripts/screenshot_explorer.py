"""Write a demo explorer and save a screenshot of it (for the README) with headless Chromium.

Usage: ``python scripts/screenshot_explorer.py [--html out/explorer_demo.html] [--png docs/images/explorer.png]``.
The model is the embedded, trained demo GPT-2 (offline): the maps show what it relied on for its answers.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import inseq

import inseq_ext  # registers the package's methods
from inseq_ext.files import atomic_output
from inseq_ext.views.explorer import write_explorer

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

    attribution_model = inseq.load_model(
        inseq_ext.demo_model("gpt2"), "custom_saliency", model_kwargs={"attn_implementation": "eager"}
    )
    prompts = [
        "The first president of America is",
        "Review: the acting was superb, the film is about a king, it was shown at the library. Sentiment:",
    ]
    generation = {"max_new_tokens": 4, "do_sample": False}
    first = attribution_model.attribute(
        prompts[0], generation_args=generation, step_scores=["probability"], show_progress=False
    )
    text = first.info["generated_texts"][0]
    # Three methods on the first generation (a method switch), then the review with custom_saliency.
    outputs = [
        {
            "custom_saliency": first,
            "attention": attribution_model.attribute(prompts[0], text, method="attention", show_progress=False),
            "block_gradient_x_input": attribution_model.attribute(
                prompts[0], text, method="block_gradient_x_input", show_progress=False
            ),
        },
        attribution_model.attribute(
            prompts[1], generation_args=generation, step_scores=["probability"], show_progress=False
        ),
    ]
    write_explorer(outputs, args.html, tokenizer=attribution_model, title="inseq_ext explorer (demo GPT-2)")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(args.html.resolve().as_uri())
        page.select_option("#granularity-select", "word")
        page.click('.unit.generated[data-generated="0"]')
        page.click('.unit.generated[data-generated="1"]', modifiers=["Shift"])
        page.hover('.unit[data-role="prompt"][data-index="4"]')
        with atomic_output(args.png) as temporary:
            page.screenshot(path=str(temporary), type="png")
        browser.close()
    print(f"Explorer written to {args.html}; screenshot saved to {args.png}")


if __name__ == "__main__":
    main()
