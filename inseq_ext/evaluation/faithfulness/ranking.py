"""Rankings of input tokens and the perturbed inputs built from them.

A step's input tokens are ranked by the magnitude of their attribution scores (a large negative contribution is
as decisive as a large positive one). Special tokens are never ranked and never removed. Ties are broken by a
seeded random order, so that a constant map ranks like a random one instead of left to right.

The random baseline ranks the same tokens by seeded random priorities, drawn once per sequence and position: a
uniformly random order at every step, which, like an attribution that stays stable over steps, keeps the same
tokens on top from one step to the next, so its removals can share forward passes across steps too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

from .scorer import TokenQuery, stable_seed
from .steps import AttributedStep

#: Fractions of a step's rankable tokens removed by default (ERASER's bins: 1, 5, 10, 20 and 50 %).
DEFAULT_KS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)
REMOVALS = ("delete", "replace")


@dataclass(frozen=True)
class Ranking:
    """An order of a step's candidate tokens, most important first, with their importances.

    Attributes:
        order: Candidate positions, most important first.
        magnitudes: Non-negative importance per candidate position (``|score|``, or the random priority).
    """

    order: tuple[int, ...]
    magnitudes: dict[int, float]

    def top(self, k: int) -> frozenset[int]:
        return frozenset(self.order[:k])

    def normalised(self) -> dict[int, float]:
        """Importances min-max scaled to [0, 1] over the candidates (all 0.5 when they are all equal)."""
        values = self.magnitudes.values()
        low, high = min(values), max(values)
        if high - low <= 0:
            return dict.fromkeys(self.magnitudes, 0.5)
        return {position: (value - low) / (high - low) for position, value in self.magnitudes.items()}


def check_ks(ks: Sequence[int | float]) -> tuple[int | float, ...]:
    """Validate ``ks``: positive integers (token counts) and/or fractions in (0, 1] of the rankable tokens."""
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty list of token counts (ints >= 1) and/or fractions in (0, 1]: {ks!r}")
    checked: list[int | float] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, Real):
            raise ValueError(f"ks entries must be ints (token counts) or floats (fractions); got {k!r}.")
        if isinstance(k, Integral):
            if k < 1:
                raise ValueError(f"A token count in ks must be at least 1; got {k}.")
            checked.append(int(k))
        else:
            if not 0 < float(k) <= 1:
                raise ValueError(f"A fraction in ks must be in (0, 1]; got {k}. Give token counts as ints.")
            checked.append(float(k))
    return tuple(checked)


def k_label(k: int | float) -> str:
    """``"3"`` for a token count, ``"5%"`` for the fraction 0.05."""
    return str(k) if isinstance(k, int) else f"{100 * k:g}%"


def resolve_k(k: int | float, available: int) -> int:
    """Tokens to remove for ``k`` among ``available`` rankable ones: counts are capped, fractions rounded up.

    A fraction ``f`` means the smallest count covering at least ``f`` of the tokens, and at least one token.
    """
    if isinstance(k, int):
        return min(k, available)
    return min(available, max(1, math.ceil(k * available - 1e-9)))


def curve_count(fraction: float, available: int) -> int:
    """Tokens removed (deletion curve) or kept (insertion curve) at ``fraction`` of the curve: rounded to nearest."""
    return min(available, math.floor(fraction * available + 0.5))


def attribution_ranking(step: AttributedStep, tie_seed: int) -> Ranking:
    """Candidates ranked by ``|score|``, ties broken by a seeded random order."""
    tie_rng = random.Random(stable_seed("ties", tie_seed, step.sequence, step.step))
    tie_break = {position: tie_rng.random() for position in step.candidates}
    magnitudes = {position: abs(step.scores[position]) for position in step.candidates}
    order = sorted(step.candidates, key=lambda position: (-magnitudes[position], -tie_break[position]))
    return Ranking(tuple(order), magnitudes)


def random_ranking(step: AttributedStep, seed: int) -> Ranking:
    """Candidates ranked by random priorities in [0, 1), fixed per (seed, sequence, position)."""
    rng = random.Random(stable_seed("random ranking", seed, step.sequence))
    priorities = [rng.random() for _ in range(len(step.input_ids))]
    magnitudes = {position: priorities[position] for position in step.candidates}
    order = sorted(step.candidates, key=lambda position: -magnitudes[position])
    return Ranking(tuple(order), magnitudes)


@dataclass(frozen=True)
class Perturber:
    """Builds the model inputs of a step with some of its tokens removed.

    Attributes:
        removal: ``"delete"`` drops removed tokens (the model sees a shorter input, positions renumbered);
            ``"replace"`` puts ``baseline_id`` in their place (same length and positions).
        baseline_id: The replacement token for ``"replace"``.
        start_id: Stand-in for an input left empty by deletion (decoder-only models without a special token in
            the input, e.g. GPT-2): the model's start-of-text token.
    """

    removal: str
    baseline_id: int | None
    start_id: int | None

    def without(self, step: AttributedStep, removed: frozenset[int]) -> TokenQuery:
        """The query for ``step`` with the ``removed`` positions of its input removed."""
        if self.removal == "replace":
            ids = tuple(self.baseline_id if i in removed else t for i, t in enumerate(step.input_ids))
        else:
            ids = tuple(t for i, t in enumerate(step.input_ids) if i not in removed)
        return self.query(step, ids)

    def only(self, step: AttributedStep, kept: frozenset[int]) -> TokenQuery:
        """The query for ``step`` with every candidate outside ``kept`` removed (special tokens stay)."""
        return self.without(step, frozenset(step.candidates) - kept)

    def query(self, step: AttributedStep, input_ids: tuple[int, ...]) -> TokenQuery:
        if step.decoder_ids is not None:  # encoder-decoder: the source is perturbed
            return TokenQuery(step.decoder_ids, step.target_id, encoder_ids=input_ids)
        if not input_ids:
            if self.start_id is None:
                raise ValueError(
                    "Removing every token leaves an empty input and the tokenizer has no BOS/EOS token to start "
                    "from; use smaller ks or removal='replace'."
                )
            input_ids = (self.start_id,)
        return TokenQuery(input_ids, step.target_id)
