# One command from a fresh clone to a trained model, one to green tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test processes (pytest-xdist); the Ray, SLURM and browser tests share one of them.
JOBS ?= 2

.PHONY: install browser train app test lint lock clean

$(BIN)/hdr-train: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/hdr-train

train: install  ## the student's MLP, 100 epochs, on real MNIST; ARGS adds Hydra overrides
	$(BIN)/python -m hdr.train experiment=student $(ARGS)

app: install  ## the sketchpad on http://127.0.0.1:7860 with the best recorded model; ARGS: --checkpoint, --port
	$(BIN)/python app/app.py $(ARGS)

# The browser test drives a real Chromium: the system's, else Debian's package (as root, with
# apt-get), else the one Playwright downloads. Without any, say what to install and stop.
browser: install
	@command -v chromium >/dev/null \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	     && echo "Installing Debian's chromium for the browser test" \
	     && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	|| $(BIN)/playwright install chromium \
	|| { echo "make test needs a browser: install Chromium (sudo apt-get install chromium) or let Playwright fetch one (.venv/bin/playwright install chromium)." >&2; exit 1; }

test: install browser  ## every test, slow ones included; add ARGS='-m "not slow"' for the quick loop
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup $(ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Pin every package of the dev install in constraints.txt as installed now (run it once the
# tests pass): its comments are kept, the pins rewritten from pip freeze.
lock: install
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache  # outputs/ (your runs) is kept
