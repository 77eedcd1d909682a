"""The model a notebook or course exercise runs on: a named model, the embedded demo model, or a tiny random one.

:func:`load_example_model` picks, in this order:

1. ``model`` when given, else the environment variable ``INSEQ_EXT_NOTEBOOK_MODEL`` when set: a hub name (needs a
   network) or a local model folder;
2. the package's embedded demo model of the ``family`` (``inseq_ext.demo_model(family)``), when the installed
   package ships demo models;
3. a tiny model with random weights from :mod:`inseq_ext.tiny_models`: the exercise runs offline anywhere, but its
   scores only show the mechanics, not what a trained model attends to.

The returned inseq model carries a one-line description of what was loaded in ``example_description``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import inseq

logger = logging.getLogger(__name__)

MODEL_ENV_VAR = "INSEQ_EXT_NOTEBOOK_MODEL"
# Size of the random fallback: big enough for layer/head plots to have some structure, still instant on a CPU.
RANDOM_MODEL_SIZE = {"hidden": 64, "layers": 4, "heads": 4}
# Demo families whose random stand-in has another architecture name: the translation model is a BART.
RANDOM_ARCHITECTURE_OF_FAMILY = {"translation": "bart"}


def load_example_model(
    method: str, model: str | None = None, family: str = "gpt2", **load_kwargs: Any
) -> inseq.models.AttributionModel:
    """An inseq ``AttributionModel`` for ``method`` on the example model (see the module docstring for the choice).

    Args:
        method: Attribution method name (``"custom_saliency"``, ``"rotary_attention"``, inseq's ``"saliency"``...).
        model: Hub name or local folder; ``None`` or ``""`` reads ``INSEQ_EXT_NOTEBOOK_MODEL``, and when that is
            unset too, the demo or random model of ``family`` is used.
        family: Architecture of the demo / random model: ``"gpt2"``, ``"llama"`` (rotary positions, needed by
            ``rotary_attention`` to differ from plain attention scores) or ``"translation"`` (the encoder-decoder
            demo model; its random stand-in is a tiny BART); the random fallback also takes the other
            :data:`inseq_ext.tiny_models.ARCHITECTURES`.
        **load_kwargs: Passed to ``inseq.load_model`` (e.g. ``device=``, method options).

    Returns:
        The inseq model; its ``example_description`` attribute says what was loaded.
    """
    import inseq_ext  # the package's own namespace, where the demo models appear when shipped

    name = model or os.environ.get(MODEL_ENV_VAR, "")
    demo_model = getattr(inseq_ext, "demo_model", None)
    if name:
        attribution_model = inseq.load_model(name, method, **load_kwargs)
        description = str(name)
    elif demo_model is not None:
        # Called only here: resolving a demo model may check or unpack its files.
        attribution_model = inseq.load_model(demo_model(family), method, **load_kwargs)
        description = f"embedded demo model ({family})"
    else:
        from .tiny_models import ARCHITECTURES, build_model

        architecture = RANDOM_ARCHITECTURE_OF_FAMILY.get(family, family)
        if architecture not in ARCHITECTURES:
            choices = ", ".join([*ARCHITECTURES, *RANDOM_ARCHITECTURE_OF_FAMILY])
            raise ValueError(f"Unknown model family {family!r}; choose one of {choices}.")
        hf_model, tokenizer = build_model(architecture, **RANDOM_MODEL_SIZE)
        attribution_model = inseq.load_model(hf_model, method, tokenizer=tokenizer, **load_kwargs)
        description = f"tiny {family} with random weights (mechanics only: the scores mean nothing)"
        logger.warning("No model named and no demo model shipped: using a %s.", description)
    attribution_model.example_description = description
    return attribution_model
