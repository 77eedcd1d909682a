"""Data-set runs: rows equal inseq's own outputs, bad rows, refused commands, kill-and-resume, two processes.

The runs use the embedded demo GPT-2 on a small data set, one thread per process (the reference run in this
process, the killed and the distributed runs in subprocesses), so that values can be compared exactly.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import inseq
import numpy as np
import pytest
import torch
from helpers import one_torch_thread

import inseq_ext
import inseq_ext_cli
from inseq_ext.dataset_runs import DatasetRunError, attribute_dataset, load_dataset_attributions
from inseq_ext.dataset_runs.store import RunFolder

REPO = Path(__file__).resolve().parents[1]
GOOD_PROMPTS = [
    "The first president of America is",
    "The capital of France is",
    "Hello ladies and",
    "The capital of Italy is",
    "The movie was",
    "I think the food is",
    "The first president of France is",
    "My favourite colour is",
    "The capital of Spain is",
    "The weather today is",
    "The first president of America was a",
    "The book was",
    "The capital of Germany is",
    "I think the movie was really",
]
#: Options of every run of the test data set (the reference, the killed runs, the two-process run).
RUN_OPTIONS = {"id_column": "id", "batch_size": 2, "shard_size": 2, "max_new_tokens": 5}
CLI_OPTIONS = ["--id-column", "id", "--batch-size", "2", "--shard-size", "2", "--max-new-tokens", "5", "--quiet"]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """14 good prompts with 5 bad rows between them (unreadable, empty, not text, too long, duplicate id)."""
    lines = [json.dumps({"id": f"p{i}", "prompt": prompt}) for i, prompt in enumerate(GOOD_PROMPTS)]
    lines.insert(3, json.dumps({"id": "empty", "prompt": "   "}))
    lines.insert(6, "{not json")
    lines.insert(9, json.dumps({"id": "number", "prompt": 42}))
    lines.insert(12, json.dumps({"id": "long", "prompt": "the capital " * 80}))
    lines.append(json.dumps({"id": "p0", "prompt": "The capital of France is"}))
    return write_jsonl(tmp_path_factory.mktemp("data") / "prompts.jsonl", lines)


@pytest.fixture(scope="module")
def model():
    return inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")


@pytest.fixture(scope="module")
def reference(data_file, model, tmp_path_factory) -> Path:
    """An uninterrupted one-process run of the test data set."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with one_torch_thread():
        result = attribute_dataset(data_file, out, model=model, show_progress=False, **RUN_OPTIONS)
    assert result.complete and result.examples == len(GOOD_PROMPTS) and result.bad_rows == 5
    return out


