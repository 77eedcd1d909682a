"""The translation demo model: a small BART-architecture encoder-decoder trained on synthetic parallel text.

The source language is a fragment of English; the target is an invented language ("Velan") whose sentences are
word-by-word translations with a fixed lexicon and three reordering rules, so the alignment of every target word to
its source word is known exactly:

* adjectives follow their noun ("the big dog" -> "lo kuda mire");
* the verb goes to the end of the sentence (subject-object-verb order);
* an adverb of time moves to the front.

English: ``DET [ADJ] NOUN VERB DET [ADJ] NOUN [ADV] .``  ->  Velan: ``[ADV] DET NOUN [ADJ] DET NOUN [ADJ] VERB .``

Everything is seeded; the tokenizer is word-level (one token per word, shared by both languages), so decoded text
re-encodes to the same tokens. ``train_translation_model`` is called by ``scripts/train_demo_models.py`` (``--models
translation``) and writes ``inseq_ext/demo_models/translation/`` with ``training_report.json`` (held-out exact-match
accuracy of greedy translation) and ``probes.json`` (held-out sentences with the source position aligned to each
target word).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from train_demo_models import warmup_cosine_optimizer
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

SEED = 4321
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
NAME = "translation"

DETERMINERS = ["the", "a", "this", "my"]
ADJECTIVES = [
    "big", "small", "red", "old", "young", "happy", "tall", "green",
    "blue", "quiet", "fast", "angry", "brave", "tired", "clever", "lazy",
]  # fmt: skip
NOUNS = [
    "dog", "cat", "bird", "horse", "farmer", "teacher", "child", "king", "fish", "mouse",
    "girl", "boy", "doctor", "baker", "wolf", "fox", "pilot", "sailor", "cow", "frog",
]  # fmt: skip
VERBS = [
    "sees",
    "likes",
    "follows",
    "helps",
    "finds",
    "calls",
    "watches",
    "feeds",
    "chases",
    "meets",
    "paints",
    "hears",
]
ADVERBS = ["today", "again", "often", "now", "later", "sometimes"]
WORD_CLASSES = {"det": DETERMINERS, "adj": ADJECTIVES, "noun": NOUNS, "verb": VERBS, "adv": ADVERBS}
ADJECTIVE_RATE = 0.5  # chance that a noun phrase has an adjective
ADVERB_RATE = 0.35  # chance that a sentence ends with an adverb


def invented_lexicon(seed: int = SEED) -> dict[str, str]:
    """English word -> invented word: distinct consonant-vowel words of 2-3 syllables, drawn with a fixed seed."""
    rng = random.Random(seed)
    english = [word for words in WORD_CLASSES.values() for word in words]
    taken = set(english)
    lexicon = {}
    for word in english:
        while True:
            syllables = rng.choice([2, 2, 3])
            candidate = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(syllables))
            if candidate not in taken:
                break
        taken.add(candidate)
        lexicon[word] = candidate
    return lexicon


LEXICON = invented_lexicon()


@dataclass
class SentencePair:
    """A source sentence, its translation, and per target word the index of its source word and its class."""

    source_words: list[str]
    target_words: list[str]
    alignment: list[int]  # index into source_words, one per target word
    classes: list[str]  # word class of each target word ("punct" for the final stop)

    @property
    def source(self) -> str:
        return " ".join(self.source_words)

    @property
    def target(self) -> str:
        return " ".join(self.target_words)


def sentence_pair(rng: random.Random) -> SentencePair:
    """A random English sentence and its Velan translation with the word alignment."""
    source: list[tuple[str, str]] = []  # (word, class)

    def noun_phrase() -> tuple[int, int | None, int]:
        """Append DET [ADJ] NOUN; return the source indices of the determiner, adjective (or None) and noun."""
        det = len(source)
        source.append((rng.choice(DETERMINERS), "det"))
        adj = None
        if rng.random() < ADJECTIVE_RATE:
            adj = len(source)
            source.append((rng.choice(ADJECTIVES), "adj"))
        noun = len(source)
        source.append((rng.choice(NOUNS), "noun"))
        return det, adj, noun

    subject = noun_phrase()
    verb = len(source)
    source.append((rng.choice(VERBS), "verb"))
    obj = noun_phrase()
    adverb = None
    if rng.random() < ADVERB_RATE:
        adverb = len(source)
        source.append((rng.choice(ADVERBS), "adv"))
    stop = len(source)
    source.append((".", "punct"))

    # Target order: [ADV] DET NOUN [ADJ] DET NOUN [ADJ] VERB .
    order = [adverb] if adverb is not None else []
    for det, adj, noun in (subject, obj):
        order += [det, noun] + ([adj] if adj is not None else [])
    order += [verb, stop]
    words = [word for word, _ in source]
    return SentencePair(
        source_words=words,
        target_words=[LEXICON.get(words[index], words[index]) for index in order],
        alignment=order,
        classes=[source[index][1] for index in order],
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over both languages: every word is one token; encodings are ``<s> words </s>``."""
    words = [word for english in WORD_CLASSES.values() for word in english]
    vocabulary = [PAD, BOS, EOS, UNK, "."] + words + [LEXICON[word] for word in words]
    tokenizer = Tokenizer(models.WordLevel({token: index for index, token in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: tokenizers joins decoded tokens with single spaces, which is exactly this corpus' spelling.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A $B {EOS}",
        special_tokens=[(BOS, vocabulary.index(BOS)), (EOS, vocabulary.index(EOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, model_max_length=64
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> BartForConditionalGeneration:
    """A 2+2-layer BART, hidden size 128, 4 heads; decoding starts from ``</s>`` then ``<s>`` (BART's convention)."""
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=128, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )  # fmt: skip
    return BartForConditionalGeneration(config)


def batch_tensors(tokenizer: PreTrainedTokenizerFast, pairs: list[SentencePair]) -> dict[str, torch.Tensor]:
    """Source ids/mask and labels ``<s> target </s>`` (padding ignored by the loss as -100)."""
    source = tokenizer([pair.source for pair in pairs], padding=True, return_tensors="pt")
    target = tokenizer(text_target=[pair.target for pair in pairs], padding=True, return_tensors="pt")
    labels = target.input_ids.masked_fill(target.attention_mask == 0, -100)
    return {"input_ids": source.input_ids, "attention_mask": source.attention_mask, "labels": labels}


def train(model, tokenizer, pairs: list[SentencePair], steps: int, batch_size: int, lr: float) -> list[float]:
    """AdamW with linear warm-up and cosine decay on the token cross-entropy of the translation."""
    optimizer, scheduler = warmup_cosine_optimizer(model, lr, steps)
    model.train()
    losses = []
    for step in range(steps):
        chunk = pairs[step * batch_size : (step + 1) * batch_size]
        loss = model(**batch_tensors(tokenizer, chunk)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def translate(model, tokenizer, sources: list[str], batch_size: int = 100) -> list[str]:
    """Greedy translations of ``sources``."""
    outputs = []
    for start in range(0, len(sources), batch_size):
        batch = tokenizer(sources[start : start + batch_size], padding=True, return_tensors="pt")
        generated = model.generate(**batch, max_new_tokens=32, num_beams=1, do_sample=False)
        outputs += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return outputs


def exact_match(model, tokenizer, pairs: list[SentencePair]) -> float:
    """Share of sentences whose greedy translation equals the reference exactly."""
    predictions = translate(model, tokenizer, [pair.source for pair in pairs])
    return sum(p == pair.target for p, pair in zip(predictions, pairs, strict=True)) / len(pairs)


def probe_records(tokenizer: PreTrainedTokenizerFast, pairs: list[SentencePair]) -> list[dict]:
    """Probe entries; ``alignment`` indexes ``source_tokens`` (which start with ``<s>``, hence the +1)."""
    return [
        {
            "task": "translation",
            "source": pair.source,
            "target": pair.target,
            "source_tokens": tokenizer.convert_ids_to_tokens(tokenizer(pair.source).input_ids),
            "target_words": pair.target_words,
            "alignment": [index + 1 for index in pair.alignment],
            "word_classes": pair.classes,
        }
        for pair in pairs
    ]


def train_translation_model(
    out: Path, steps: int = 2000, batch_size: int = 64, lr: float = 2e-3, held_out: int = 300, probes: int = 50
) -> dict:
    """Train the translation demo model and write it to ``out / "translation"``; returns the training report.

    Args:
        out: The demo models folder (``inseq_ext/demo_models``).
        steps: Optimizer steps; each sees ``batch_size`` fresh sentence pairs.
        batch_size: Sentence pairs per step.
        lr: Peak learning rate.
        held_out: Held-out sentences (absent from the training pairs) for the exact-match accuracy.
        probes: Held-out sentences written to ``probes.json`` (a subset of the evaluation sentences).
    """
    started = time.perf_counter()
    rng = random.Random(SEED)
    pairs = [sentence_pair(rng) for _ in range(steps * batch_size)]
    seen = {pair.source for pair in pairs}
    evaluation_rng = random.Random(SEED + 1)
    evaluation: list[SentencePair] = []
    while len(evaluation) < held_out:
        pair = sentence_pair(evaluation_rng)
        if pair.source not in seen:
            seen.add(pair.source)  # also keeps the held-out sentences distinct
            evaluation.append(pair)

    tokenizer = build_tokenizer()
    torch.manual_seed(SEED)
    model = build_model(tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"[{NAME}] {parameters:,} parameters, vocabulary {len(tokenizer)}, {len(pairs)} training pairs", flush=True)
    losses = train(model, tokenizer, pairs, steps, batch_size, lr)
    seconds = time.perf_counter() - started
    accuracy = exact_match(model, tokenizer, evaluation)
    print(f"[{NAME}] trained in {seconds:.0f} s; held-out exact-match accuracy {accuracy:.3f}", flush=True)

    target = out / NAME
    staging = out / f".{NAME}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.eos_token_id
    model.generation_config.max_length = 32  # the longest sentence has 9 words; keeps generate() from warning
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    report = {
        "model": NAME,
        "architecture": "bart",
        "parameters": parameters,
        "vocabulary": len(tokenizer),
        "config": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": SEED},
        "training_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "held_out_accuracy": {"translation": accuracy},
        "held_out_sizes": {"translation": len(evaluation)},
        "lexicon": LEXICON,
        "note": "exact match of the greedy translation on sentences absent from the training pairs; target order "
        "[ADV] DET NOUN [ADJ] DET NOUN [ADJ] VERB . from English DET [ADJ] NOUN VERB DET [ADJ] NOUN [ADV] .",
    }
    (staging / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (staging / "probes.json").write_text(json.dumps(probe_records(tokenizer, evaluation[:probes]), indent=1) + "\n")
    # Replace the previous model only once the new one is complete.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    size = sum(f.stat().st_size for f in target.iterdir())
    print(f"[{NAME}] written to {target} ({size / 1e6:.1f} MB)", flush=True)
    return report
