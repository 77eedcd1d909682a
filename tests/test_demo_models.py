"""The embedded demo models: present, small, loadable offline, really trained, with a consistent probe set."""

from __future__ import annotations

import os
from pathlib import Path

import inseq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import inseq_ext
from inseq_ext import ground_truth
from inseq_ext.chat import SIMPLE_CHAT_TEMPLATE
from inseq_ext.demo_models import CAUSAL_DEMO_MODEL_NAMES, DEMO_MODEL_NAMES, demo_probes, training_report
from inseq_ext.evaluation.ground_truth import RANDOM_BASELINE, evaluate_model, markdown_table

MAX_MODEL_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def demo_pairs():
    """``name -> (model, tokenizer)`` of the decoder-only demo models, loaded from the package folders."""
    pairs = {}
    for name in CAUSAL_DEMO_MODEL_NAMES:
        directory = inseq_ext.demo_model(name)
        pairs[name] = (
            AutoModelForCausalLM.from_pretrained(directory).eval(),
            AutoTokenizer.from_pretrained(directory),
        )
    return pairs


def test_demo_model_folders_and_size():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for name in DEMO_MODEL_NAMES:
        directory = Path(inseq_ext.demo_model(name))
        assert directory.parent == Path(inseq_ext.__file__).parent / "demo_models"
        for file in ("config.json", "model.safetensors", "tokenizer.json", "probes.json", "training_report.json"):
            assert (directory / file).is_file(), file
        assert sum(f.stat().st_size for f in directory.iterdir()) <= MAX_MODEL_BYTES


def test_unknown_demo_model_lists_valid_names():
    with pytest.raises(ValueError, match="gpt2, llama"):
        inseq_ext.demo_model("gpt3")


def test_architectures(demo_pairs):
    gpt2, _ = demo_pairs["gpt2"]
    llama, llama_tokenizer = demo_pairs["llama"]
    assert gpt2.config.model_type == "gpt2"
    assert llama.config.model_type == "llama"
    # Grouped-query attention: fewer key/value heads than query heads.
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads
    assert llama_tokenizer("Hello").input_ids[0] == llama_tokenizer.bos_token_id


def test_inseq_loads_demo_model_by_path_offline():
    model = inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")
    out = model.attribute("The capital of France is", "The capital of France is Paris.", show_progress=False)
    scores = out.aggregate().sequence_attributions[0].target_attributions
    assert torch.isfinite(scores[:5, 0]).all()


def learned_tasks(name: str) -> list[str]:
    """Tasks the training report says the model learned (held-out greedy accuracy >= 95%)."""
    return [task for task, accuracy in training_report(name)["held_out_accuracy"].items() if accuracy >= 0.95]


@pytest.mark.parametrize("name", CAUSAL_DEMO_MODEL_NAMES)
def test_greedy_generation_answers_probes(demo_pairs, name):
    """The trained model continues a probe of every learned task with the expected answer (real generation)."""
    model, tokenizer = demo_pairs[name]
    # facts and sentiment are learned early by both models; the report must say so.
    assert {"facts", "sentiment"} <= set(learned_tasks(name))
    first_of_task = {}
    for probe in demo_probes(name):
        first_of_task.setdefault(probe["task"], probe)
    assert set(first_of_task) == {"facts", "sentiment", "lookup", "copy"}
    for task in learned_tasks(name):
        probe = first_of_task[task]
        encoding = tokenizer(probe["prompt"], return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**encoding, max_new_tokens=8, do_sample=False)
        text = tokenizer.decode(generated[0], skip_special_tokens=True)
        assert text == probe["prompt"] + probe["answer"], (task, text)
        # Generated text survives inseq's decode -> re-encode round trip.
        assert tokenizer(text).input_ids == generated[0][: len(tokenizer(text).input_ids)].tolist()


