# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE_STAMP := $(VENV)/.installed-scale

.PHONY: install demo ui test lint clean-demo scale-demo test-scale reliability

# setup.py builds the C parts (dataset_assets/core/_tarwalk.c, _digests.c): a change to them reinstalls.
$(STAMP): pyproject.toml setup.py dataset_assets/core/_tarwalk.c dataset_assets/core/_digests.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/dataset-assets demo run

ui: install
	$(BIN)/dataset-assets demo ui

test: install
	$(BIN)/python -m pytest

# The reliability suite (README "Guarantees"), slow tests included, then the counts README states.
reliability: install
	$(BIN)/python -m pytest -rA dataset_assets_tests/reliability
	$(BIN)/python -m dataset_assets_tests.reliability.counts

# Scaling out (README "Scaling out"): the `scale` extra, plus Debian's postgresql and redis-server.
$(SCALE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
	touch $(SCALE_STAMP)

# Postgres, Redis, two Celery workers, dagster-daemon and the UI on 127.0.0.1; one backfill of the
# demo spread over the workers; every process stopped by pid at the end, Ctrl-C included.
scale-demo: $(SCALE_STAMP)
	$(BIN)/python -m dataset_assets.scale.demo

test-scale: $(SCALE_STAMP)
	DATASET_ASSETS_SCALE_TESTS=1 $(BIN)/python -m pytest -m scale dataset_assets_tests/scale

lint: install
	$(BIN)/flake8 dataset_assets dataset_assets_tests benchmarks setup.py
	$(BIN)/isort --check-only --diff dataset_assets dataset_assets_tests benchmarks setup.py

clean-demo:
	rm -rf .dataset_assets_home
