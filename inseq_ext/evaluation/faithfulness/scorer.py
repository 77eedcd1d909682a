"""Probabilities of a token under many perturbed inputs: batched, without gradients, each input computed once.

Every faithfulness metric asks the same question many times: *what probability does the model give to the
generated token when the input is changed this way?* The questions are :class:`TokenQuery` (an input made of token
ids: deletion or replacement of tokens) and :class:`EmbeddingQuery` (input embeddings multiplied element-wise by a
Bernoulli keep-mask: the soft metrics). :class:`ProbabilityScorer` answers a whole list of them with few forward
passes:

* identical queries are computed once, and answers are cached across calls (a generation's random baseline is
  then computed once for all the methods evaluated on it);
* a query whose input is a prefix of another query's input is read off that longer input's forward pass at an
  earlier position (a causal decoder's output at position ``i`` does not depend on later tokens). The generation's
  own probabilities at all steps thus come from one pass, and so do removals that several steps share;
* decoder-only inputs are sorted so that inputs sharing a long beginning (e.g. the same prefix up to the first
  removed token) fall into one batch; that shared beginning runs once, and its key/value cache serves the rest of
  every input of the batch;
* the inputs are right-padded into batches of up to ``batch_tokens`` tokens (and little padding) and run under
  ``torch.no_grad()`` in eval mode; the language-model head is applied only at the positions read.

Right padding needs no attention mask on the decoder side: under causal attention no real token attends to a later
pad. Encoder inputs of encoder-decoder models are padded with an attention mask.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ...attr.model_state import preserved_model_state

DEFAULT_BATCH_TOKENS = 4096
#: A batch of decoder-only inputs shares its common beginning through a key/value cache from this many tokens on.
DEFAULT_MIN_SHARED_PREFIX = 16
#: A batch stops growing when padding would exceed this share of its tokens.
MAX_PADDING_SHARE = 0.2


@dataclass(frozen=True)
class TokenQuery:
    """``p(target | input)`` for an input given as token ids.

    Attributes:
        decoder_ids: Decoder-only models: the whole input. Encoder-decoder models: the decoder prefix.
        target: The token id whose probability is wanted at the position after ``decoder_ids``.
        encoder_ids: Encoder-decoder models: the source token ids; ``None`` for decoder-only models.
    """

    decoder_ids: tuple[int, ...]
    target: int
    encoder_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EmbeddingQuery:
    """``p(target | input)`` with the input embeddings of the perturbed side multiplied by a random keep-mask.

    The perturbed side is the decoder input of decoder-only models and the encoder input of encoder-decoder models.
    Every element ``d`` of the embedding of token ``i`` is kept (multiplied by 1) with probability ``keep[i]`` and
    zeroed otherwise, independently: ``e'_i = e_i * m_i``, ``m_{i,d} ~ Bernoulli(keep[i])``. The mask is drawn
    from a generator seeded with ``noise_seed``, so a query always gets the same answer. Keep probabilities of
    exactly 0 or 1 draw no noise.

    Attributes:
        decoder_ids: As in :class:`TokenQuery`.
        target: As in :class:`TokenQuery`.
        keep: Keep probability per token of the perturbed side (same length as that side's ids).
        noise_seed: Seed of the mask; ignored when every keep probability is 0 or 1.
        encoder_ids: As in :class:`TokenQuery`.
    """

    decoder_ids: tuple[int, ...]
    target: int
    keep: tuple[float, ...]
    noise_seed: int = 0
    encoder_ids: tuple[int, ...] | None = None

    @property
    def deterministic(self) -> bool:
        return all(value in (0.0, 1.0) for value in self.keep)


Query = TokenQuery | EmbeddingQuery


def stable_seed(*parts: Hashable) -> int:
    """A 63-bit seed derived from ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class _Row:
    """One input sequence of a forward pass and the positions read from it (``reads[position] = {target, ...}``)."""

    kind: str  # "tokens" or "embeddings"
    decoder_ids: tuple[int, ...]
    encoder_ids: tuple[int, ...] | None
    keep: tuple[float, ...] | None  # embeddings: keep probabilities of the perturbed side
    noise_seed: int
    reads: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))

    @property
    def length(self) -> int:
        return len(self.decoder_ids) + (len(self.encoder_ids) if self.encoder_ids is not None else 0)