def tables_equal(first: Path, second: Path) -> None:
    """Same rows and same values, and byte-identical files (manifest, errors, every shard)."""
    one, two = load_dataset_attributions(first), load_dataset_attributions(second)
    assert one.table.column_names == two.table.column_names
    assert one.table.to_pylist() == two.table.to_pylist()
    assert one.examples.equals(two.examples)
    for name in ("manifest.json", "errors.jsonl", "run.json", "plan.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    shards = sorted(path.name for path in (first / "shards").iterdir())
    assert shards == sorted(path.name for path in (second / "shards").iterdir())
    for name in shards:
        assert (first / "shards" / name).read_bytes() == (second / "shards" / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------------------------
# What a run contains
# ----------------------------------------------------------------------------------------------------------------


def test_rows_and_rebuilt_outputs_equal_inseq(reference, model):
    """Each example's rows and its rebuilt inseq output equal ``model.attribute`` on the same text (batched run,
    so left padding is involved: equal to float tolerance), and the explorer and show() take the rebuilt output."""
    run = load_dataset_attributions(reference)
    assert len(run.examples) == len(GOOD_PROMPTS)
    assert sorted(run.examples["example_id"]) == sorted(f"p{i}" for i in range(len(GOOD_PROMPTS)))
    frame = run.to_pandas()
    assert len(frame) == run.manifest["rows"] == int(run.examples["steps"].sum())
    for example_id in ("p0", "p5", "p13"):
        record = run.examples.set_index("example_id").loc[example_id]
        with one_torch_thread():
            expected = model.attribute(record.prompt, record.generated_text, step_scores=["probability"],
                                       show_progress=False).sequence_attributions[0]  # fmt: skip
        rebuilt = run.inseq_output(example_id).sequence_attributions[0]
        assert rebuilt.target == expected.target
        assert (rebuilt.attr_pos_start, rebuilt.attr_pos_end) == (expected.attr_pos_start, expected.attr_pos_end)
        torch.testing.assert_close(rebuilt.target_attributions, expected.target_attributions, atol=1e-5, rtol=0,
                                   equal_nan=True)  # fmt: skip
        torch.testing.assert_close(rebuilt.step_scores["probability"], expected.step_scores["probability"],
                                   atol=1e-5, rtol=0)  # fmt: skip
        rows = frame[frame.example_id == example_id].sort_values("step")
        start = expected.attr_pos_start
        for step, row in enumerate(rows.itertuples()):
            assert row.position == start + step and row.n_prompt_tokens == start
            assert row.token == expected.target[start + step].token
            assert list(row.attributed_tokens) == [token.token for token in expected.target[: start + step]]
            np.testing.assert_allclose(row.attribution, expected.target_attributions[: start + step, step], atol=1e-5)
    # Several examples in one output; show() and the explorer work on it.
    out = run.inseq_output("p1", 2)
    assert out.info["input_texts"] == [GOOD_PROMPTS[1], GOOD_PROMPTS[2]]
    assert "<table" in out.show(display=False, return_html=True)
    inseq_ext.write_explorer(out, reference.parent / "explorer.html", model.tokenizer)
    assert (reference.parent / "explorer.html").stat().st_size > 1000


def test_batched_run_equals_one_at_a_time(reference, data_file, model, tmp_path):
    """Attribution groups of equal lengths (inseq's one-sequence rule for forced texts lifted) give the same rows as
    batches of 1 (to float tolerance), and the model is left as it was."""
    # The reference run has groups of two: examples of one shard with equal prompt and continuation lengths.
    examples = load_dataset_attributions(reference).examples.set_index("example_index")
    groups = [
        {(examples.attr_pos_start[i], examples.steps[i]) for i in shard["examples"]}
        for shard in RunFolder(reference).plan()["shards"]
    ]
    assert sum(len(keys) == 1 for keys in groups) >= 2
    assert "validate_attribute_args" not in vars(model)
    with one_torch_thread():
        attribute_dataset(data_file, tmp_path / "single", model=model, show_progress=False,
                          **{**RUN_OPTIONS, "batch_size": 1})  # fmt: skip
    batched, single = load_dataset_attributions(reference).to_pandas(), load_dataset_attributions(tmp_path / "single")
    single = single.to_pandas()
    assert batched[["example_id", "step", "token"]].equals(single[["example_id", "step", "token"]])
    for first, second in zip(batched.attribution, single.attribution, strict=True):
        np.testing.assert_allclose(first, second, atol=1e-5)
    np.testing.assert_allclose(batched.probability, single.probability, atol=1e-5)


def test_plan_batches_prompts_of_similar_length(reference):
    plan = RunFolder(reference).plan()
    run = load_dataset_attributions(reference)
    lengths = run.examples.set_index("example_index")["attr_pos_start"]
    order = [index for shard in plan["shards"] for index in shard["examples"]]
    assert sorted(order) == sorted(lengths.index)
    assert [lengths[index] for index in order] == sorted(lengths[index] for index in order)
    assert all(len(shard["examples"]) == 2 for shard in plan["shards"])


def test_bad_rows_go_to_the_errors_file(reference):
    errors = [json.loads(line) for line in (reference / "errors.jsonl").read_text().splitlines()]
    reasons = {error["example_id"]: error["reason"] for error in errors}
    assert [error["example_index"] for error in errors] == sorted(error["example_index"] for error in errors)
    assert reasons["empty"] == "empty prompt"
    assert reasons["number"] == "prompt is not text (int)"
    assert reasons["long"] == (
        "too long for the model: The prompt with its generation needs 167 tokens (162 + 5 new tokens), over the "
        "limit of 128 tokens of this model (config.n_positions=128, tokenizer.model_max_length=128). Shorten the "
        "prompt or ask for fewer new tokens (max_new_tokens)."
    )
    assert "duplicate id 'p0'" in reasons["p0"]
    assert "line 7: not valid JSON" in reasons[None]
    assert load_dataset_attributions(reference).errors["reason"].tolist() == [error["reason"] for error in errors]


def test_a_changed_command_is_refused(reference, data_file, model):
    with pytest.raises(DatasetRunError, match=r"different command \(method: \"saliency\" now"):
        attribute_dataset(data_file, reference, model=model, method="saliency", show_progress=False, **RUN_OPTIONS)
    with pytest.raises(DatasetRunError, match=r"batch_size: 4 now, 2 in the folder"):
        attribute_dataset(data_file, reference, model=model, show_progress=False, **{**RUN_OPTIONS, "batch_size": 4})
    # The same command finds everything done and leaves the folder as it was.
    before = (reference / "manifest.json").read_bytes()
    with one_torch_thread():
        result = attribute_dataset(data_file, reference, model=model, show_progress=False, **RUN_OPTIONS)
    assert (result.shards_resumed, result.shards_written) == (result.shards, 0)
    assert (reference / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["missing.jsonl"], ["data set", "missing.jsonl not found"]),
        (["{folder}/prompts.txt"], ["unknown format '.txt'"]),
        (["{data}", "--prompt-column", "text"], ["no prompt column 'text'", "its columns: id, prompt"]),
        (["{data}", "--method", "nope"], ["unknown attribution method 'nope'", "custom_saliency"]),
        (["{data}", "--batch-size", "0"], ["--batch-size", "must be at least 1, got 0"]),
        (["{data}", "--method-arg", "n_steps"], ["--method-arg", "expected NAME=VALUE (e.g. norm=l1), got 'n_steps'"]),
        (["{data}", "--method-arg", "n_stepz=3"], ["Unknown option 'n_stepz' for custom_saliency; its options: norm"]),
        (["{data}", "--method-arg", "normalize=sideways"], ["Unknown normalize 'sideways' for custom_saliency"]),
        (["{data}", "--step-scores", "nope"], ["unknown step function 'nope'"]),
    ],
)
def test_bad_input_fails_at_once_with_one_line(arguments, fragments, data_file, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("hello\n")
    arguments = [argument.format(data=data_file, folder=tmp_path) for argument in arguments]
    status = inseq_ext_cli.main(["attribute-dataset", *arguments, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("inseq-ext: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (tmp_path / "run" / "shards").exists()


def test_a_method_failing_on_every_row_stops_the_run(data_file, model, tmp_path):
    """Options that pass the checks but make every attribution fail stop the run after three examples, writing no
    shard; the corrected command then takes the folder over."""
    options = {**RUN_OPTIONS, "limit": 6, "method": "integrated_gradients"}
    with pytest.raises(DatasetRunError, match=r"the first 3 examples all failed.*number of steps has to be larger"):
        attribute_dataset(data_file, tmp_path, model=model, method_args={"n_steps": 0}, show_progress=False,
                          **options)  # fmt: skip
    assert not RunFolder(tmp_path).completed_shards()
    with one_torch_thread():
        result = attribute_dataset(data_file, tmp_path, model=model, method_args={"n_steps": 2}, show_progress=False,
                                   **options)  # fmt: skip
    assert result.complete and load_dataset_attributions(tmp_path).command["method_args"] == {"n_steps": 2}


def test_a_folder_that_is_not_a_run_is_refused(data_file, tmp_path, model):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetRunError, match="is not a data-set run folder"):
        attribute_dataset(data_file, tmp_path, model=model, show_progress=False, **RUN_OPTIONS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------------------------------------------
# Kill and resume; two processes
# ----------------------------------------------------------------------------------------------------------------


def test_without_checkpoints_the_files_are_the_same(reference, data_file, model, tmp_path):
    """``checkpoint=False`` (for measuring what checkpoints cost) writes the same files at the end."""
    with one_torch_thread():
        attribute_dataset(data_file, tmp_path / "run", model=model, show_progress=False, checkpoint=False,
                          **RUN_OPTIONS)  # fmt: skip
    tables_equal(reference, tmp_path / "run")


#: Pause added to every forward pass of a killed child, so that a run lasts long enough on any machine for the
#: kills to land mid-run (the scores do not change). Without it a fast machine finishes before the second kill.
CHILD_FORWARD_PAUSE_S = 0.03


def _attribute_in_child(data_file: Path, out: Path, model) -> None:
    torch.set_num_threads(1)
    model.model.register_forward_pre_hook(lambda module, args: time.sleep(CHILD_FORWARD_PAUSE_S))
    attribute_dataset(data_file, out, model=model, show_progress=False, **RUN_OPTIONS)
    os._exit(0)


def test_killed_runs_resume_to_the_uninterrupted_output(reference, data_file, model, tmp_path):
    """SIGKILL a run at random moments three times, resume: the output equals the uninterrupted run's.

    Each killed run is a process forked from this one (the model already loaded: no start-up cost), killed with
    SIGKILL at a random moment after it wrote a shard: during a generation, an attribution, a shard's write.
    """
    out = tmp_path / "run"
    chooser = random.Random(13)
    fork = multiprocessing.get_context("fork")
    kills = 0
    for _ in range(3):
        before = RunFolder(out).completed_shards()
        process = fork.Process(target=_attribute_in_child, args=(data_file, out, model))
        process.start()
        deadline = time.monotonic() + 120
        # Wait for one new shard (so every session makes progress), then kill at a random moment of the next ones.
        while RunFolder(out).completed_shards() <= before and process.is_alive():
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("no shard written in 120 s")
            time.sleep(0.01)
        # A shard takes several paused forward passes (> 0.15 s): at most a few more shards before the kill.
        time.sleep(chooser.uniform(0.0, 0.3))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.join()
        assert process.exitcode in (0, -signal.SIGKILL)
    assert kills >= 2
    done = RunFolder(out).completed_shards()
    if not (out / "manifest.json").exists():
        # An unfinished run is refused by the reader unless partial=True, which gives the shards written so far.
        with pytest.raises(DatasetRunError, match="unfinished run"):
            load_dataset_attributions(out)
        partial = load_dataset_attributions(out, partial=True)
        complete = load_dataset_attributions(reference)
        kept = set(partial.examples["example_index"])
        assert partial.table.to_pylist() == [row for row in complete.table.to_pylist() if row["example_index"] in kept]
    # A writer killed mid-write leaves a temporary file; the resumed run removes it.
    (out / "shards" / ".shard-00099.parquet.tmp123.parquet").write_bytes(b"half a file")
    with one_torch_thread():
        result = attribute_dataset(data_file, out, model=model, show_progress=False, **RUN_OPTIONS)
    assert result.complete and result.shards_resumed == len(done)
    tables_equal(reference, out)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_equal_one(reference, data_file, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): each writes its own shards; same output as one process."""
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]  # fmt: skip
    command = launch + ["-m", "inseq_ext", "attribute-dataset", str(data_file), "--out", str(out), *CLI_OPTIONS]
    completed = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Attributed 14 examples" in completed.stdout and "by 2 processes" in completed.stdout
    written = [int(n) for n in re.findall(r"process \d of 2 wrote (\d+) shards", completed.stderr)]
    assert len(written) == 2 and sum(written) == 7 and min(written) >= 3, completed.stderr[-2000:]
    tables_equal(reference, out)


# ----------------------------------------------------------------------------------------------------------------
# Other methods and models; sampling; summaries
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "method", "options"),
    [
        ("gpt2", "block_gradient_x_input", {}),
        ("llama", "rotary_attention", {}),  # a tokenizer that adds BOS; layer x head scores
        ("translation", "saliency", {"attribute_target": True}),
    ],
)
def test_layer_scores_and_encoder_decoder_outputs_are_rebuilt_exactly(model_name, method, options, tmp_path):
    """Layer-resolved scores are kept raw and rebuilt in the method's class; an encoder-decoder's source and target
    scores are rebuilt; with batches of one, the rebuilt outputs equal ``model.attribute`` exactly."""
    data = write_jsonl(tmp_path / "data.jsonl", [json.dumps({"prompt": p}) for p in GOOD_PROMPTS[:3]])
    if model_name == "translation":
        data = write_jsonl(tmp_path / "data.jsonl", [json.dumps({"prompt": p}) for p in ("the red cat sleeps",
                                                                                         "a dog eats")])  # fmt: skip
    with one_torch_thread():
        attribute_dataset(data, tmp_path / "run", model=f"demo:{model_name}", method=method, batch_size=1,
                          max_new_tokens=4, show_progress=False, **options)  # fmt: skip
        run = load_dataset_attributions(tmp_path / "run")
        attribution_model = inseq.load_model(inseq_ext.demo_model(model_name), method)
        step_scores = [] if method == "rotary_attention" else ["probability"]
        for _, record in run.examples.iterrows():
            expected = attribution_model.attribute(record.prompt, record.generated_text, step_scores=step_scores,
                                                   show_progress=False, **options)  # fmt: skip
            rebuilt = run.inseq_output(int(record.example_index))
            pairs = [(rebuilt, expected)]
            if method != "saliency":  # raw scores kept: the method's class, its extra dimensions
                assert type(rebuilt.sequence_attributions[0]) is type(expected.sequence_attributions[0])
                dims = list(rebuilt.sequence_attributions[0].target_attributions.shape[2:])
                assert dims == ([4] if method == "block_gradient_x_input" else [3, 4])  # layers (+1), heads
            else:  # per-hidden-unit scores are not kept: the aggregated map is rebuilt
                pairs = [(rebuilt, expected.aggregate())]
            pairs.append((rebuilt.aggregate(), expected.aggregate()))
            for got, want in pairs:
                for field in ("source_attributions", "target_attributions"):
                    first = getattr(got.sequence_attributions[0], field)
                    second = getattr(want.sequence_attributions[0], field)
                    assert (first is None) == (second is None)
                    if first is not None:
                        torch.testing.assert_close(first, second, atol=0, rtol=0, equal_nan=True)


def test_sampling_is_seeded_per_batch(data_file, model, tmp_path):
    options = {**RUN_OPTIONS, "generation_args": {"do_sample": True, "top_k": 0}, "limit": 6}
    texts = []
    with one_torch_thread():
        for name, seed in (("one", 0), ("two", 0), ("three", 1)):
            attribute_dataset(data_file, tmp_path / name, model=model, seed=seed, show_progress=False, **options)
            texts.append(load_dataset_attributions(tmp_path / name).examples["generated_text"].tolist())
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_summarize_statistics(reference, tmp_path, capsys):
    from inseq_ext.dataset_runs.summary import summarize_dataset_attributions

    run = summarize_dataset_attributions(reference, top=3).runs[0]
    table = load_dataset_attributions(reference).table.to_pylist()
    shares, later, token_mass, top1 = [], [], {}, {}
    for row in table:
        scores = [abs(value) for value in row["attribution"]]
        total = sum(scores)
        best = row["attributed_tokens"][scores.index(max(scores))]
        top1[best] = top1.get(best, 0) + 1
        shares.append(sum(scores[: row["n_prompt_tokens"]]) / total)
        if row["step"] > 0:
            later.append(shares[-1])
        for token, score in zip(row["attributed_tokens"], scores, strict=True):
            token_mass[token] = token_mass.get(token, 0.0) + score / total
    assert (run.examples, run.bad_rows, run.generated_tokens) == (14, 5, len(table))
    assert run.prompt_share == pytest.approx(sum(shares) / len(shares), abs=1e-9)
    assert run.prompt_share_after_first == pytest.approx(sum(later) / len(later), abs=1e-9)
    assert run.prompt_share_by_step[0] == pytest.approx(1.0)
    top = sorted(token_mass.items(), key=lambda item: -item[1])[:3]
    assert [entry["token"] for entry in run.top_tokens] == [token for token, _ in top]
    assert [entry["share"] for entry in run.top_tokens] == pytest.approx([mass / len(table) for _, mass in top])
    assert [entry["top1"] for entry in run.top1_tokens] == sorted(top1.values(), reverse=True)[:3]
    assert all(top1[entry["token"]] == entry["top1"] for entry in run.top1_tokens)
    probabilities = [row["probability"] for row in table]
    assert run.step_score_means["probability"] == pytest.approx(sum(probabilities) / len(probabilities), rel=1e-6)

    summary_file = tmp_path / "summary.json"
    assert inseq_ext_cli.main(["summarize", str(reference), "--top", "3", "--json", str(summary_file)]) == 0
    printed = capsys.readouterr().out
    assert f"attribution mass on the prompt: {100 * run.prompt_share:.1f}%" in printed
    assert f"examples: 14 attributed, 5 bad rows; generated tokens: {len(table)}" in printed
    saved = json.loads(summary_file.read_text())["runs"][0]
    assert saved["prompt_share"] == pytest.approx(run.prompt_share)


def test_summarize_faithfulness_hook(reference, model, monkeypatch):
    """``evaluate=N`` hands the first N rebuilt examples and the model to ``evaluate_faithfulness`` and reports the
    metric means; without that function the request fails with one line."""
    import types

    import inseq_ext.evaluation
    from inseq_ext.dataset_runs.summary import summarize_dataset_attributions

    monkeypatch.delattr(inseq_ext.evaluation, "evaluate_faithfulness", raising=False)
    with pytest.raises(DatasetRunError, match="faithfulness evaluation is not available"):
        summarize_dataset_attributions(reference, evaluate=2, attribution_model=model)
    received = {}

    def fake_evaluate(attribution_model, output, **options):
        received.update(model=attribution_model, output=output, options=options)
        metric = types.SimpleNamespace(mean=0.25, random=types.SimpleNamespace(mean=0.5))
        return types.SimpleNamespace(metrics={"comprehensiveness": metric})

    monkeypatch.setattr(inseq_ext.evaluation, "evaluate_faithfulness", fake_evaluate, raising=False)
    summary = summarize_dataset_attributions(reference, evaluate=2, attribution_model=model,
                                             evaluation_options={"bootstrap": 0})  # fmt: skip
    run = load_dataset_attributions(reference)
    assert received["model"] is model and received["options"] == {"bootstrap": 0}
    assert received["output"].info["input_texts"] == run.examples["prompt"].tolist()[:2]
    assert summary.runs[0].faithfulness == {"comprehensiveness": 0.25, "comprehensiveness (random)": 0.5}
    assert "faithfulness (2 examples): comprehensiveness 0.25" in str(summary)


def test_lifting_inseq_one_sequence_rule_is_undone(model):
    from inseq_ext.dataset_runs.batching import unpadded_forced_batches

    with pytest.raises(RuntimeError, match="inside"):
        with unpadded_forced_batches(model, enabled=True):
            assert "validate_attribute_args" in vars(model)
            raise RuntimeError("inside")
    assert "validate_attribute_args" not in vars(model)
    assert model.validate_attribute_args.__func__ is type(model).validate_attribute_args


def test_forced_targets_and_a_folder_left_while_preparing(model, tmp_path):
    """``target_column``: the continuation is appended to the prompt as it is (or taken whole when it already
    starts with it); a too long forced target is a bad row. A folder holding only a plan (a run killed while
    preparing it) is taken over."""
    rows = [
        {"prompt": "The capital of France is", "answer": " Paris."},
        {"prompt": "Hello ladies and", "answer": "Hello ladies and gentlemen."},
        {"prompt": "The movie was", "answer": " good" * 130},
    ]
    data = write_jsonl(tmp_path / "data.jsonl", [json.dumps(row) for row in rows])
    (tmp_path / "run" / "shards").mkdir(parents=True)
    (tmp_path / "run" / "plan.json").write_text("{}")
    with one_torch_thread():
        result = attribute_dataset(data, tmp_path / "run", model=model, target_column="answer", show_progress=False)
    assert (result.examples, result.bad_rows) == (2, 1)
    run = load_dataset_attributions(tmp_path / "run")
    texts = ["The capital of France is Paris.", "Hello ladies and gentlemen."]
    assert run.examples["generated_text"].tolist() == texts
    continuations = run.to_pandas().groupby("example_index")["token"].apply("".join).tolist()
    assert continuations == ["\u0120Paris.", "\u0120gentlemen."]
    assert "forced target" in run.errors["reason"][0] and run.errors["example_index"][0] == 2
    assert run.command["generation"] is None
