"""``inseq_ext.explore`` in a notebook: a notebook showing two explorers is executed (nbclient, a kernel of this
environment), saved, and its saved HTML outputs are loaded in headless Chromium, where both explorers must work
independently (each lives in its own iframe, so ids, styles and script state never clash)."""

from __future__ import annotations

import subprocess
import sys

import inseq
import nbformat
import pytest
from browser_helpers import assert_map
from nbclient import NotebookClient

import inseq_ext
from inseq_ext.views.span import span_attribution

KERNEL_NAME = "inseq-ext-explorer-tests"
PROMPT = "The first president of America is"
CELLS = [
    """import logging
import inseq, inseq_ext
logging.getLogger("inseq").setLevel(logging.ERROR)
model = inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency",
                         model_kwargs={"attn_implementation": "eager"})""",
    f"""out = model.attribute({PROMPT!r}, generation_args={{"max_new_tokens": 4, "do_sample": False}},
                      step_scores=["probability"], show_progress=False)
inseq_ext.explore(out, model)""",
    f"""attention = model.attribute({PROMPT!r}, out.info["generated_texts"][0], method="attention",
                            show_progress=False)
inseq_ext.explore({{"custom_saliency": out, "attention": attention}}, model)""",
]


@pytest.fixture(scope="module")
def notebook_page(browser, tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("notebook")
    prefix = folder / "kernel"
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL_NAME],
        check=True,
        capture_output=True,
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=120, startup_timeout=120).execute()
    saved = folder / "explore.ipynb"
    nbformat.write(notebook, saved)
    outputs = [
        output["data"]["text/html"]
        for cell in nbformat.read(saved, as_version=4).cells
        for output in cell.outputs
        if "text/html" in output.get("data", {})
    ]
    # The saved outputs, one after the other, as a notebook front end shows them in one page.
    page_path = folder / "notebook_outputs.html"
    # The host page has an element with the explorers' own id and a style for their class: neither may reach in.
    host = "<style>.unit { background-color: rgb(0, 255, 0) !important; }</style><div id='prompt'>host</div>"
    page_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{host}"
        + "".join(f'<div class="output">{html}</div>' for html in outputs)
        + "</body></html>",
        encoding="utf-8",
    )
    tab = browser.new_page(viewport={"width": 1100, "height": 900})
    requests, errors = [], []
    tab.on("request", lambda request: requests.append(request.url))
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(page_path.as_uri())
    tab.wait_for_selector("iframe.inseq-ext-explorer >> nth=1")
    yield tab, outputs, page_path, requests, errors
    tab.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def same_outputs():
    """The notebook's attributions, recomputed here (the demo model is deterministic on CPU)."""
    model = inseq.load_model(
        inseq_ext.demo_model("gpt2"), "custom_saliency", model_kwargs={"attn_implementation": "eager"}
    )
    out = model.attribute(
        PROMPT, generation_args={"max_new_tokens": 4, "do_sample": False}, step_scores=["probability"],
        show_progress=False,
    )  # fmt: skip
    attention = model.attribute(PROMPT, out.info["generated_texts"][0], method="attention", show_progress=False)
    return out, attention


def _frames(page):
    handles = page.query_selector_all("iframe.inseq-ext-explorer")
    frames = [handle.content_frame() for handle in handles]
    for frame in frames:
        frame.wait_for_selector(".unit.generated")
    return handles, frames


def test_two_explorers_in_one_notebook_work_independently(notebook_page, same_outputs):
    page, outputs, page_path, requests, errors = notebook_page
    out, attention = same_outputs
    assert len(outputs) == 2 and all(html.startswith("<iframe") for html in outputs)
    handles, (first, second) = _frames(page)
    ids = [handle.get_attribute("id") for handle in handles]
    assert len(set(ids)) == 2 and all(ident.startswith("inseq-ext-explorer-") for ident in ids)
    # A click in the first explorer colors the first one only.
    first.click('.unit.generated[data-generated="1"]')
    assert_map(first, span_attribution(out, 1))
    assert second.text_content("#selection-info") == "No generated unit selected."
    assert second.locator(".unit.selected").count() == 0
    # The second explorer compares two methods on the same generation.
    assert not first.is_visible("#method-select") and second.is_visible("#method-select")
    second.select_option("#method-select", "1")
    second.click('.unit.generated[data-generated="2"]')
    assert_map(second, span_attribution(attention, 2))
    assert first.get_attribute("#selection-info", "data-first") == "1"  # untouched
    # assert_map checked the units' colors, so the host's .unit style did not reach in; each frame fits its content.
    for handle, frame in zip(handles, (first, second), strict=True):
        content = frame.evaluate("Math.ceil(document.body.getBoundingClientRect().height)")
        assert abs(handle.bounding_box()["height"] - content) <= 8
        assert frame.evaluate("document.getElementById('explorer-data') !== null")
    assert requests == [page_path.as_uri()] and not errors  # nothing fetched, no script error