class ProbabilityScorer:
    """Answers :class:`TokenQuery` / :class:`EmbeddingQuery` lists with batched, gradient-free forward passes.

    Args:
        model: A Hugging Face causal or sequence-to-sequence language model (e.g. ``attribution_model.model``).
        batch_tokens: Upper bound on padded tokens per forward pass (rows x longest row; a single longer row still
            runs alone).
        pad_token_id: Not used for decoder inputs (they are padded by repeating their last token, which no real
            position attends to); encoder inputs are padded with it under an attention mask. Defaults to the
            model config's pad token, else 0.
        min_shared_prefix: Decoder-only models: a batch whose inputs begin with at least this many common tokens
            runs them once and reuses their key/value cache (``None`` never shares: one plain pass per batch).

    The model is put in eval mode during a call; its modes, ``requires_grad`` flags and hooks are restored after
    (:func:`~inseq_ext.attr.model_state.preserved_model_state`), also when a call fails.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        pad_token_id: int | None = None,
        min_shared_prefix: int | None = DEFAULT_MIN_SHARED_PREFIX,
    ) -> None:
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive number of tokens, got {batch_tokens}.")
        self.model = model
        self.batch_tokens = batch_tokens
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        config_pad = getattr(model.config, "pad_token_id", None)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (config_pad if config_pad is not None else 0)
        self.min_shared_prefix = min_shared_prefix
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.cache: dict[Query, float] = {}
        self.forward_passes = 0
        self.forward_tokens = 0

    # ------------------------------------------------------------------------------------------------------------
    # Public interface
    # ------------------------------------------------------------------------------------------------------------

    def __call__(self, queries: Iterable[Query]) -> list[float]:
        """The probabilities of the queries, in order (computed where not cached)."""
        queries = list(queries)
        self.prefetch(queries)
        return [self.cache[query] for query in queries]

    def cached(self, query: Query) -> float:
        """The cached answer of a query that :meth:`prefetch` computed (``KeyError`` otherwise)."""
        return self.cache[query]

    def prefetch(self, queries: Iterable[Query]) -> None:
        """Compute and cache the answers of ``queries`` that are not cached yet."""
        missing = list(dict.fromkeys(query for query in queries if query not in self.cache))
        if not missing:
            return
        for query in missing:
            self._check(query)
        rows, owners = self._plan_rows(missing)
        with preserved_model_state(self.model, freeze_parameters=False) as hooks, torch.no_grad():
            self.model.eval()
            head = self.model.get_output_embeddings()
            selection: dict[str, torch.Tensor] = {}
            if isinstance(head, torch.nn.Module):

                def select_read_positions(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
                    hidden = args[0]
                    return (hidden[selection["rows"], selection["positions"]].unsqueeze(0), *args[1:])

                hooks.forward_pre_hook(head, select_read_positions)
            answers: dict[tuple[int, int, int], float] = {}
            for batch, shared in self._batches(rows):
                answers.update(self._run_batch(batch, shared, selection, isinstance(head, torch.nn.Module)))
        for query, (row_index, position) in zip(missing, owners, strict=True):
            self.cache[query] = answers[(row_index, position, query.target)]

    # ------------------------------------------------------------------------------------------------------------
    # Planning: identical and prefix-related inputs share a row
    # ------------------------------------------------------------------------------------------------------------

    def _check(self, query: Query) -> None:
        if not query.decoder_ids:
            raise ValueError("A query needs at least one decoder token (the position the target is predicted from).")
        if self.is_encoder_decoder and query.encoder_ids is None:
            raise ValueError("Encoder-decoder models need queries with encoder_ids (the source token ids).")
        if not self.is_encoder_decoder and query.encoder_ids is not None:
            raise ValueError("Decoder-only models take queries without encoder_ids.")
        if isinstance(query, EmbeddingQuery):
            perturbed = query.encoder_ids if self.is_encoder_decoder else query.decoder_ids
            if len(query.keep) != len(perturbed):
                raise ValueError(f"keep has {len(query.keep)} values for {len(perturbed)} perturbed tokens.")

    def _plan_rows(self, queries: Sequence[Query]) -> tuple[list[_Row], list[tuple[int, int]]]:
        """Group queries into rows; returns the rows and, per query, (row index, position read)."""
        groups: dict[Hashable, list[int]] = defaultdict(list)
        chains: list[tuple] = []
        for index, query in enumerate(queries):
            group, chain = self._group_and_chain(query, index)
            groups[group].append(index)
            chains.append(chain)
        rows: list[_Row] = []
        owners: list[tuple[int, int]] = [(-1, -1)] * len(queries)
        for members in groups.values():
            # In lexicographic order, a sequence that is a prefix of any other is a prefix of its successor; walking
            # backwards, each sequence joins the row of its successor when it is a prefix of it.
            members.sort(key=lambda index: chains[index])
            row_of_next: int | None = None
            previous_chain: tuple | None = None
            for index in reversed(members):
                chain = chains[index]
                if previous_chain is not None and previous_chain[: len(chain)] == chain and row_of_next is not None:
                    row_index = row_of_next
                else:
                    rows.append(self._new_row(queries[index]))
                    row_index = len(rows) - 1
                position = len(queries[index].decoder_ids) - 1
                rows[row_index].reads[position].add(queries[index].target)
                owners[index] = (row_index, position)
                row_of_next, previous_chain = row_index, chain
        return rows, owners

    def _group_and_chain(self, query: Query, index: int) -> tuple[Hashable, tuple]:
        """Queries of one group whose chains are prefix-related can share a row."""
        if isinstance(query, TokenQuery):
            return ("tokens", query.encoder_ids), query.decoder_ids
        if self.is_encoder_decoder:  # the encoder side is perturbed; decoder prefixes chain
            seed = None if query.deterministic else query.noise_seed
            return ("embeddings", query.encoder_ids, query.keep, seed), query.decoder_ids
        if query.deterministic:  # decoder-only, mask without noise: chain on (token, keep) pairs
            return ("embeddings",), tuple(zip(query.decoder_ids, query.keep, strict=True))
        return ("embeddings", "single", index), tuple(zip(query.decoder_ids, query.keep, strict=True))

    def _new_row(self, query: Query) -> _Row:
        if isinstance(query, TokenQuery):
            return _Row("tokens", query.decoder_ids, query.encoder_ids, None, 0)
        return _Row("embeddings", query.decoder_ids, query.encoder_ids, query.keep, query.noise_seed)

    def _batches(self, rows: list[_Row]) -> Iterable[tuple[list[tuple[int, _Row]], int]]:
        """``(batch, shared)``: batches of ``(row index, row)`` and how many leading tokens they share (0: none)."""
        items = list(enumerate(rows))
        if self.min_shared_prefix is not None and not self.is_encoder_decoder:
            # Batches that share a beginning run as planned; rows that share none with their neighbours (e.g. the
            # short inputs of sufficiency) are batched by length below, in fewer and fuller passes.
            unshared: list[tuple[int, _Row]] = []
            for batch, shared in self._shared_prefix_batches([item for item in items if item[1].kind == "tokens"]):
                if shared:
                    yield batch, shared
                else:
                    unshared.extend(batch)
            items = unshared + [item for item in items if item[1].kind != "tokens"]
        for kind in ("tokens", "embeddings"):
            ordered = sorted((item for item in items if item[1].kind == kind), key=lambda item: -item[1].length)
            batch: list[tuple[int, _Row]] = []
            for item in ordered:  # longest first: the first row sets the padded length
                padded = max(row.length for _, row in [*batch, item]) * (len(batch) + 1)
                real = item[1].length + sum(row.length for _, row in batch)
                if batch and (padded > self.batch_tokens or padded - real > MAX_PADDING_SHARE * padded):
                    yield batch, 0
                    batch = []
                batch.append(item)
            if batch:
                yield batch, 0

    def _shared_prefix_batches(self, items: list[tuple[int, _Row]]) -> Iterable[tuple[list[tuple[int, _Row]], int]]:
        """Decoder-only token rows in lexicographic order, grouped greedily so that a batch's common beginning,
        computed once, saves more than the batch loses to padding; ``batch_tokens`` bounds the padded rest."""
        minimum = self.min_shared_prefix or 0

        def cost(batch: list[tuple[int, _Row]], shared: int) -> int:
            if len(batch) < 2 or shared < minimum:
                return len(batch) * max(row.length for _, row in batch)
            return shared + len(batch) * max(row.length - shared for _, row in batch)

        batch: list[tuple[int, _Row]] = []
        shared = 0
        for item in sorted(items, key=lambda item: item[1].decoder_ids):
            row = item[1]
            limit = min(row.reads)  # positions read must be computed in the row's own part
            if not batch:
                batch, shared = [item], limit
                continue
            candidate = min(shared, limit, _common_prefix_length(batch[-1][1].decoder_ids, row.decoder_ids))
            longest_rest = max(r.length - candidate for _, r in [*batch, item])
            fits = (len(batch) + 1) * longest_rest <= self.batch_tokens
            if fits and cost([*batch, item], candidate) <= cost(batch, shared) + row.length:
                batch.append(item)
                shared = candidate
            else:
                yield batch, (shared if len(batch) > 1 and shared >= minimum else 0)
                batch, shared = [item], limit
        if batch:
            yield batch, (shared if len(batch) > 1 and shared >= minimum else 0)

    # ------------------------------------------------------------------------------------------------------------
    # Forward passes
    # ------------------------------------------------------------------------------------------------------------

    def _run_batch(
        self,
        batch: list[tuple[int, _Row]],
        shared: int,
        selection: dict[str, torch.Tensor],
        head_hooked: bool,
    ) -> dict[tuple[int, int, int], float]:
        """Forward pass(es) of one batch; ``shared`` leading tokens common to its rows run once first."""
        device = self.model.device
        rows = [row for _, row in batch]
        read_rows, read_positions = [], []
        for batch_index, row in enumerate(rows):
            for position in sorted(row.reads):
                read_rows.append(batch_index)
                read_positions.append(position)
        extra: dict[str, Any] = {"use_cache": False}
        if shared:
            # The common beginning once, keeping its key/value cache (the head reads one position, unused).
            selection["rows"] = torch.tensor([0], device=device)
            selection["positions"] = torch.tensor([shared - 1], device=device)
            prefix = torch.tensor([rows[0].decoder_ids[:shared]], dtype=torch.long, device=device)
            output = self.model(input_ids=prefix, use_cache=True)
            cache = output["cache"] if "cache" in output else output["past_key_values"]  # renamed in transformers 5.2x
            cache.batch_repeat_interleave(len(rows))
            extra = {self._cache_argument: cache, "use_cache": True}
            self.forward_passes += 1
            self.forward_tokens += shared
        selection["rows"] = torch.tensor(read_rows, device=device)
        selection["positions"] = torch.tensor(read_positions, device=device) - shared
        if shared:
            tails = _right_padded_ids([row.decoder_ids[shared:] for row in rows], pad=None, device=device)
            inputs = {"input_ids": tails}
        else:
            inputs = self._model_inputs(rows, device)
        logits = self.model(**inputs, **extra).logits
        self.forward_passes += 1
        self.forward_tokens += sum(row.length for row in rows) - shared * len(rows)
        if head_hooked:
            logits = logits.reshape(len(read_rows), -1)
        else:  # no separate head module: full logits, read here
            logits = logits[selection["rows"], selection["positions"]]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        answers: dict[tuple[int, int, int], float] = {}
        for read_index, (batch_index, position) in enumerate(zip(read_rows, read_positions, strict=True)):
            row_index = batch[batch_index][0]
            for target in rows[batch_index].reads[position]:
                answers[(row_index, position, target)] = float(log_probs[read_index, target].exp())
        return answers

    def _model_inputs(self, rows: list[_Row], device: torch.device) -> dict[str, torch.Tensor]:
        # Decoder inputs are padded by repeating their last token: no real position attends to a later one.
        decoder = _right_padded_ids([row.decoder_ids for row in rows], pad=None, device=device)
        if not self.is_encoder_decoder:
            if rows[0].kind == "tokens":
                return {"input_ids": decoder}
            embed = self.model.get_input_embeddings()
            return {"inputs_embeds": _masked_embeddings(embed, rows, decoder)}
        encoder_ids = [row.encoder_ids or () for row in rows]
        encoder = _right_padded_ids(encoder_ids, pad=self.pad_token_id, device=device)
        mask = torch.zeros_like(encoder)
        for index, ids in enumerate(encoder_ids):
            mask[index, : len(ids)] = 1
        inputs: dict[str, torch.Tensor] = {"attention_mask": mask, "decoder_input_ids": decoder}
        if rows[0].kind == "tokens":
            inputs["input_ids"] = encoder
        else:
            inputs["inputs_embeds"] = _masked_embeddings(
                self.model.get_encoder().get_input_embeddings(), rows, encoder
            )
        return inputs


def _masked_embeddings(
    embed: Callable[[torch.Tensor], torch.Tensor], rows: list[_Row], ids: torch.Tensor
) -> torch.Tensor:
    """Embeddings of the (right-padded) perturbed side, each row multiplied by its Bernoulli keep-mask."""
    embeddings = embed(ids)
    masks = torch.zeros(embeddings.shape, dtype=embeddings.dtype)
    for index, row in enumerate(rows):
        keep = row.keep or ()
        masks[index, : len(keep)] = bernoulli_keep_mask(keep, embeddings.shape[2], row.noise_seed)
    return embeddings * masks.to(embeddings.device)


def bernoulli_keep_mask(keep: Sequence[float], hidden_size: int, noise_seed: int) -> torch.Tensor:
    """A ``len(keep) x hidden_size`` 0/1 mask whose row ``i`` has each element 1 with probability ``keep[i]``.

    Drawn as ``u < keep[i]`` with ``u ~ U[0, 1)`` from a CPU generator seeded with ``noise_seed``, so the mask
    depends on the seed only (not on the device). Rows with keep 0 or 1 are exact zeros or ones.
    """
    keep_tensor = torch.tensor(list(keep), dtype=torch.float32).unsqueeze(1)
    if bool(((keep_tensor == 0) | (keep_tensor == 1)).all()):
        return keep_tensor.expand(len(keep), hidden_size).clone()
    generator = torch.Generator().manual_seed(noise_seed)
    uniform = torch.rand(len(keep), hidden_size, generator=generator)
    return (uniform < keep_tensor).float()


def _common_prefix_length(first: tuple[int, ...], second: tuple[int, ...]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _right_padded_ids(sequences: list[tuple[int, ...]], pad: int | None, device: torch.device) -> torch.Tensor:
    """Right-padded ids; ``pad=None`` repeats each row's last token (a pad id would trigger padding warnings)."""
    longest = max(len(ids) for ids in sequences)
    padded = [list(ids) + [ids[-1] if pad is None else pad] * (longest - len(ids)) for ids in sequences]
    return torch.tensor(padded, dtype=torch.long, device=device)
