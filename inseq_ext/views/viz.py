"""Pictures of attribution outputs beyond inseq's own heatmaps."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from ..files import atomic_output


def _clean(token: str) -> str:
    """Token text for labels: byte-level/SentencePiece space markers removed, a bare space shown as ␣."""
    return token.replace("\u0120", " ").replace("\u2581", " ").strip() or "\u2423"


def _step_index(sequence: FeatureAttributionSequenceOutput, generated_token: int | str) -> int:
    """Column of the attribution tensors for a generated token, given by position or by text (first occurrence)."""
    generated = [_clean(tok.token) for tok in sequence.target[sequence.attr_pos_start : sequence.attr_pos_end]]
    if isinstance(generated_token, int):
        if not -len(generated) <= generated_token < len(generated):
            raise ValueError(f"generated_token {generated_token} is out of range: {len(generated)} generated tokens.")
        return generated_token % len(generated)
    if generated_token.strip() not in generated:
        raise ValueError(f"generated_token {generated_token!r} is not among the generated tokens {generated}.")
    return generated.index(generated_token.strip())


def plot_layer_heatmap(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    generated_token: int | str,
    path: str | os.PathLike,
    sequence: int = 0,
) -> Path:
    """Save a layers x attributed-tokens heatmap of a per-layer attribution for one generated token, as PNG.

    Made for ``block_gradient_x_input`` outputs (rows: embeddings, then block 0, 1, ...; columns: the tokens
    attributed at that step, source tokens before the target prefix), it works for any output whose attribution
    tensors have one trailing layer axis.

    Args:
        output: An attribution output, or one of its sequence attributions.
        generated_token: Which generated token: its position among the attributed steps (negative from the end),
            or its text (first occurrence).
        path: Where to write the PNG (written whole or not at all).
        sequence: Which sequence of ``output``, when it holds several.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seq = output.sequence_attributions[sequence] if isinstance(output, FeatureAttributionOutput) else output
    step = _step_index(seq, generated_token)
    columns, labels = [], []
    for tokens, scores in ((seq.source, seq.source_attributions), (seq.target, seq.target_attributions)):
        if scores is None:
            continue
        if scores.ndim != 3:
            raise ValueError(
                f"plot_layer_heatmap needs attributions with one layer axis (tokens x steps x layers); got shape "
                f"{tuple(scores.shape)}. Use it on block_gradient_x_input outputs before aggregating them."
            )
        valid = ~scores[:, step].isnan().all(dim=-1)
        columns.append(scores[valid, step])
        labels += [_clean(tok.token) for tok, keep in zip(tokens, valid.tolist(), strict=False) if keep]
    heat = torch.cat(columns).T.numpy()  # layers x tokens
    layer_labels = ["embeddings"] + [f"block {idx}" for idx in range(heat.shape[0] - 1)]
    target_text = _clean(seq.target[seq.attr_pos_start + step].token)

    figure = Figure(figsize=(max(4.0, 0.45 * len(labels) + 2), max(2.5, 0.35 * len(layer_labels) + 1.5)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    limit = float(abs(heat).max()) or 1.0
    image = axes.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(layer_labels)), layer_labels, fontsize=8)
    axes.set_title(f"gradient x input by layer, generating {target_text!r}", fontsize=10)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return Path(path)
