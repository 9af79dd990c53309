# The table of contents of what can be run. Every target creates .venv (Python 3.11) and installs the project
# into it when missing or when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= mini
NPROC ?= 1
PRETRAIN ?= full
SEEDS ?= 3
export HF_HUB_OFFLINE := 1

.PHONY: help venv pretrain dino-recipes figures pipeline report test determinism seeds unit lab lint format bench data fetch clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project (editable) with its test tools

pretrain: $(STAMP)  ## retrain the shipped mini-world models into models/ (about four hours on 2 cores); PRETRAIN=quick: seconds, under build/
	$(BIN)/python -m lib.models.pretrained --profile $(PRETRAIN)

dino-recipes: $(STAMP)  ## the DINO recipe ablation behind 01's table, probed on PROFILE's stimuli (8 recipes x 300 steps, about 25 min)
	$(BIN)/python -m lib.stage.dino_recipes --profile $(PROFILE)

figures: $(STAMP)  ## regenerate every report figure of the embedded default (mini-NSD) into figures/, and the report
	$(BIN)/python -m lib.pipeline --profile mini
	$(BIN)/python -m lib.report --profile mini

pipeline: $(STAMP)  ## run the notebooks on another profile: make pipeline PROFILE=quick|nsd [NPROC=N processes per trainer]
	$(BIN)/python -m lib.pipeline --profile $(PROFILE) --nproc $(NPROC)

report: $(STAMP)  ## rebuild build/PROFILE/report.html and render it in headless chromium to report.png (apt: chromium)
	$(BIN)/python -m lib.report --profile $(PROFILE) --screenshot

test: $(STAMP)  ## the whole suite in two processes of one thread each: import layers, unit tests; on one process every notebook under nbval on the quick profile, then 03 killed (kill -9) mid-training and 02-03 rerun: same metrics
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m lib.pipeline --profile quick --prepare-only
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest build/quick/nbval tests -n 2 --nbval-lax --kill-pipeline -p no:cacheprovider --durations=15

determinism: $(STAMP)  ## run the quick profile twice: fails unless every metric (timings aside) is the same
	$(BIN)/python -m lib.pipeline --profile quick
	$(BIN)/python -m lib.pipeline --profile quick --expect-same

seeds: $(STAMP)  ## rerun 01-03 training each model with SEEDS seeds (default 3): their spread goes into the metrics
	$(BIN)/python -m lib.pipeline --profile $(PROFILE) --only 01,02,03 --set stats.seeds=$(SEEDS)

unit: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest tests

lab: $(STAMP)  ## JupyterLab on the project's venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,lab]'
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(STAMP)  ## import layers (import-linter), ruff check and format check on lib/, tests/, benchmarks/ and the notebooks
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check lib tests benchmarks notebooks
	$(BIN)/ruff format --check lib tests benchmarks notebooks

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix lib tests benchmarks notebooks
	$(BIN)/ruff format lib tests benchmarks notebooks

bench: $(STAMP)  ## benchmarks: NSD-size session read, NSD-scale ridge (vs scikit-learn, himalaya), MLP memory, LOO sweep, fetch, scoring, NHWC convolutions
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_nsd_read.py
	$(BIN)/python benchmarks/bench_ridge.py
	$(BIN)/python benchmarks/bench_loo.py
	$(BIN)/python benchmarks/bench_mlp_memory.py
	$(BIN)/python benchmarks/bench_fetch.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_nhwc.py

SUBJECT ?= 1
WHAT ?= design,stiminfo,betas,ncsnr,rois,prf,anat,behaviour
fetch: $(STAMP)  ## download subjects of real NSD: make fetch SUBJECTS="1 2 5 7" (or SUBJECT=1) NSD_ROOT=/path [WHAT=] [SESSIONS=1-37] [JOBS=4] [ENDPOINT=] [DRY=1]
	set -e; for s in $(or $(SUBJECTS),$(SUBJECT)); do \
		$(BIN)/python -m lib.data.fetch --subject $$s --root "$(NSD_ROOT)" --what $(WHAT) $(if $(DRY),--dry-run) \
		$(if $(SESSIONS),--sessions $(SESSIONS)) $(if $(JOBS),--jobs $(JOBS)) $(if $(ENDPOINT),--endpoint $(ENDPOINT)); \
	done

data: $(STAMP)  ## generate mini-NSD for PROFILE under data/PROFILE, its subjects (mini 4, quick 3; the pipeline also does this on first use)
	$(BIN)/python -m lib.data.simulate --out data/$(PROFILE) --profile $(PROFILE) --subjects $(if $(filter quick,$(PROFILE)),3,4)

clean:  ## remove build outputs (keeps data/ and .venv/)
	rm -rf build .pytest_cache
