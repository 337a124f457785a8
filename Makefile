# `make demo` trains and evaluates the Fashion-MNIST MLP; `make test` runs the tests.
# Both work from a fresh clone: they create .venv and install symnet into it (editable,
# with the test tools) the first time, and again only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test

demo: $(INSTALLED)
	$(BIN)/symnet train examples/mlp.nn -o out/mlp.ckpt
	$(BIN)/symnet eval examples/mlp.nn --weights out/mlp.ckpt

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@
