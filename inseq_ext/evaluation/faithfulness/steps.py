"""What a faithfulness evaluation needs from an inseq attribution output, one generation step at a time.

For every attributed step of every sequence: the generated token and its id, the input the model read (the
attributed prefix for decoder-only models; the source and the decoder prefix for encoder-decoder models), one
score per input token, and which input tokens may be ranked and removed (all but special tokens such as ``<s>``).

Scores come from inseq's default aggregation of the output (what ``out.show()`` shows: e.g. the L2 norm over the
hidden size for ``saliency``, the mean over layers and heads for ``attention``, the signed maximum over layers for
``block_gradient_x_input``); an output that is already two-dimensional (tokens x steps) is used as it is, so
``evaluate_faithfulness(model, out.aggregate(...))`` evaluates any other reduction.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

#: A rationale for a sequence: input positions that matter for every step, or a mapping step -> positions.
Rationale = Collection[int] | Mapping[int, Collection[int]] | None


@dataclass(frozen=True)
class AttributedStep:
    """One generated token, the input it was predicted from and its attribution scores.

    Attributes:
        sequence: Index of the sequence in the output.
        step: Index of the step among the sequence's attributed steps (column of the attribution matrix).
        position: Position of the generated token in the target sequence.
        token: The generated token's text.
        target_id: The generated token's id.
        input_ids: The perturbable input: the target prefix (decoder-only) or the source (encoder-decoder).
        decoder_ids: Encoder-decoder models: the target prefix the decoder reads (never perturbed); else ``None``.
        scores: One attribution score per token of ``input_ids`` (NaN read as 0).
        candidates: Positions of ``input_ids`` that are ranked and may be removed: every non-special token.
        rationale: Positions of ``input_ids`` given as the known rationale of this step (candidates only), if any.
    """

    sequence: int
    step: int
    position: int
    token: str
    target_id: int
    input_ids: tuple[int, ...]
    decoder_ids: tuple[int, ...] | None
    scores: tuple[float, ...]
    candidates: tuple[int, ...]
    rationale: tuple[int, ...] | None = None


def _two_dimensional(sequence: FeatureAttributionSequenceOutput) -> FeatureAttributionSequenceOutput:
    """The sequence output with tokens x steps scores: inseq's default aggregation when there are more dimensions."""
    tensors = [t for t in (sequence.source_attributions, sequence.target_attributions) if t is not None]
    if any(tensor.ndim > 2 for tensor in tensors):
        return sequence.aggregate()
    return sequence


def attributed_steps(
    output: FeatureAttributionOutput,
    special_ids: Collection[int],
    is_encoder_decoder: bool,
    rationales: Sequence[Rationale] | None = None,
) -> list[list[AttributedStep]]:
    """The attributed steps of every sequence of ``output``.

    Args:
        output: An inseq attribution output (any method; several sequences allowed).
        special_ids: Token ids that are never ranked nor removed (the tokenizer's special tokens).
        is_encoder_decoder: Whether the model is an encoder-decoder (removal then applies to the source).
        rationales: Optional, one per sequence: positions of the perturbable input (prefix/source token indices)
            that form the known rationale, for every step, or a mapping ``{step: positions}``.

    Raises:
        ValueError: when the output lacks the scores needed (no source attributions for an encoder-decoder, no
            target attributions for a decoder-only model), or when rationales do not fit the output.
    """
    sequences = output.sequence_attributions
    if rationales is not None and len(rationales) != len(sequences):
        raise ValueError(f"rationales has {len(rationales)} entries for {len(sequences)} attributed sequences.")
    special = set(special_ids)
    result = []
    for index, raw in enumerate(sequences):
        sequence = _two_dimensional(raw)
        target_ids = [token.id for token in sequence.target]
        if is_encoder_decoder:
            scores = sequence.source_attributions
            if scores is None:
                raise ValueError(
                    "The output has no source attributions; for an encoder-decoder model the source is what "
                    "faithfulness removes. Attribute with the default attribute_target=False or True."
                )
            source_ids = tuple(token.id for token in sequence.source)
        else:
            scores = sequence.target_attributions
            if scores is None:
                raise ValueError("The output has no target attributions to evaluate (decoder-only model).")
        steps = []
        for column in range(scores.shape[1]):
            position = sequence.attr_pos_start + column
            if position >= len(target_ids):
                break
            if is_encoder_decoder:
                input_ids, decoder_ids = source_ids, tuple(target_ids[:position])
            else:
                input_ids, decoder_ids = tuple(target_ids[:position]), None
            values = tuple(_finite(float(value)) for value in scores[: len(input_ids), column])
            candidates = tuple(i for i, token_id in enumerate(input_ids) if token_id not in special)
            rationale = _step_rationale(rationales[index] if rationales else None, column, len(input_ids), index)
            if rationale is not None:
                rationale = tuple(sorted(set(rationale) & set(candidates)))
            steps.append(
                AttributedStep(
                    sequence=index,
                    step=column,
                    position=position,
                    token=sequence.target[position].token,
                    target_id=target_ids[position],
                    input_ids=input_ids,
                    decoder_ids=decoder_ids,
                    scores=values,
                    candidates=candidates,
                    rationale=rationale,
                )
            )
        result.append(steps)
    return result


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _step_rationale(rationale: Rationale, step: int, length: int, sequence: int) -> tuple[int, ...] | None:
    if rationale is None:
        return None
    if isinstance(rationale, Mapping):
        if step not in rationale:
            return None
        positions = rationale[step]
    else:
        positions = rationale
    positions = tuple(int(position) for position in positions)
    outside = [position for position in positions if not 0 <= position < length]
    if outside:
        raise ValueError(
            f"Rationale positions {outside} of sequence {sequence}, step {step} are outside its {length} input "
            f"tokens (positions index the prompt/prefix tokens for decoder-only models, the source tokens for "
            f"encoder-decoder models, from 0)."
        )
    return positions
