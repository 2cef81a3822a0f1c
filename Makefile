# Set-up and checks. Everything installs into ./.venv from the package registry; nothing else is needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test demo lint format bench bench-pipeline bench-labeler bench-plan tiny-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The test command: lint, then the whole suite.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The whole pipeline offline: loopback S3, local Ray, Prefect's ephemeral server, the small model.
demo: setup
	$(VENV)/bin/fastsam-label demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Everything-mode time and memory against ultralytics' FastSAM predictor, in one run.
bench: setup
	$(PY) -m tests.bench_everything

# The whole pipeline against the ultralytics loop people write today, interleaved rounds (see docs/benchmarks.md;
# about an hour on 2 CPU cores at the default size: BENCH_ARGS="--images 30 --prompt-images 8 --rounds 2" is quicker).
bench-pipeline: setup
	$(PY) -m tests.bench_pipeline $(BENCH_ARGS)

# Labeler throughput on a loopback S3 endpoint: one reader vs read-ahead and batching, in one run.
bench-labeler: setup
	$(PY) -m tests.bench_labeler
	$(PY) -m tests.bench_labeler --prompts

# Planning an incremental run after 1,000,000 earlier objects: the index against the old scan, in one run.
bench-plan: setup
	$(PY) -m tests.bench_plan

# Remake the shipped small model (about 10 minutes on 2 CPU cores).
tiny-model: setup
	$(PY) -m tools.train_tiny --out fastsam_core/weights/fastsam-tiny.pt
