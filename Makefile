# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo ui test lint clean-demo

$(STAMP): pyproject.toml
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

lint: install
	$(BIN)/flake8 dataset_assets dataset_assets_tests benchmarks
	$(BIN)/isort --check-only --diff dataset_assets dataset_assets_tests benchmarks

clean-demo:
	rm -rf .dataset_assets_home
