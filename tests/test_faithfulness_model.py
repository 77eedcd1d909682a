"""Faithfulness evaluation on real (tiny and demo) models: exact probabilities, any inseq output, model untouched,
and a random map scoring at the random baseline."""

from __future__ import annotations

import random

import pytest
import torch

import inseq_ext  # noqa: F401
from inseq_ext.attr.model_state import ModelSnapshot, count_hooks
from inseq_ext.evaluation import evaluate_faithfulness
from inseq_ext.evaluation.faithfulness import EmbeddingQuery, ProbabilityScorer, TokenQuery
from inseq_ext.evaluation.faithfulness.steps import attributed_steps
from inseq_ext.evaluation.ground_truth import load_for_evaluation


def direct_probability(model, query) -> float:
    """The probability of ``query.target`` from one plain forward pass, no batching or sharing."""
    with torch.no_grad():
        if query.encoder_ids is None:
            if isinstance(query, EmbeddingQuery):
                embeddings = model.get_input_embeddings()(torch.tensor([query.decoder_ids]))
                keep = torch.tensor(query.keep).reshape(1, -1, 1)
                logits = model(inputs_embeds=embeddings * keep).logits
            else:
                logits = model(input_ids=torch.tensor([query.decoder_ids])).logits
        else:
            inputs = {"decoder_input_ids": torch.tensor([query.decoder_ids])}
            if isinstance(query, EmbeddingQuery):
                embeddings = model.get_encoder().get_input_embeddings()(torch.tensor([query.encoder_ids]))
                inputs["inputs_embeds"] = embeddings * torch.tensor(query.keep).reshape(1, -1, 1)
            else:
                inputs["input_ids"] = torch.tensor([query.encoder_ids])
            logits = model(**inputs).logits
    return float(logits[0, -1].float().softmax(-1)[query.target])


def some_queries(ids: list[int], encoder_decoder: bool) -> list:
    """Prefixes of one sequence, deletions, replacements and 0/1 embedding masks of different lengths."""
    rng = random.Random(0)
    queries = []
    for length in range(3, len(ids)):
        prefix = tuple(ids[:length])
        removed = set(rng.sample(range(length), 2))
        deleted = tuple(t for i, t in enumerate(prefix) if i not in removed)
        keep = tuple(float(i not in removed) for i in range(length))
        if encoder_decoder:
            queries += [
                TokenQuery(prefix, ids[length], encoder_ids=tuple(ids[::-1])),
                TokenQuery(prefix, ids[length], encoder_ids=deleted),
                EmbeddingQuery(prefix, ids[length], keep, encoder_ids=prefix),
            ]
        else:
            queries += [
                TokenQuery(prefix, ids[length]),
                TokenQuery(deleted, ids[length]),
                TokenQuery(tuple(3 if i in removed else t for i, t in enumerate(prefix)), ids[length]),
                EmbeddingQuery(prefix, ids[length], keep),
            ]
    return queries


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "mistral", "gpt_neox", "bart"])
def test_scorer_equals_plain_forward_passes(tiny_models, architecture):
    model, tokenizer = tiny_models(architecture)
    ids = tokenizer("The first president of America is George Washington and").input_ids[:14]
    queries = some_queries(ids, architecture == "bart")
    # Several batches; decoder-only batches share their common beginning through the key/value cache.
    scorer = ProbabilityScorer(model, batch_tokens=64, min_shared_prefix=2)
    answers = scorer(queries)
    expected = [direct_probability(model, query) for query in queries]
    assert answers == pytest.approx(expected, abs=1e-5)
    naive_tokens = sum(len(q.decoder_ids) + len(q.encoder_ids or ()) for q in queries)
    assert scorer.forward_tokens < (0.7 if architecture == "bart" else 0.6) * naive_tokens
    if architecture != "bart":
        unshared = ProbabilityScorer(model, batch_tokens=64, min_shared_prefix=None)
        assert unshared(queries) == pytest.approx(expected, abs=1e-5)
        assert scorer.forward_tokens < unshared.forward_tokens


def test_inputs_without_a_common_beginning_share_one_padded_pass(tiny_models):
    """Short inputs that share no beginning (sufficiency's top-k tokens) run together, batched by length."""
    model, tokenizer = tiny_models("llama")
    ids = tokenizer("The first president of America is George Washington and").input_ids
    # Alternating lengths in lexicographic order: no two neighbours share a first token.
    queries = [TokenQuery(tuple(ids[start : start + 5 + start % 2]), ids[0]) for start in range(1, 6)]
    scorer = ProbabilityScorer(model)
    assert scorer(queries) == pytest.approx([direct_probability(model, query) for query in queries], abs=1e-5)
    assert scorer.forward_passes == 1


