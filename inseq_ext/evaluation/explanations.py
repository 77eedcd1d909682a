"""Compare an LLM's own account of which words mattered with a feature-attribution map.

A course exercise asks a chat model to explain its answer as a list of ``(word, score)`` pairs, then compares that
list with an attribution of the same answer. Three steps, one function each:

1. :func:`parse_explanation` reads the list out of the model's reply (stray text, any quotes, signed scores).
2. :func:`align_explanation` finds each explained word in the prompt's words (case- and punctuation-insensitive,
   repeated words in order) and reports the ones it could not place.
3. :func:`compare_with_attribution` reports rank agreement (Spearman's rho, Kendall's tau-b), top-k overlap and,
   where both sides are signed, sign agreement.

:func:`attribution_word_scores` turns an inseq attribution into the ``(word, score)`` list that step 3 compares.

Rank correlations are implemented here (no SciPy dependency), with ties given their average rank.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput
    from inseq.utils.typing import TokenWithId
    from transformers import PreTrainedTokenizerBase

#: Quote characters accepted around words and scores: straight, backtick, curly, low-9 and guillemets.
QUOTES = "'\"`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u00ab\u00bb"
#: What to do with prompt words the explanation does not mention (see :func:`compare_with_attribution`).
UNMENTIONED_POLICIES = ("drop", "zero")

_NUMBER = r"[-+\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# One pair: an opening parenthesis or bracket, an optionally quoted word (shortest match, so a comma or an
# apostrophe inside the word is kept), a comma, an optionally quoted number, an optional trailing comma, the closer.
# Words never contain brackets or newlines, so the outer "[" of the list cannot start a pair.
_PAIR = re.compile(
    rf"[(\[]\s*[{QUOTES}]?(?P<word>[^()\[\]\n]*?)[{QUOTES}]?\s*,\s*"
    rf"[{QUOTES}]?(?P<score>{_NUMBER})[{QUOTES}]?\s*,?\s*[)\]]"
)
# Space markers of byte-level BPE (GPT-2 "Ġ") and SentencePiece ("▁") token texts.
_SPACE_MARKERS = ("\u0120", "\u2581")


def parse_explanation(text: str) -> list[tuple[str, float]]:
    """Read ``(word, score)`` pairs from an explanation written as ``[(word, score), ...]``.

    Tolerates what chat models produce around and inside the list: text before and after it ("Sure! Here is the
    list: [...] Hope this helps"), single, double, curly or no quotes around words (and around scores), any
    spacing and line breaks, trailing commas, square brackets instead of parentheses for the pairs, integer,
    decimal, exponent and negative scores (ASCII or Unicode minus). Words may contain commas and apostrophes
    (``("don't", -0.4)``). Pairs with an empty word are skipped.

    Args:
        text: The explanation, e.g. a chat model's reply.

    Returns:
        The pairs in the order written, words stripped of surrounding spaces and quotes.

    Raises:
        ValueError: If ``text`` is not a string or no pair can be read from it (the message quotes its start).
    """
    if not isinstance(text, str):
        raise ValueError(f"parse_explanation expects the explanation as a string, got {type(text).__name__}.")
    pairs = []
    for match in _PAIR.finditer(text):
        word = match["word"].strip().strip(QUOTES).strip()
        if word:
            pairs.append((word, float(match["score"].replace("\u2212", "-"))))
    if not pairs:
        start = text.strip()[:80]
        raise ValueError(
            f"No (word, score) pairs found in the explanation starting {start!r}; expected a list such as "
            "[('great', 0.9), ('boring', -0.7)]."
        )
    return pairs


def normalize_word(word: str) -> str:
    """Comparison key of a word: case-folded letters and digits only (punctuation, spaces and token markers go).

    ``"Terrible."``, ``"ĠTerrible"`` and ``"terrible"`` share the key ``"terrible"``; a word of punctuation only
    has the empty key and matches nothing.
    """
    text = unicodedata.normalize("NFKC", word)
    for marker in _SPACE_MARKERS:
        text = text.replace(marker, " ")
    return "".join(char for char in text.casefold() if unicodedata.category(char)[0] in "LN")


@dataclass(frozen=True)
class AlignedWord:
    """One explanation pair and the prompt position it was matched to.

    Attributes:
        word: The word as the explanation wrote it.
        score: The explanation's score for it.
        position: Index into the prompt's words, or ``None`` when the word could not be placed.
    """

    word: str
    score: float
    position: int | None


@dataclass(frozen=True)
class ExplanationAlignment:
    """Result of :func:`align_explanation`.

    Attributes:
        words: The prompt's words, as given.
        pairs: Every explanation pair, in the explanation's order, with its matched position.
    """

    words: tuple[str, ...]
    pairs: tuple[AlignedWord, ...]

    @property
    def matched(self) -> list[AlignedWord]:
        """The pairs placed in the prompt."""
        return [pair for pair in self.pairs if pair.position is not None]

    @property
    def unmatched(self) -> list[str]:
        """Explanation words not found in the prompt (misspelt, invented, or mentioned more often than written)."""
        return [pair.word for pair in self.pairs if pair.position is None]

    @property
    def scores_by_position(self) -> dict[int, float]:
        """Explanation score of each matched prompt position."""
        return {pair.position: pair.score for pair in self.matched}

    @property
    def unmentioned_positions(self) -> list[int]:
        """Prompt positions whose word the explanation does not score."""
        scored = self.scores_by_position
        return [position for position in range(len(self.words)) if position not in scored]


def align_explanation(pairs: Sequence[tuple[str, float]], words: Sequence[str]) -> ExplanationAlignment:
    """Place each explanation word at a position of the prompt's words.

    Words are compared by :func:`normalize_word` (case, punctuation and token space markers ignored). A word that
    occurs several times is matched in order: the first mention takes the first unused occurrence in the prompt,
    the next mention the next one, and mentions beyond the prompt's count stay unmatched.

    Args:
        pairs: ``(word, score)`` pairs, e.g. from :func:`parse_explanation`.
        words: The prompt's words (or word-level tokens) in order.

    Returns:
        The alignment; its ``unmatched`` property lists the explanation words that were not placed.
    """
    free_positions: dict[str, list[int]] = {}
    for position, word in enumerate(words):
        key = normalize_word(word)
        if key:
            free_positions.setdefault(key, []).append(position)
    aligned = []
    for word, score in pairs:
        candidates = free_positions.get(normalize_word(word), [])
        aligned.append(AlignedWord(word, float(score), candidates.pop(0) if candidates else None))
    return ExplanationAlignment(words=tuple(words), pairs=tuple(aligned))


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1 (smallest) to n; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda idx: values[idx])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for idx in order[start : end + 1]:
            ranks[idx] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Spearman's rank correlation (Spearman, 1904, *The proof and measurement of association between two things*).

    The Pearson correlation of the average ranks `R(x)`, `R(y)` (ties share their mean rank):

        rho = sum_i (R(x_i) - mean R_x) (R(y_i) - mean R_y)
              / sqrt( sum_i (R(x_i) - mean R_x)^2  *  sum_i (R(y_i) - mean R_y)^2 )

    Without ties this equals `1 - 6 sum_i d_i^2 / (n (n^2 - 1))` with `d_i = R(x_i) - R(y_i)`. NaN when either
    side is constant.
    """
    _check_paired(x, y)
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    mean_x, mean_y = sum(rank_x) / len(x), sum(rank_y) / len(y)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(rank_x, rank_y, strict=True))
    spread = math.sqrt(sum((a - mean_x) ** 2 for a in rank_x) * sum((b - mean_y) ** 2 for b in rank_y))
    return covariance / spread if spread > 0 else math.nan


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Kendall's rank correlation, tau-b (Kendall, 1938, *A new measure of rank correlation*, Biometrika 30;
    tie correction from Kendall, 1945, *The treatment of ties in ranking problems*, Biometrika 33).

    Over the `n_0 = n(n-1)/2` pairs `i < j`, with `C` concordant pairs (both orders agree),
    `D` discordant ones, `n_1` pairs tied in `x` and `n_2` pairs tied in `y`:

        tau_b = (C - D) / sqrt((n_0 - n_1) (n_0 - n_2))

    Without ties it is Kendall's original `tau = (C - D) / n_0`. NaN when either side is constant.
    """
    _check_paired(x, y)
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            direction = (x[i] > x[j]) - (x[i] < x[j])
            direction_y = (y[i] > y[j]) - (y[i] < y[j])
            tied_x += direction == 0
            tied_y += direction_y == 0
            concordant += direction * direction_y > 0
            discordant += direction * direction_y < 0
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def top_k_positions(values: Sequence[float], k: int) -> list[int]:
    """Positions of the ``k`` largest magnitudes; equal magnitudes are taken in position order."""
    return sorted(range(len(values)), key=lambda idx: (-abs(values[idx]), idx))[:k]


def _check_paired(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"Rank correlation needs two sequences of the same length; got {len(x)} and {len(y)}.")
    if len(x) < 2:
        raise ValueError(f"Rank correlation needs at least two paired values; got {len(x)}.")


@dataclass(frozen=True)
class ExplanationComparison:
    """Agreement between an explanation's word scores and an attribution's, from :func:`compare_with_attribution`.

    Attributes:
        spearman: Spearman's rho of the two score lists over the compared words (-1 to 1; NaN if one is constant).
        kendall_tau_b: Kendall's tau-b over the same words (-1 to 1; NaN if one is constant).
        top_k_overlap: Share of the explanation's ``k`` highest-magnitude words that are also among the
            attribution's ``k`` highest (0 to 1).
        k: The ``k`` used: the one asked for, capped at the number of compared words.
        sign_agreement: Share of compared words, non-zero on both sides, whose signs agree; ``None`` unless both
            sides have negative scores (an unsigned map such as saliency has no sign to agree with), or when no
            word is non-zero on both sides.
        compared: ``(word, explanation score, attribution score)`` for each compared word, in prompt order.
        unmatched_explanation_words: Explanation words not found in the prompt (left out of every figure).
        unmentioned_words: Prompt words the explanation does not score (dropped, or compared as 0).
    """

    spearman: float
    kendall_tau_b: float
    top_k_overlap: float
    k: int
    sign_agreement: float | None
    compared: tuple[tuple[str, float, float], ...]
    unmatched_explanation_words: tuple[str, ...]
    unmentioned_words: tuple[str, ...]

    def summary(self) -> str:
        """A few lines for a notebook or a terminal."""
        sign = "n/a (unsigned scores)" if self.sign_agreement is None else f"{self.sign_agreement:.2f}"
        lines = [
            f"words compared: {len(self.compared)}",
            f"Spearman rho:   {self.spearman:+.3f}",
            f"Kendall tau-b:  {self.kendall_tau_b:+.3f}",
            f"top-{self.k} overlap: {self.top_k_overlap:.2f}",
            f"sign agreement: {sign}",
        ]
        if self.unmatched_explanation_words:
            lines.append(f"not in the prompt: {', '.join(self.unmatched_explanation_words)}")
        return "\n".join(lines)


def compare_with_attribution(
    explanation: str | Sequence[tuple[str, float]],
    attribution_scores_per_word: Sequence[tuple[str, float]],
    k: int = 5,
    unmentioned: str = "drop",
    magnitude: bool = False,
) -> ExplanationComparison:
    """Measure how well an LLM's word-importance explanation agrees with an attribution of the same prompt.

    The explanation is aligned with the attribution's words by :func:`align_explanation`; then, over the compared
    words, it reports Spearman's rho (:func:`spearman_rho`), Kendall's tau-b (:func:`kendall_tau_b`), the top-k
    overlap `|T_k(e) & T_k(a)| / k` of the two sets of ``k`` highest-magnitude words, and sign agreement
    when both sides are signed.

    Args:
        explanation: The explanation text (parsed with :func:`parse_explanation`) or its ``(word, score)`` pairs.
        attribution_scores_per_word: ``(word, score)`` for each prompt word in order, e.g. a word-aggregated
            attribution column for one generated token. Words with a NaN score (not attributed) are skipped.
        k: How many top words to compare (capped at the number of compared words); at least 1.
        unmentioned: ``"drop"`` (default): compare only the words the explanation scores; ``"zero"``: also
            compare every other prompt word, with explanation score 0 (an explanation that lists only what
            mattered says, implicitly, that the rest did not).
        magnitude: Compare absolute values (e.g. a signed explanation with an unsigned saliency map); sign
            agreement is then ``None``.

    Returns:
        The figures, the compared words and what could not be aligned.

    Raises:
        ValueError: For an unknown ``unmentioned`` policy, ``k`` < 1, an unparsable explanation, or fewer than two
            words to compare (the message lists the explanation words that were not found in the prompt).
    """
    if unmentioned not in UNMENTIONED_POLICIES:
        raise ValueError(
            f"Unknown unmentioned policy {unmentioned!r}; valid choices: {', '.join(UNMENTIONED_POLICIES)}."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (how many top words to compare); got {k!r}.")
    pairs = parse_explanation(explanation) if isinstance(explanation, str) else list(explanation)
    words = [word for word, _ in attribution_scores_per_word]
    attribution = [float(score) for _, score in attribution_scores_per_word]
    alignment = align_explanation(pairs, words)
    explained = alignment.scores_by_position
    positions = [
        position
        for position in range(len(words))
        if not math.isnan(attribution[position])
        and (position in explained or (unmentioned == "zero" and normalize_word(words[position])))
    ]
    if len(positions) < 2:
        raise ValueError(
            f"Only {len(positions)} prompt word(s) are scored by both the explanation and the attribution; at least "
            f"two are needed. Explanation words not found in the prompt: {alignment.unmatched or 'none'}."
        )
    explanation_scores = [explained.get(position, 0.0) for position in positions]
    attribution_scores = [attribution[position] for position in positions]
    if magnitude:
        explanation_scores = [abs(score) for score in explanation_scores]
        attribution_scores = [abs(score) for score in attribution_scores]
    top_k = min(k, len(positions))
    shared_top = set(top_k_positions(explanation_scores, top_k)) & set(top_k_positions(attribution_scores, top_k))
    return ExplanationComparison(
        spearman=spearman_rho(explanation_scores, attribution_scores),
        kendall_tau_b=kendall_tau_b(explanation_scores, attribution_scores),
        top_k_overlap=len(shared_top) / top_k,
        k=top_k,
        sign_agreement=_sign_agreement(explanation_scores, attribution_scores),
        compared=tuple(
            (words[position], explanation_score, attribution_score)
            for position, explanation_score, attribution_score in zip(
                positions, explanation_scores, attribution_scores, strict=True
            )
        ),
        unmatched_explanation_words=tuple(alignment.unmatched),
        unmentioned_words=tuple(words[position] for position in alignment.unmentioned_positions),
    )


def _sign_agreement(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Share of positions, non-zero on both sides, with the same sign; None unless both sides are signed."""
    if not (any(value < 0 for value in x) and any(value < 0 for value in y)):
        return None
    both_nonzero = [(a, b) for a, b in zip(x, y, strict=True) if a != 0 and b != 0]
    if not both_nonzero:
        return None
    return sum((a > 0) == (b > 0) for a, b in both_nonzero) / len(both_nonzero)


