# One command from a fresh clone to a trained model, one to green tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HDR_DATA_DIR ?= $(abspath ../shared/data)
export HDR_DATA_DIR

.PHONY: install train test lint clean

$(BIN)/hdr-train: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/hdr-train

train: install  ## the seed's MLP, 100 epochs, on real MNIST
	$(BIN)/python -m hdr.train experiment=seed

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs/*