def test_prefixes_of_one_sequence_take_one_forward_pass(tiny_models):
    model, tokenizer = tiny_models("llama")
    ids = tokenizer("The first president of America is George").input_ids
    scorer = ProbabilityScorer(model)
    scorer([TokenQuery(tuple(ids[:n]), ids[n]) for n in range(1, len(ids))])
    assert (scorer.forward_passes, scorer.forward_tokens) == (1, len(ids) - 1)
    scorer([TokenQuery(tuple(ids[:n]), ids[n]) for n in range(1, len(ids))])  # cached
    assert scorer.forward_passes == 1


def test_soft_masks_are_seeded(tiny_models):
    model, tokenizer = tiny_models("gpt2")
    ids = tuple(tokenizer("The first president of").input_ids)
    keep = tuple(0.5 for _ in ids)
    scorer = ProbabilityScorer(model)
    first, again, other = scorer(
        [EmbeddingQuery(ids, 5, keep, noise_seed=1), EmbeddingQuery(ids, 5, keep, noise_seed=1),
         EmbeddingQuery(ids, 5, keep, noise_seed=2)]
    )  # fmt: skip
    assert first == again != other
    assert ProbabilityScorer(model)([EmbeddingQuery(ids, 5, keep, noise_seed=1)]) == [first]


def test_encoder_decoder_removal_applies_to_the_source(attribution_models):
    model = attribution_models("bart")
    out = model.attribute("The first president", "of America", method="saliency", show_progress=False)
    steps = attributed_steps(out, model.tokenizer.all_special_ids, True)[0]
    source = tuple(token.id for token in out.sequence_attributions[0].source)
    assert all(step.input_ids == source and step.decoder_ids is not None for step in steps)
    assert {step.input_ids[i] for step in steps for i in range(len(source)) if i not in step.candidates} <= set(
        model.tokenizer.all_special_ids
    )
    result = evaluate_faithfulness(model, out, metrics=["comprehensiveness"], ks=[1], random_seeds=0, bootstrap=0)
    step = steps[2]
    top = max(step.candidates, key=lambda i: abs(step.scores[i]))
    removed = tuple(t for i, t in enumerate(source) if i != top)
    original = direct_probability(model.model, TokenQuery(step.decoder_ids, step.target_id, encoder_ids=source))
    perturbed = direct_probability(model.model, TokenQuery(step.decoder_ids, step.target_id, encoder_ids=removed))
    assert result["comprehensiveness"].values[0][2] == pytest.approx(original - perturbed, abs=1e-5)


def test_multidimensional_outputs_are_read_after_default_aggregation():
    import inseq

    from inseq_ext.tiny_models import build_model

    eager, tokenizer = build_model("llama", attn_implementation="eager")  # inseq's attention needs the weights
    attribution_model = inseq.load_model(eager, "attention", tokenizer=tokenizer)
    for method in ("attention", "block_gradient_x_input"):
        out = attribution_model.attribute("The first", "The first president", method=method, show_progress=False)
        raw = out.sequence_attributions[0].target_attributions
        assert raw.ndim > 2
        aggregated = out.aggregate().sequence_attributions[0].target_attributions
        steps = attributed_steps(out, tokenizer.all_special_ids, False)[0]
        for step in steps:
            column = aggregated[: len(step.input_ids), step.step].nan_to_num()
            assert step.scores == pytest.approx(column.tolist())
        result = evaluate_faithfulness(attribution_model, out, random_seeds=1, bootstrap=0, soft_samples=1)
        assert result.method == method and result.steps == len(steps)


def test_model_is_unchanged_after_evaluation_and_after_a_failure(attribution_models):
    model = attribution_models("gpt2")
    hf_model = model.model
    out = model.attribute("The first", "The first president", method="saliency", show_progress=False)
    hf_model.train()  # a state evaluation must not keep
    hf_model.transformer.h[0].requires_grad_(False)
    try:
        before = ModelSnapshot.take(hf_model)
        evaluate_faithfulness(model, out, metrics="all", random_seeds=1, bootstrap=0, soft_samples=1, curve_points=3)
        assert ModelSnapshot.take(hf_model) == before

        class Failing(ProbabilityScorer):
            def _run_batch(self, *args, **kwargs):
                assert count_hooks(hf_model.get_output_embeddings()) == 1
                raise RuntimeError("out of memory")

        with pytest.raises(RuntimeError, match="out of memory"):
            evaluate_faithfulness(model, out, scorer=Failing(hf_model), random_seeds=0)
        assert ModelSnapshot.take(hf_model) == before
    finally:
        hf_model.eval()
        hf_model.requires_grad_(True)


