"""Small demo models shipped with the package: really trained, loadable offline.

Each sub-folder (``gpt2``, ``llama``, ``translation``) holds a ``transformers`` model (``config.json``,
``model.safetensors``), its tokenizer, ``training_report.json`` (held-out accuracy per task) and ``probes.json``
(prompts whose answer depends on a known prompt token; for ``translation``, sentences with the source word aligned
to each target word).
``scripts/train_demo_models.py`` regenerates them.

>>> import inseq, inseq_ext
>>> model = inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Decoder-only language models (answer a prompt) and the encoder-decoder translation model (English to an invented
# language with a known word alignment, see scripts/demo_translation.py).
CAUSAL_DEMO_MODEL_NAMES = ("gpt2", "llama")
ENCODER_DECODER_DEMO_MODEL_NAMES = ("translation",)
DEMO_MODEL_NAMES = CAUSAL_DEMO_MODEL_NAMES + ENCODER_DECODER_DEMO_MODEL_NAMES
DEMO_MODELS_DIR = Path(__file__).resolve().parent


def demo_model(name: str = "gpt2") -> str:
    """Local directory of an embedded demo model, to pass wherever a model name or path is expected.

    Args:
        name: ``"gpt2"`` (GPT-2 architecture, learned positions) or ``"llama"`` (Llama architecture: rotary
            embeddings, grouped-query attention with 4 query and 2 key/value heads), both decoder-only, or
            ``"translation"`` (BART encoder-decoder translating English into an invented language).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), or when the model files are missing.
    """
    if name not in DEMO_MODEL_NAMES:
        raise ValueError(f"Unknown demo model {name!r}; choose one of: {', '.join(DEMO_MODEL_NAMES)}.")
    directory = DEMO_MODELS_DIR / name
    if not (directory / "model.safetensors").is_file():
        raise ValueError(
            f"The demo model {name!r} is missing from {directory}; regenerate it with scripts/train_demo_models.py."
        )
    return str(directory)


def demo_probes(name: str = "gpt2") -> list[dict[str, Any]]:
    """The probe set of a demo model: prompts, expected answers and ground-truth source positions.

    For ``"translation"``, each entry has ``source``, ``target`` (the reference translation), ``source_tokens``
    (special tokens included), ``target_words``, ``alignment`` (per target word, the index into ``source_tokens``
    of its source word) and ``word_classes`` (``det``, ``noun``, ``adj``, ``verb``, ``adv`` or ``punct``).
    For the other models, each entry has ``task``, ``prompt``, ``answer``, ``answer_first_token``,
    ``prompt_tokens`` (the model's tokens of the prompt, special tokens included), ``truth_positions`` (indices into
    ``prompt_tokens`` of the tokens that determine the first answer token) and ``truth_words``.
    """
    return json.loads((Path(demo_model(name)) / "probes.json").read_text(encoding="utf-8"))


def training_report(name: str = "gpt2") -> dict[str, Any]:
    """The training report of a demo model (size, training time, held-out greedy accuracy per task)."""
    return json.loads((Path(demo_model(name)) / "training_report.json").read_text(encoding="utf-8"))
