# Two commands on a fresh clone: `make analyze` (the main job) and `make test` (the test suite);
# `make figures` regenerates figures/.
# All create .venv with everything they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?= --depth 512

.PHONY: analyze figures test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

analyze: $(STAMP)
	$(BIN)/sigprop analyze resnet $(ARGS)

# Regenerates figures/ (images, captions, data) deterministically.
figures: $(STAMP)
	$(BIN)/sigprop figures --out figures

lint: $(STAMP)
	$(BIN)/ruff check sigprop cli tests benchmarks examples
	$(BIN)/mypy sigprop cli tests benchmarks examples

# Two worker processes, each with one torch thread (tests/conftest.py), a test file per worker
# so that a file's module fixtures are built once: 2 cores, half the wall time.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) sigprop-out
