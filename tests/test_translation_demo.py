"""The translation demo model (encoder-decoder): loads offline, translates held-out sentences, consistent probes,
and attributions find the known word alignment far more often than chance."""

from __future__ import annotations

import os
from pathlib import Path

import inseq
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import inseq_ext
from inseq_ext.cli import main as cli_main
from inseq_ext.demo_models import ENCODER_DECODER_DEMO_MODEL_NAMES, demo_probes, training_report
from inseq_ext.evaluation.ground_truth import RANDOM_BASELINE
from inseq_ext.evaluation.translation_truth import evaluate_translation

NAME = "translation"


@pytest.fixture(scope="module")
def translation_pair():
    directory = inseq_ext.demo_model(NAME)
    return AutoModelForSeq2SeqLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def test_registered_small_and_reported():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert NAME in inseq_ext.DEMO_MODEL_NAMES and NAME in ENCODER_DECODER_DEMO_MODEL_NAMES
    directory = Path(inseq_ext.demo_model(NAME))
    assert sum(f.stat().st_size for f in directory.iterdir()) <= 10 * 1024 * 1024
    report = training_report(NAME)
    assert report["architecture"] == "bart"
    assert report["held_out_accuracy"]["translation"] >= 0.95
    assert report["held_out_sizes"]["translation"] >= 100


def test_greedy_translation_of_held_out_probes(translation_pair):
    model, tokenizer = translation_pair
    assert model.config.is_encoder_decoder
    probes = demo_probes(NAME)[:8]
    batch = tokenizer([probe["source"] for probe in probes], padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=32, num_beams=1, do_sample=False)
    translations = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert translations == [probe["target"] for probe in probes]


def test_inseq_generates_and_round_trips_offline():
    """inseq loads the model by path, generates the reference translation itself, and re-encodes it unchanged."""
    probe = demo_probes(NAME)[0]
    model = inseq.load_model(inseq_ext.demo_model(NAME), "custom_saliency")
    out = model.attribute(probe["source"], show_progress=False)
    sequence = out.aggregate().sequence_attributions[0]
    target_words = [token.token for token in sequence.target if token.token not in ("<s>", "</s>")]
    assert target_words == probe["target_words"]
    assert [token.token for token in sequence.source] == probe["source_tokens"]
    assert torch.isfinite(sequence.source_attributions).all()


def test_probes_match_tokenizer_and_lexicon(translation_pair):
    _, tokenizer = translation_pair
    lexicon = training_report(NAME)["lexicon"]
    for probe in demo_probes(NAME):
        assert tokenizer.convert_ids_to_tokens(tokenizer(probe["source"]).input_ids) == probe["source_tokens"]
        assert tokenizer.decode(tokenizer(probe["target"]).input_ids, skip_special_tokens=True) == probe["target"]
        assert len(probe["alignment"]) == len(probe["target_words"]) == len(probe["word_classes"])
        # Each target word is the lexicon's translation of its aligned source word; each source word is used once.
        for word, position in zip(probe["target_words"], probe["alignment"], strict=True):
            assert lexicon.get(probe["source_tokens"][position], ".") == word
        assert sorted(probe["alignment"]) == list(range(1, len(probe["source_tokens"]) - 1))
        # The invented grammar: [ADV] DET NOUN [ADJ] DET NOUN [ADJ] VERB .
        without_adjectives = [c for c in probe["word_classes"] if c != "adj"]
        adverb = ["adv"] if "adv" in without_adjectives else []
        assert without_adjectives == adverb + ["det", "noun", "det", "noun", "verb", "punct"]
        for index, word_class in enumerate(probe["word_classes"]):
            if word_class == "adj":  # after its noun in the target, before it in the source
                assert probe["word_classes"][index - 1] == "noun"
                assert probe["alignment"][index] == probe["alignment"][index - 1] - 1
    # Reordering really happens (otherwise the alignment would be the diagonal).
    assert any(probe["alignment"] != sorted(probe["alignment"]) for probe in demo_probes(NAME))


def test_alignment_accuracy_beats_random_baseline():
    results = evaluate_translation(["custom_saliency", "saliency", "attention", RANDOM_BASELINE], probes=4)
    by_method = {result.method: result for result in results}
    scored_words = sum(
        sum(word_class != "punct" for word_class in probe["word_classes"]) for probe in demo_probes(NAME)[:4]
    )
    for result in results:
        assert result.probes == 4 and len(result.hits) == scored_words
        assert {"det", "noun", "verb"} <= set(result.per_task) <= {"det", "noun", "adj", "verb", "adv"}
        assert result.overall == pytest.approx(sum(result.hits) / scored_words)
    # custom_saliency computes inseq's saliency, so it picks the same source word every time.
    assert by_method["custom_saliency"].hits == by_method["saliency"].hits
    random_rate = by_method[RANDOM_BASELINE].overall
    assert 0.05 < random_rate < 0.25
    for method in ("custom_saliency", "attention"):
        assert by_method[method].overall > random_rate + 0.5, method


def test_ground_truth_cli_translation(capsys, tmp_path):
    table_path = tmp_path / "table.md"
    status = cli_main(["ground-truth", "--models", "translation", "--methods", "attention", "rotary_attention",
                       "random", "--per-task", "2", "--markdown", str(table_path)])  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    assert status == 0
    # rotary_attention rebuilds the cross-attention on the SDPA model: the same alignments as attention (eager).
    assert "skipped" not in captured.err
    rows = {line.split("|")[2].strip(): line for line in out.splitlines() if line.startswith("| translation |")}
    assert rows["`rotary_attention`"].split("|")[3:] == rows["`attention`"].split("|")[3:]
    assert "| model | method | det | noun |" in out
    assert "| translation | `attention` |" in out and "| translation | random baseline |" in out
    assert table_path.read_text(encoding="utf-8") in out


def test_evaluate_dispatches_translation_to_alignment_accuracy():
    from inseq_ext.evaluation.ground_truth import evaluate

    results = evaluate(models=["translation"], methods=["rotary_attention", RANDOM_BASELINE], per_task=3)
    assert [result.method for result in results] == ["rotary_attention", RANDOM_BASELINE]
    for result in results:
        assert result.model == "translation" and result.probes == 3
        assert set(result.per_task) <= {"det", "noun", "adj", "verb", "adv"}
