"""One-off cross-check of ``attnlrp`` against lxt 2.1, the AttnLRP authors' implementation (not part of CI).

lxt 2.1 cannot be a test dependency here: its requirements (open_clip_torch, zennit -> torchvision) make pip replace
torch 2.13.0 by torch 2.14 with CUDA packages, and with transformers 5 it neither imports nor runs unchanged. This
script installs around that, in this process only: lxt must be importable from a separate folder installed with

    .venv/bin/python -m pip install --no-deps --target /tmp/lxt_target lxt==2.1

and then, from the repository root:

    PYTHONPATH=/tmp/lxt_target HF_HUB_OFFLINE=1 .venv/bin/python scripts/crosscheck_lxt.py

It stubs the two imports lxt 2.1 needs that are absent (torchvision's ViT module; transformers'
``find_pruneable_heads_and_indices``, removed in transformers 5), and turns the plain dict lxt puts in place of a
modeling file's ``ALL_ATTENTION_FUNCTIONS`` back into an ``AttentionInterface`` (transformers 5 calls its
``get_interface``). lxt's patches change the model classes for the rest of the process, so ``attnlrp`` runs first.
Relevance of lxt is gradient x input of the target logit with seed 1 (lxt's README seeds with the logit itself,
which scales every relevance by the logit). Tiny Llama, Qwen2 and GPT-2 models, every bias (Qwen2's q/k/v, GPT-2's
linear and LayerNorm biases) set to random values so that the relevance biases absorb is part of the comparison.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

import inseq
import torch
from transformers.modeling_utils import AttentionInterface

import inseq_ext  # noqa: F401  (registers attnlrp)
from inseq_ext.tiny_models import build_model

FAMILIES = ("llama", "qwen2", "gpt2")


def import_lxt_monkey_patch():
    stubs = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.models": types.ModuleType("torchvision.models"),
        "torchvision.models.vision_transformer": types.ModuleType("torchvision.models.vision_transformer"),
    }
    stubs["torchvision.models.vision_transformer"].nn = torch.nn
    stubs["torchvision.models"].vision_transformer = stubs["torchvision.models.vision_transformer"]
    stubs["torchvision"].models = stubs["torchvision.models"]
    pytorch_utils = importlib.import_module("transformers.pytorch_utils")
    pytorch_utils.find_pruneable_heads_and_indices = getattr(
        pytorch_utils, "find_pruneable_heads_and_indices", lambda *args, **kwargs: None
    )
    sys.modules.update(stubs)
    try:
        from lxt.efficient import monkey_patch
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return monkey_patch


def lxt_relevance(model, ids: torch.Tensor, target_id: int) -> torch.Tensor:
    embeddings = model.get_input_embeddings()(ids[None]).detach().requires_grad_()
    logits = model(inputs_embeds=embeddings, use_cache=False).logits
    logits[0, -1, target_id].backward()
    return (embeddings.grad * embeddings).sum(-1)[0].detach()


def main() -> None:
    logging.getLogger("inseq").setLevel(logging.ERROR)
    models = {family: build_model(family) for family in FAMILIES}
    ours = {}
    for family, (model, tokenizer) in models.items():
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.data.normal_(std=0.5, generator=generator)
        out = inseq.load_model(model, "attnlrp", tokenizer=tokenizer).attribute(
            "Hello ladies and", "Hello ladies and gentlemen, I am", attributed_fn="logit", show_progress=False
        )
        ours[family] = out.sequence_attributions[0]
    monkey_patch = import_lxt_monkey_patch()
    for family, (model, _) in models.items():
        modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        monkey_patch(modeling)
        registry = AttentionInterface()
        for name, function in modeling.ALL_ATTENTION_FUNCTIONS.items():
            registry[name] = function
        registry["eager"] = modeling.eager_attention_forward  # lxt's wrapped eager function
        modeling.ALL_ATTENTION_FUNCTIONS = registry
        sequence = ours[family]
        ids = torch.tensor([token.id for token in sequence.target])
        start, steps = len(sequence.source), sequence.target_attributions.shape[1]
        worst = 0.0
        for step in range(steps):
            length = start + step
            reference = lxt_relevance(model, ids[:length], int(ids[length]))
            difference = (sequence.target_attributions[:length, step] - reference).abs().max()
            worst = max(worst, (difference / reference.abs().max()).item())
        print(f"{family}: max |attnlrp - lxt| / max |lxt| over {steps} generation steps: {worst:.1e}")


if __name__ == "__main__":
    main()
