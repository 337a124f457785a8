#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run, with its results under $OUT (default
# out/gpu): the machine, tests/test_gpu.py, compute-sanitizer's race and memory checks of
# every kernel of MLP and LeNet-5, the benchmark against PyTorch, and LeNet-5 trained for
# 3 epochs on the GPU and on the CPU (Fashion-MNIST from $SYMNET_DATA if set).
#
#     bash benchmarks/gpu_check.sh                 # about 5 minutes on an H100/H200
#
# Each step runs even if one before failed; the last line sums up their exit statuses.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=. SYMNET_CACHE=${SYMNET_CACHE:-$(mktemp -d)}
python=${PYTHON:-python3}
status=()

step() {   # step NAME COMMAND...: run, keep its output in $OUT/NAME.txt and its status
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    status+=("$name=${PIPESTATUS[0]}")
}

step machine nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step tests "$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py
# Small batches of every entry point: racecheck sees a missing barrier around shared
# memory, memcheck a read or write outside a buffer.
sanitize='
import compiler
from compiler import reference
for name in ("mlp", "lenet5"):
    m = compiler.load(f"examples/{name}.nn")
    program = compiler.compile(m, target="ptx", cache=False)
    inputs = reference.random_inputs(m, batch=37, seed=1)
    program.forward(inputs); program.value_and_grad(inputs); program.train_step(inputs)
    print(name, "ran")
'
if command -v compute-sanitizer >/dev/null; then
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$python" -c "$sanitize"
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$python" -c "$sanitize"
fi
step bench "$python" benchmarks/gpu_bench.py
for device in cuda cpu; do
    step "lenet5_$device" "$python" -m symnet train examples/lenet5.nn --epochs 3 --device "$device"
done
echo "${status[*]}" | tee "$out/status.txt"
