"""Train the embedded demo models (GPT-2 and Llama architectures) on a synthetic corpus with known answer sources.

The script generates its own corpus (fixed seeds, deterministic order) from four task kinds, in each of which the
answer depends on one known input token:

* ``facts``: "The capital of France is Paris." (the answer depends on the subject, *France*);
* ``sentiment``: a short movie review whose label is set by its one opinion word among neutral clauses;
* ``lookup``: a "[DATA]" block of opening hours and a question about one service (the answer is that service's
  hour);
* ``copy``: a code of a few words repeated later in the text (induction: the answer is the code's first word).

A quarter of the training texts are an auxiliary ``repeat`` task (distinct random corpus words, then the same list
again), never evaluated: only matching a token with its earlier occurrence predicts the repeat, which makes the
models form the induction mechanism the lookup needs (without it they copied *an* hour of the block, not the asked
service's, and the copy task was solved from positions).

It trains a byte-level BPE tokenizer on the corpus (every corpus word is a single token, so generated text survives
inseq's decode -> re-encode round trip), trains both models, measures greedy held-out accuracy per task, and writes
per model into ``inseq_ext/demo_models/<name>/``: ``config.json``, ``model.safetensors``, the tokenizer files,
``training_report.json`` and ``probes.json`` (prompts with the expected answer and the ground-truth position of the
source token of the answer).

Usage: python scripts/train_demo_models.py [--models gpt2 llama translation] [--steps N]
       [--out inseq_ext/demo_models]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from inseq_ext.chat import ensure_chat_template

SEED = 1234
# Optimizer steps per model: GPT-2 (learned absolute positions) needs more of them than Llama (rotary) before the
# induction mechanism the lookup task needs forms (Llama: lookup 100% from about step 2,750; GPT-2: about 4,250).
STEPS = {"gpt2": 6000, "llama": 3500}
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
TASKS = ("facts", "sentiment", "lookup", "copy")

# ----------------------------------------------------------------------------------------------------------------
# Synthetic corpus
# ----------------------------------------------------------------------------------------------------------------

# country, capital, main language, currency
COUNTRIES = [
    ("France", "Paris", "French", "euro"),
    ("Italy", "Rome", "Italian", "euro"),
    ("Spain", "Madrid", "Spanish", "euro"),
    ("Germany", "Berlin", "German", "euro"),
    ("Portugal", "Lisbon", "Portuguese", "euro"),
    ("Greece", "Athens", "Greek", "euro"),
    ("Austria", "Vienna", "German", "euro"),
    ("Finland", "Helsinki", "Finnish", "euro"),
    ("Japan", "Tokyo", "Japanese", "yen"),
    ("China", "Beijing", "Chinese", "yuan"),
    ("Russia", "Moscow", "Russian", "ruble"),
    ("Egypt", "Cairo", "Arabic", "pound"),
    ("Kenya", "Nairobi", "Swahili", "shilling"),
    ("Peru", "Lima", "Spanish", "sol"),
    ("Canada", "Ottawa", "English", "dollar"),
    ("Australia", "Canberra", "English", "dollar"),
    ("America", "Washington", "English", "dollar"),
    ("India", "Delhi", "Hindi", "rupee"),
    ("Poland", "Warsaw", "Polish", "zloty"),
    ("Sweden", "Stockholm", "Swedish", "krona"),
    ("Norway", "Oslo", "Norwegian", "krone"),
    ("Turkey", "Ankara", "Turkish", "lira"),
    ("Thailand", "Bangkok", "Thai", "baht"),
    ("Vietnam", "Hanoi", "Vietnamese", "dong"),
    ("Hungary", "Budapest", "Hungarian", "forint"),
    ("Ghana", "Accra", "English", "cedi"),
    ("Nigeria", "Abuja", "English", "naira"),
    ("Mexico", "Mexico City", "Spanish", "peso"),
    ("Indonesia", "Jakarta", "Indonesian", "rupiah"),
]
FIRST_PRESIDENTS = {
    "America": "George Washington",
    "Kenya": "Jomo Kenyatta",
    "Ghana": "Kwame Nkrumah",
    "India": "Rajendra Prasad",
    "Germany": "Friedrich Ebert",
    "Egypt": "Mohamed Naguib",
    "Turkey": "Mustafa Kemal",
    "Nigeria": "Nnamdi Azikiwe",
    "Mexico": "Guadalupe Victoria",
    "Italy": "Enrico De Nicola",
    "Austria": "Michael Hainisch",
    "Finland": "Kaarlo Stahlberg",
    "Indonesia": "Sukarno",
}

POSITIVE = ["great", "wonderful", "brilliant", "excellent", "superb", "delightful", "charming", "moving", "fun"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "dreadful", "bad", "weak", "tedious", "messy"]
ASPECTS = ["acting", "plot", "ending", "script", "music", "movie", "film", "story"]
NEUTRAL_CLAUSES = [
    "the film is about a {noun}",
    "it runs for {number} minutes",
    "we saw it on {day}",
    "the story is set in {city}",
    "the lead is played by {person}",
    "it was shown at the {place}",
    "the director is {person}",
    "it came out in {month}",
]
NOUNS = ["farmer", "pilot", "teacher", "dog", "family", "robot", "detective", "singer", "sailor", "king"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CITIES = ["Paris", "Rome", "Tokyo", "Oslo", "Cairo", "Lima", "Berlin", "Madrid"]
PEOPLE = ["Anna", "Boris", "Carla", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas"]
PLACES = ["cinema", "festival", "library", "school", "museum"]
MONTHS = ["January", "March", "May", "July", "September", "November"]

SERVICES = ["chat", "phone", "email", "store", "desk", "pool", "gym", "library", "cafe", "bank"]
OPEN_HOURS = list(range(5, 13))  # 5..12: opening and closing hours never overlap, so the question decides
CLOSE_HOURS = list(range(13, 24))  # 13..23

CODE_WORDS = [
    "red", "blue", "green", "gold", "silver", "black", "white", "pink",
    "fox", "owl", "cat", "wolf", "bear", "lion", "hawk", "frog",
    "apple", "lemon", "pear", "plum", "grape", "melon", "mango", "peach",
    "river", "stone", "cloud", "storm", "tree", "moon", "star", "sun",
]  # fmt: skip
COPY_FILLERS = [
    "",
    "Keep it safe.",
    "Do not share it with anyone.",
    "The meeting starts soon.",
    "Write it down now.",
    "You will need it later today.",
]


@dataclass
class Example:
    """One training or probe text: ``prompt + answer`` is the full text; ``truth_chars`` locate the answer's source.

    ``truth_chars`` are character offsets in ``prompt`` of the first letter of the word(s) that determine the first
    answer token; ``truth_words`` are those words.
    """

    task: str
    prompt: str
    answer: str
    truth_chars: list[int] = field(default_factory=list)
    truth_words: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.prompt + self.answer


class PromptBuilder:
    """Concatenate text pieces and remember where marked words start."""

    def __init__(self) -> None:
        self.text = ""
        self.marks: list[int] = []
        self.marked: list[str] = []

    def add(self, piece: str, mark: str | None = None) -> PromptBuilder:
        if mark is not None:
            self.marks.append(len(self.text) + piece.index(mark))
            self.marked.append(mark)
        self.text += piece
        return self


def all_facts() -> list[Example]:
    """Every fact sentence, as prompt + answer; the subject (country) is the ground-truth source."""
    facts = []
    for country, capital, language, currency in COUNTRIES:
        relations = [
            ("The capital of ", capital, ""),
            ("The main language of ", language, ""),
            ("The currency of ", currency, "the "),
        ]
        if country in FIRST_PRESIDENTS:
            relations.append(("The first president of ", FIRST_PRESIDENTS[country], ""))
        for lead, answer, article in relations:
            builder = (
                PromptBuilder()
                .add(lead)
                .add(country, mark=country)
                .add(f" is{' ' + article.strip() if article else ''}")
            )
            facts.append(Example("facts", builder.text, f" {answer}.", builder.marks, builder.marked))
    return facts


def sentiment_example(rng: random.Random) -> Example:
    """A review of 1-3 neutral clauses and one opinion clause, in random order; label set by the opinion word."""
    positive = rng.random() < 0.5
    opinion = rng.choice(POSITIVE if positive else NEGATIVE)
    fills = {
        "noun": rng.choice(NOUNS),
        "number": str(rng.choice([80, 90, 95, 100, 110, 120])),
        "day": rng.choice(DAYS),
        "city": rng.choice(CITIES),
        "person": rng.choice(PEOPLE),
        "place": rng.choice(PLACES),
        "month": rng.choice(MONTHS),
    }
    clauses = [template.format(**fills) for template in rng.sample(NEUTRAL_CLAUSES, rng.randint(1, 3))]
    opinion_clause = rng.choice(["the {aspect} was {opinion}", "it was a {opinion} {aspect}"]).format(
        aspect=rng.choice(ASPECTS), opinion="\0"
    )
    position = rng.randint(0, len(clauses))
    builder = PromptBuilder().add("Review:")
    for index in range(len(clauses) + 1):
        separator = " " if index == 0 else ", "
        if index == position:
            before, after = opinion_clause.split("\0")
            builder.add(separator + before).add(opinion, mark=opinion).add(after)
        else:
            builder.add(separator + clauses[index - (index > position)])
    builder.add(". Sentiment:")
    return Example(
        "sentiment", builder.text, " positive." if positive else " negative.", builder.marks, builder.marked
    )


def lookup_example(rng: random.Random) -> Example:
    """A [DATA] block of 3 services' hours, then a question on one service; the answer copies its opening hour.

    The prompt ends with the service name, which starts its data line (and appears nowhere else): finding the line
    and copying the token after the name is the induction pattern small transformers learn quickly.
    """
    services = rng.sample(SERVICES, 3)
    hours = {service: (rng.choice(OPEN_HOURS), rng.choice(CLOSE_HOURS)) for service in services}
    asked = rng.choice(services)
    builder = PromptBuilder().add("[DATA]")
    for service in services:
        opens, closes = hours[service]
        if service == asked:
            builder.add(f" {service}").add(f" {opens}", mark=str(opens)).add(f" to {closes}.")
        else:
            builder.add(f" {service} {opens} to {closes}.")
    builder.add(f" [/DATA] Opening hour of the {asked}")
    return Example("lookup", builder.text, f" {hours[asked][0]}.", builder.marks, builder.marked)


def copy_example(rng: random.Random) -> Example:
    """A code of 2-4 words, a filler sentence, then the code again; the first code word is the source.

    "the code is" precedes the code both times, so the first answer word is the token that followed it before.
    """
    code = rng.sample(CODE_WORDS, rng.randint(2, 4))
    builder = PromptBuilder().add("The code is").add(f" {code[0]}", mark=code[0]).add(" " + " ".join(code[1:]) + ".")
    filler = rng.choice(COPY_FILLERS)
    builder.add((" " + filler if filler else "") + " Once more, the code is")
    return Example("copy", builder.text, " " + " ".join(code) + ".", builder.marks, builder.marked)


GENERATORS = {"sentiment": sentiment_example, "lookup": lookup_example, "copy": copy_example}
REPEAT_WORDS = sorted(set(CODE_WORDS + SERVICES + NOUNS + PEOPLE + [str(h) for h in OPEN_HOURS + CLOSE_HOURS]))


def repeat_example(rng: random.Random) -> Example:
    """Training only: distinct random words, then the same words again (only induction predicts the repeat)."""
    words = " ".join(rng.sample(REPEAT_WORDS, rng.randint(4, 10)))
    return Example("repeat", f"List: {words}. Again:", f" {words}.")


# Share of each task in the training stream (facts are few sentences, repeated).
MIXTURE = {"facts": 0.1, "sentiment": 0.15, "lookup": 0.35, "copy": 0.15, "repeat": 0.25}


def training_stream(count: int, seed: int) -> list[Example]:
    """``count`` training examples drawn from the task mixture in a fixed order."""
    rng = random.Random(seed)
    facts = all_facts()
    tasks, weights = zip(*MIXTURE.items(), strict=True)
    examples = []
    for _ in range(count):
        task = rng.choices(tasks, weights)[0]
        if task == "repeat":
            examples.append(repeat_example(rng))
        else:
            examples.append(rng.choice(facts) if task == "facts" else GENERATORS[task](rng))
    return examples


def held_out(per_task: int, seed: int, exclude: set[str]) -> dict[str, list[Example]]:
    """Fresh examples per task that never occur in the training texts ``exclude`` (facts: all of them, see below).

    Facts cannot be new: a fact the model never saw cannot be known. Their "held-out" score is recall of the
    trained facts, and is labelled so in the report.
    """
    rng = random.Random(seed)
    sets: dict[str, list[Example]] = {"facts": all_facts()}
    for task, generate in GENERATORS.items():
        found: list[Example] = []
        seen: set[str] = set()
        while len(found) < per_task:
            example = generate(rng)
            if example.text not in exclude and example.text not in seen:
                seen.add(example.text)
                found.append(example)
        sets[task] = found
    return sets


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, add_bos: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the corpus (no unknown bytes), with ``<s>`` prepended when ``add_bos``."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # BPE learns from the distinct word pieces, each counted once, so that merges complete every corpus word before
    # the vocabulary runs out (trained on running text, frequent pairs would use up the merges first).
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = sorted({text[start:end] for text in texts for _, (start, end) in splitter.pre_tokenize_str(text)})
    tokenizer.train_from_iterator(pieces, trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        add_bos_token=add_bos,
        model_max_length=128,
    )


def check_words_are_tokens(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> None:
    """Fail unless every space-separated word piece of the corpus is one token (needed for the round trip)."""
    pieces = {piece for text in texts for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)}
    vocab = tokenizer.get_vocab()
    missing = sorted(piece for piece in pieces if piece not in vocab)
    if missing:
        raise SystemExit(f"{len(missing)} corpus words are split into several tokens, e.g. {missing[:10]}")


# ----------------------------------------------------------------------------------------------------------------
# Models, training, evaluation
# ----------------------------------------------------------------------------------------------------------------


def build(name: str, tokenizer: PreTrainedTokenizerFast):
    """A small GPT-2 (learned positions) or Llama (rotary, grouped-query attention: 4 heads, 2 key/value heads)."""
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    ids["eos_token_id"] = tokenizer.eos_token_id
    vocab = len(tokenizer)
    if name == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=128, n_embd=128, n_layer=3, n_head=4, n_inner=512,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )  # fmt: skip
        model = GPT2LMHeadModel(config)
    elif name == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=True, **ids,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"Unknown demo model {name!r}; choose gpt2 or llama.")
    return model


def tokenize(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> list[tuple[list[int], int]]:
    """Per example, the ids of ``text + </s>`` and the number of prompt tokens (distinct texts tokenized once)."""
    cache: dict[str, tuple[list[int], int]] = {}
    for example in examples:
        if example.text not in cache:
            prompt_ids = tokenizer(example.prompt).input_ids
            full_ids = tokenizer(example.text).input_ids + [tokenizer.eos_token_id]
            assert full_ids[: len(prompt_ids)] == prompt_ids, example.text
            cache[example.text] = (full_ids, len(prompt_ids))
    return [cache[example.text] for example in examples]


def encode(tokenizer: PreTrainedTokenizerFast, encoded: list[tuple[list[int], int]]) -> tuple[torch.Tensor, ...]:
    """Right-padded ids of ``text + </s>``, attention mask, and a mask of answer tokens (answer and ``</s>``)."""
    rows = [full_ids for full_ids, _ in encoded]
    answer_masks = [[0] * prompt_length + [1] * (len(full_ids) - prompt_length) for full_ids, prompt_length in encoded]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, (row, answer_row) in enumerate(zip(rows, answer_masks, strict=True)):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        answer[index, : len(row)] = torch.tensor(answer_row, dtype=torch.bool)
    return ids, mask, answer


def warmup_cosine_optimizer(model, lr: float, steps: int):
    """AdamW with a linear warm-up over the first 5% of ``steps``, then cosine decay to 5% of ``lr``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * 0.95 + 0.05

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train(
    model, tokenizer, examples: list[Example], steps: int, batch_size: int, lr: float, monitor: dict | None = None
) -> list[float]:
    """AdamW with warm-up and cosine decay on the LM loss, plus the loss on answer tokens (their weight doubles)."""
    optimizer, scheduler = warmup_cosine_optimizer(model, lr, steps)
    model.train()
    losses = []
    encoded = tokenize(tokenizer, examples)
    for step in range(steps):
        start = (step * batch_size) % len(examples)
        ids, mask, answer = encode(tokenizer, encoded[start : start + batch_size])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = ids[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        valid = mask[:, 1:].bool()
        answer_valid = answer[:, 1:] & valid
        loss = token_loss[valid].mean() + token_loss[answer_valid].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
        if monitor and step % 250 == 249:
            model.eval()
            scores = {task: round(greedy_accuracy(model, tokenizer, sample), 3) for task, sample in monitor.items()}
            print(f"  step {step:5d}  accuracy on a held-out sample {scores}", flush=True)
            model.train()
    model.eval()
    return losses


@torch.no_grad()
def greedy_accuracy(model, tokenizer, examples: list[Example], batch_size: int = 64) -> float:
    """Share of examples whose greedy continuation starts with the whole answer.

    Greedy decoding reproduces the answer exactly when, fed the right prefix, the arg-max at every answer position
    is the answer token; one teacher-forced pass per batch checks that.
    """
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, answer = encode(tokenizer, tokenize(tokenizer, chunk))
        predictions = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        hits = (predictions == ids[:, 1:]) | ~answer[:, 1:]
        # The answer words only: the final "." and </s> are not part of it.
        for row in range(len(chunk)):
            answer_positions = answer[row, 1:].nonzero().flatten()[:-2]
            correct += bool(hits[row, answer_positions].all())
    return correct / len(examples)


def probe_records(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> list[dict]:
    """Probe entries: prompt, answer, the answer's first token, and the ground-truth prompt token index / word."""
    records = []
    for example in examples:
        encoding = tokenizer(example.prompt, return_offsets_mapping=True)
        tokens = tokenizer.convert_ids_to_tokens(encoding.input_ids)
        positions = []
        for char in example.truth_chars:
            index = next(i for i, (s, e) in enumerate(encoding.offset_mapping) if s <= char < e and e > s)
            positions.append(index)
        answer_ids = tokenizer(example.text).input_ids[len(encoding.input_ids) :]
        records.append(
            {
                "task": example.task,
                "prompt": example.prompt,
                "answer": example.answer,
                "answer_first_token": tokenizer.decode(answer_ids[:1]),
                "prompt_tokens": tokens,
                "truth_positions": positions,
                "truth_words": example.truth_words,
            }
        )
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["gpt2", "llama", "translation"], choices=["gpt2", "llama", "translation"]
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default: STEPS)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=2048, help="upper bound; BPE stops once words are whole")
    parser.add_argument("--held-out", type=int, default=300, help="held-out examples per generated task")
    parser.add_argument("--probes", type=int, default=50, help="probes per task written to probes.json")
    # One thread per model: on a shared 2-core machine two single-threaded runs (one per model, in parallel) are
    # faster than one two-threaded run, and a single thread keeps the float reductions in a fixed order.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "inseq_ext" / "demo_models")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    # The encoder-decoder translation model has its own corpus, sizes and training: scripts/demo_translation.py.
    if "translation" in args.models:
        from demo_translation import train_translation_model

        train_translation_model(args.out)
        args.models = [name for name in args.models if name != "translation"]
        if not args.models:
            return
    for name in args.models:
        # Each model's corpus is the stream of its own number of steps (the first texts are shared).
        steps = args.steps or STEPS[name]
        corpus = training_stream(steps * args.batch_size, SEED)
        texts = [example.text for example in corpus]
        fact_texts = [fact.text for fact in all_facts()]  # already in any corpus of useful size; for small ones
        evaluation = held_out(args.held_out, SEED + 1, set(texts))
        probes_rng = random.Random(SEED + 2)
        probe_examples = [
            example
            for task in TASKS
            for example in probes_rng.sample(evaluation[task], min(args.probes, len(evaluation[task])))
        ]
        print(f"[{name}] corpus: {len(corpus)} training texts, {len(set(texts))} distinct", flush=True)
        started = time.perf_counter()
        tokenizer = train_tokenizer(sorted(set(texts + fact_texts)), args.vocab_size, add_bos=name == "llama")
        check_words_are_tokens(tokenizer, texts + [e.text for task in TASKS for e in evaluation[task]])
        torch.manual_seed(SEED)
        model = build(name, tokenizer)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"[{name}] {parameters:,} parameters, vocabulary {len(tokenizer)}", flush=True)
        monitor = {task: evaluation[task][:64] for task in TASKS}
        losses = train(model, tokenizer, corpus, steps, args.batch_size, args.lr, monitor)
        seconds = time.perf_counter() - started
        accuracy = {task: greedy_accuracy(model, tokenizer, evaluation[task]) for task in TASKS}
        print(f"[{name}] trained in {seconds:.0f} s; held-out greedy accuracy: {accuracy}", flush=True)

        target = args.out / name
        staging = args.out / f".{name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(staging, safe_serialization=True)
        # A plain-text chat template (role markers are ordinary text, no new tokens), so chat helpers and notebooks
        # can render conversations for the demo models; the models were not trained on chats.
        ensure_chat_template(tokenizer)
        tokenizer.save_pretrained(staging)
        report = {
            "model": name,
            "parameters": parameters,
            "vocabulary": len(tokenizer),
            "config": {"steps": steps, "batch_size": args.batch_size, "lr": args.lr, "seed": SEED},
            "training_seconds": round(seconds, 1),
            "threads": args.threads,
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "held_out_accuracy": accuracy,
            "held_out_sizes": {task: len(evaluation[task]) for task in TASKS},
            "note": "facts: recall of the trained fact sentences (a fact never seen cannot be known); "
            "other tasks: fresh examples absent from the training texts",
        }
        (staging / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "probes.json").write_text(json.dumps(probe_records(tokenizer, probe_examples), indent=1) + "\n")
        # Replace the previous model only once the new one is complete.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"[{name}] written to {target} ({size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