@pytest.mark.parametrize("name", CAUSAL_DEMO_MODEL_NAMES)
def test_probe_set_accuracy_matches_report(demo_pairs, name):
    """Teacher-forced first answer token of every probe: the accuracy agrees with the training report's held-out
    accuracy (the probes are a sample of the held-out set), and learned tasks are (almost) always right."""
    model, tokenizer = demo_pairs[name]
    probes = demo_probes(name)
    # One right-padded batch: in a causal model the logits at a prompt's last token ignore the padding after it.
    tokenizer.padding_side = "right"
    batch = tokenizer([probe["prompt"] for probe in probes], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    last = batch.attention_mask.sum(dim=1) - 1
    predicted = logits[torch.arange(len(probes)), last].argmax(dim=-1).tolist()
    hits: dict[str, list[bool]] = {}
    for probe, prediction in zip(probes, predicted, strict=True):
        expected = tokenizer(probe["prompt"] + probe["answer_first_token"]).input_ids[-1]
        hits.setdefault(probe["task"], []).append(prediction == expected)
    reported = training_report(name)["held_out_accuracy"]
    for task, task_hits in hits.items():
        accuracy = sum(task_hits) / len(task_hits)
        # The report scores whole answers, this the first token only, so it can only be higher (or sampling noise).
        assert accuracy >= reported[task] - 0.15, (task, accuracy, reported[task])
        if task in learned_tasks(name):
            assert accuracy >= 0.9, (task, accuracy)


@pytest.mark.parametrize("name", CAUSAL_DEMO_MODEL_NAMES)
def test_probe_ground_truth_positions(demo_pairs, name):
    _, tokenizer = demo_pairs[name]
    for probe in demo_probes(name):
        ids = tokenizer(probe["prompt"]).input_ids
        assert tokenizer.convert_ids_to_tokens(ids) == probe["prompt_tokens"]
        for position, word in zip(probe["truth_positions"], probe["truth_words"], strict=True):
            assert tokenizer.convert_tokens_to_string([probe["prompt_tokens"][position]]).strip() == word
        assert probe["answer"].startswith(probe["answer_first_token"])


def test_ground_truth_evaluation_small_subset():
    """Well-formed rates; custom_saliency agrees with inseq's saliency; both beat the random baseline."""
    results = evaluate_model("gpt2", ["custom_saliency", "saliency", RANDOM_BASELINE], per_task=3)
    by_method = {result.method: result for result in results}
    for result in results:
        assert result.probes == 12
        assert set(result.per_task) == {"facts", "sentiment", "lookup", "copy"}
        assert all(0.0 <= rate <= 1.0 for rate in result.per_task.values())
        assert result.overall == pytest.approx(sum(result.per_task.values()) / 4)
    # Same heatmaps (see the parity tests), so the same top token on every probe.
    assert by_method["custom_saliency"].hits == by_method["saliency"].hits
    assert 0.0 < by_method[RANDOM_BASELINE].overall < 0.2
    assert by_method["saliency"].overall > by_method[RANDOM_BASELINE].overall
    table = markdown_table(results)
    assert table.count("\n") == 2 + len(results)
    assert "| gpt2 | `saliency` |" in table and "random baseline" in table


def test_ground_truth_rejects_unknown_method():
    with pytest.raises(ValueError, match="custom_saliency"):
        evaluate_model("gpt2", ["no_such_method"], per_task=1)


@pytest.mark.parametrize("name", CAUSAL_DEMO_MODEL_NAMES)
def test_demo_tokenizers_carry_a_chat_template(demo_pairs, name):
    """The training script saves the plain-text chat template; it renders conversations after a reload."""
    _, tokenizer = demo_pairs[name]
    assert tokenizer.chat_template == SIMPLE_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Answer from the data."}, {"role": "user", "content": "Hours?"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<s><|system|>\nAnswer from the data.</s>\n<|user|>\nHours?</s>\n<|assistant|>\n"


def test_ground_truth_attention_methods_use_their_attention_implementation(monkeypatch):
    """inseq's attention reads eager weights; rotary_attention runs on the SDPA model and rebuilds the same weights,
    so both pick the same top token on every probe."""
    loaded = []
    original = ground_truth.load_for_evaluation

    def recording_load(name, attn_implementation="sdpa"):
        model = original(name, attn_implementation)
        loaded.append((attn_implementation, model.model.config._attn_implementation))
        return model

    monkeypatch.setattr(ground_truth, "load_for_evaluation", recording_load)
    results = evaluate_model("llama", ["attention", "rotary_attention", "saliency"], per_task=2)
    assert loaded == [("eager", "eager"), ("sdpa", "sdpa")]  # saliency reuses the SDPA model
    by_method = {result.method: result for result in results}
    assert by_method["attention"].hits == by_method["rotary_attention"].hits
    assert "rotary_attention" in ground_truth.DEFAULT_METHODS
