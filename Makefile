# Quick start on a fresh machine:  make demo   (main job)   and   make test   (test suite).
# Both create .venv, install the package with its dev extras and fetch Fashion-MNIST
# (Debian's dataset-fashion-mnist) when it is missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: demo test test-all lint format docs venv data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	touch $@

venv: $(VENV)/.installed

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	  echo "Fashion-MNIST installed to $(FMNIST_DIR)"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	else \
	  echo "Fashion-MNIST not found; the DataModule will download it through torchvision"; \
	fi

demo: venv data
	$(PY) -m lightning_autoq.demo

test: venv data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: venv data
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs site lightning_logs .pytest_cache .ruff_cache .hypothesis