def word_spans(tokens: Sequence[str], special_tokens: Sequence[str] = ()) -> list[tuple[int, int]]:
    """``(start, end)`` (end excluded) of every run of two or more tokens that form one word.

    A word starts at the first token, at a token beginning with a space marker (``Ġ`` in byte-level BPE, ``▁`` in
    SentencePiece), and at or right after a special token, so that ``<s>`` never joins the first word. Punctuation
    written without a space stays with its word (``terrible,``), which :func:`normalize_word` ignores anyway.
    """
    special = set(special_tokens)
    starts = [
        idx
        for idx, token in enumerate(tokens)
        if idx == 0 or token.startswith(_SPACE_MARKERS) or token in special or tokens[idx - 1] in special
    ]
    bounds = [*starts, len(tokens)]
    return [(start, end) for start, end in zip(bounds, bounds[1:], strict=False) if end - start > 1]


def attribution_word_scores(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    tokenizer: PreTrainedTokenizerBase,
    generated_token: int = 0,
    sequence: int = 0,
) -> list[tuple[str, float]]:
    """One ``(word, score)`` per prompt word, for one generated token, ready for :func:`compare_with_attribution`.

    The prompt's tokens (the source of an encoder-decoder, the target prefix before ``attr_pos_start`` of a
    decoder-only model) are merged into words by :func:`word_spans` with inseq's own span aggregator
    (``aggregate("spans", ...)``, which keeps each word's token score of largest magnitude, sign preserved). Only
    prompt tokens are merged, so generated tokens keep their own columns. Special tokens (``<s>``, ``</s>``, ...)
    are left out; words are decoded with the tokenizer (space markers and byte-level symbols become text).

    Args:
        output: An attribution with one score per token and generated token (e.g. ``custom_saliency``, or any
            method's output after ``aggregate()``), or one of its sequence attributions.
        tokenizer: The attributed model's tokenizer (``model.tokenizer``), for special tokens and decoding.
        generated_token: Which generated token's column: its position among the attributed steps (negative from
            the end).
        sequence: Which sequence of ``output``, when it holds several.

    Returns:
        ``(word, score)`` in prompt order.

    Raises:
        ValueError: If the attribution has more than one score per token and step (aggregate it first), or
            ``generated_token`` is out of range.
    """
    from inseq.data import FeatureAttributionOutput

    seq = output.sequence_attributions[sequence] if isinstance(output, FeatureAttributionOutput) else output
    encoder_decoder = seq.source_attributions is not None
    scores = seq.source_attributions if encoder_decoder else seq.target_attributions
    if scores.ndim != 2:
        raise ValueError(
            f"attribution_word_scores needs one score per token and generated token; got shape "
            f"{tuple(scores.shape)}. Reduce the extra dimensions first, e.g. with output.aggregate()."
        )
    steps = scores.shape[1]
    if not -steps <= generated_token < steps:
        raise ValueError(f"generated_token {generated_token} is out of range: {steps} attributed generated tokens.")
    special = list(tokenizer.all_special_tokens)
    prompt: list[TokenWithId] = seq.source if encoder_decoder else seq.target[: seq.attr_pos_start]
    spans = word_spans([token.token for token in prompt], special)
    if spans:
        seq = seq.aggregate("spans", **{"source_spans" if encoder_decoder else "target_spans": spans})
    if encoder_decoder:
        prompt, scores = seq.source, seq.source_attributions
    else:
        prompt, scores = seq.target[: seq.attr_pos_start], seq.target_attributions[: seq.attr_pos_start]
    column = scores[:, generated_token % steps].tolist()
    return [
        (tokenizer.convert_tokens_to_string([token.token]).strip(), score)
        for token, score in zip(prompt, column, strict=False)
        if token.token not in special
    ]
