# One command from a fresh clone to a trained model, one to green tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# MNIST: a read-only copy beside the checkout if there is one, else data/ (downloaded on first use).
HDR_DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),$(abspath data))
export HDR_DATA_DIR

.PHONY: install train app test lint clean

$(BIN)/hdr-train: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/hdr-train

train: install  ## the seed's MLP, 100 epochs, on real MNIST; ARGS adds Hydra overrides
	$(BIN)/python -m hdr.train experiment=seed $(ARGS)

app: install  ## the sketchpad on http://127.0.0.1:7860 with the best recorded model; ARGS: --checkpoint, --port
	$(BIN)/python app/app.py $(ARGS)

test: install  ## every test, slow ones included; add ARGS='-m "not slow"' for the quick loop
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache  # outputs/ (your runs) is kept
