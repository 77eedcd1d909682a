# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (lint + test suite).
# Each creates the virtual environment on first use. torch 2.13.0 is installed first, on its own: on these
# machines it is a local CPU wheel, while an unpinned torch would pull several GB of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inseq_ext-installed

.PHONY: setup demo test bench bench-long docs demo-models clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m inseq_ext attribute "The first president of America is" --html out/demo.html

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_custom_saliency.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_block_gradient_x_input.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_rotary_attention.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_attnlrp.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_dataset.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_evaluate.py

# Long prompts (512 to 4,096 tokens) and bf16/fp16 closeness: long (about 40 min on 2 cores; --lengths for less).
bench-long: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_long_context.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_precision.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir out/site
	@echo "Documentation written to out/site/index.html"

# Regenerate the embedded demo models: one single-threaded training process per model, in parallel (about 14 min
# on 2 cores); fails if any of them fails.
demo-models: $(STAMP)
	mkdir -p out && cd scripts && pids="" && for model in gpt2 llama translation; do \
		HF_HUB_OFFLINE=1 ../$(PY) train_demo_models.py --models $$model > ../out/train_$$model.log 2>&1 & \
		pids="$$pids $$!"; \
	done; status=0; for pid in $$pids; do wait $$pid || status=1; done; exit $$status

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
