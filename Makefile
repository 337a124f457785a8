# `make demo` trains and evaluates the Fashion-MNIST MLP; `make test` runs the tests.
# Both work from a fresh clone: they create .venv and install symnet into it (editable,
# with the test tools) the first time, and again only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test gpu-carry

demo: $(INSTALLED)
	$(BIN)/symnet train examples/mlp.nn -o out/mlp.ckpt
	$(BIN)/symnet eval examples/mlp.nn --weights out/mlp.ckpt

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# For benchmarks/gpu_check.sh on a GPU machine that has only the runtime's packages and
# no network: pytest (pure Python, also for Python 3.10) and the Fashion-MNIST files.
gpu-carry: $(INSTALLED)
	rm -rf build/gpu-carry
	$(BIN)/pip install -q --target build/gpu-carry/site --only-binary=:all: \
		--implementation py --abi none --platform any pytest exceptiongroup tomli
	mkdir -p build/gpu-carry/data
	cp /usr/share/datasets/fashion-mnist/*.gz build/gpu-carry/data/ 2>/dev/null \
		|| echo "no Fashion-MNIST files here: the GPU machine trains on the embedded subset"
