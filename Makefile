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

# For benchmarks/gpu_check.sh on a lent GPU machine, which has no network: the
# Fashion-MNIST files (data/, 30 MB), and an llvmlite wheel for its Python (wheels/,
# 57 MB), to carry there in case its own llvmlite is older than symnet needs. The
# machine takes 64 MiB a call: carry data/, or wheels/ when machine.txt (the versions step) asks for it.
GPU_PYTHON ?= 3.12
gpu-carry: $(INSTALLED)
	rm -rf build/gpu-carry
	mkdir -p build/gpu-carry/data
	cp /usr/share/datasets/fashion-mnist/*.gz build/gpu-carry/data/ 2>/dev/null \
		|| echo "no Fashion-MNIST files here: the GPU machine trains on the embedded subset"
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d build/gpu-carry/wheels 'llvmlite>=0.46'