@pytest.fixture(scope="module")
def demo_llama():
    return load_for_evaluation("llama")


def test_random_map_scores_at_the_random_baseline_and_an_oracle_beats_it(demo_llama):
    prompts = [  # the demo tasks: a fact, a review's sentiment, a look-up, a code to repeat
        "The capital of Norway is",
        "Review: the story is set in Oslo, it runs for 90 minutes, the story was boring. Sentiment:",
        "[DATA] store 9 to 21. desk 5 to 15. phone 10 to 16. [/DATA] Opening hour of the desk",
        "The code is pear white stone. Do not share it with anyone. Once more, the code is",
    ]
    outputs = []
    for prompt in prompts:
        encoding = demo_llama.tokenizer(prompt, return_tensors="pt")
        generated = demo_llama.model.generate(**encoding, max_new_tokens=6, do_sample=False)
        text = demo_llama.tokenizer.decode(generated[0], skip_special_tokens=True)
        outputs.append(demo_llama.attribute(prompt, text, method="saliency", show_progress=False).aggregate())
    generator = torch.Generator().manual_seed(0)
    scorer = ProbabilityScorer(demo_llama.model)
    for out in outputs:  # a deliberately random map
        sequence = out.sequence_attributions[0]
        sequence.target_attributions = torch.rand(sequence.target_attributions.shape, generator=generator)
    random_map = evaluate_faithfulness(demo_llama, outputs, random_seeds=5, scorer=scorer, method="random map")
    for metric in ("comprehensiveness", "sufficiency", "soft_comprehensiveness", "soft_sufficiency"):
        difference = random_map[metric].difference  # paired: random map minus random baseline, token by token
        assert difference.low <= 0 <= difference.high, (metric, difference)
        assert random_map[metric].beats_random is None
    for metric in ("comprehensiveness", "sufficiency"):  # averaged over 5 ks: small variance, a tight margin
        assert abs(random_map[metric].difference.mean) < 0.03, (metric, random_map[metric].difference)
    # Oracle map: each token's own leave-one-out drop in probability (occlusion), computed with the same scorer.
    for out in outputs:
        sequence = out.sequence_attributions[0]
        scores = torch.zeros_like(sequence.target_attributions)
        for step in attributed_steps(out, demo_llama.tokenizer.all_special_ids, False)[0]:
            base = scorer([TokenQuery(step.input_ids, step.target_id)])[0]
            for i in step.candidates:
                without = tuple(t for j, t in enumerate(step.input_ids) if j != i)
                scores[i, step.step] = max(0.0, base - scorer([TokenQuery(without, step.target_id)])[0])
        sequence.target_attributions = scores
    oracle = evaluate_faithfulness(demo_llama, outputs, random_seeds=5, scorer=scorer, metrics=["comprehensiveness"],
                                   ks=[1])  # fmt: skip
    assert oracle["comprehensiveness"].beats_random


def test_a_batched_output_scores_like_one_output_per_prompt(attribution_models):
    model = attribution_models("llama")  # left-padded batch, prompts of different lengths
    prompts = ["The first", "Hello ladies and gentlemen"]
    targets = ["The first president", "Hello ladies and gentlemen, I am"]
    batched = model.attribute(prompts, targets, method="saliency", show_progress=False)
    pairs = zip(prompts, targets, strict=True)
    separate = [model.attribute(p, t, method="saliency", show_progress=False) for p, t in pairs]
    options = {"metrics": ["comprehensiveness", "sufficiency"], "random_seeds": 1, "bootstrap": 0}
    together = evaluate_faithfulness(model, batched, **options)
    apart = evaluate_faithfulness(model, separate, **options)
    assert together.tokens == apart.tokens and [len(row) for row in together.tokens] == [4, 4]
    for metric in ("comprehensiveness", "sufficiency"):
        for field in ("values", "random_values"):
            flat = [value for row in getattr(together[metric], field) for value in row]
            assert flat == pytest.approx([value for row in getattr(apart[metric], field) for value in row], abs=1e-7)
