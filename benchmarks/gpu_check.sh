#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run, with its results under $OUT (default
# out/gpu): the machine and the package versions, tests/test_gpu.py, the benchmark
# against PyTorch, LeNet-5 trained for 3 epochs on the GPU and on the CPU, then
# compute-sanitizer's memory and race checks of every kernel of MLP and LeNet-5.
#
#     bash benchmarks/gpu_check.sh                 # 85 s on an H200 (2026-12-04)
#     TRAIN_DEVICES=cuda bash benchmarks/gpu_check.sh   # the CPU's training run elsewhere
#
# It writes 7 files (a lent machine sends back at most 8 from $OUT): machine.txt (the
# machine and the versions), tests.txt, bench.txt, lenet5_cuda.txt, lenet5_cpu.txt,
# sanitizer.txt (memcheck, then racecheck), summary.txt (accuracies and statuses).
#
# Steps run most telling first, each under its own time limit (570 s in all at most, so
# the whole fits one 10-minute command of a lent machine, and a slow step cannot take
# the tests' or the benchmark's time). Each step runs even if one before failed, except
# after `versions`: without a GPU or a usable llvmlite nothing else can. The last line
# sums up their exit statuses.
#
# A GPU machine without network: `make gpu-carry` here puts the Fashion-MNIST files in
# build/gpu-carry/data/ and an llvmlite wheel in build/gpu-carry/wheels/; copied along,
# the data is trained on and any wheels are installed (into a temporary folder) first.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
carry=build/gpu-carry
python=${PYTHON:-python3}
path=.
if ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    path=.:$site
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
        "$carry"/wheels/*.whl || echo "warning: the carried wheels did not install"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${SYMNET_DATA:-}" ] && ls "$carry"/data/*idx3-ubyte.gz >/dev/null 2>&1; then
    export SYMNET_DATA=$carry/data
fi
export SYMNET_CACHE=${SYMNET_CACHE:-$(mktemp -d)}
status=()

started=" "
step() {   # step NAME SECONDS COMMAND...: run under a time limit, keep its output and status;
           # the output goes to $out/NAME.txt, or with into=FILE before it, to $out/FILE.txt
           # after the other steps' output there (fewer files: see the top)
    local name=$1 limit=$(( $2 * ${TIME_SCALE:-1} ))     # TIME_SCALE: for a dry run (slow)
    local file=${into:-$1}
    shift 2
    local shown="$*"
    [[ $started == *" $file "* ]] || : >"$out/$file.txt"    # this run's output only
    started+="$file "
    echo "== $name (at most ${limit} s): ${shown%%$'\n'*}" | tee -a "$out/$file.txt"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$file.txt"
    status+=("$name=${PIPESTATUS[0]}")
}

versions='
import platform, sys
print("python", platform.python_version(), "data", __import__("os").environ.get("SYMNET_DATA", "-"))
for name in ("numpy", "sympy", "networkx", "llvmlite", "cuda.bindings", "pytest", "torch"):
    try:
        print(name, getattr(__import__(name, fromlist=["_"]), "__version__", "?"))
    except Exception as exc:
        print(name, "-", type(exc).__name__, exc)
import compiler.codegen       # refuses an llvmlite too old for the IR symnet writes
from runtime.cuda import load_driver, open_device
print("cuda driver API", load_driver().cuDriverGetVersion()[1:])   # 12040: CUDA 12.4
print(open_device())
'
step machine 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
into=machine step versions 40 "$python" -c "$versions"
if [ "${status[1]}" != versions=0 ]; then
    echo "${status[*]} (stopped: no GPU or no usable llvmlite; see machine.txt)" \
        | tee "$out/summary.txt"
    exit 1
fi
# Launches wait for their kernel here, so a kernel that fails is named by its launch.
# pytest-xdist, where it is installed, spreads the tests over 8 processes (each its own
# context on the one GPU): most of their time is compiling for the CPU and the GPU.
parallel=$("$python" -c "import xdist; print('-n 8')" 2>/dev/null)
CUDA_LAUNCH_BLOCKING=1 step tests 180 "$python" -m pytest -q --tb=short -p no:cacheprovider \
    $parallel tests/test_gpu.py
step bench 100 "$python" benchmarks/gpu_bench.py --profile ${BENCH_ARGS:-}
# TRAIN_DEVICES=cuda leaves the CPU run to another machine (saving a lent one's time).
for device in ${TRAIN_DEVICES:-cuda cpu}; do
    step "lenet5_$device" 60 "$python" -m symnet train examples/lenet5.nn --epochs 3 \
        --device "$device"
done
# Small batches of every entry point: memcheck sees a read or write outside a buffer,
# racecheck a missing barrier around shared memory.
sanitize='
import compiler
from compiler import reference
for name in ("mlp", "lenet5"):
    m = compiler.load(f"examples/{name}.nn")
    program = compiler.compile(m, target="ptx")
    inputs = reference.random_inputs(m, batch=37, seed=1)
    program.forward(inputs); program.value_and_grad(inputs); program.train_step(inputs)
    print(name, "ran")
'
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
    into=sanitizer step memcheck 60 "$sanitizer" --tool memcheck --error-exitcode 1 "$python" -c "$sanitize"
    into=sanitizer step racecheck 50 "$sanitizer" --tool racecheck --error-exitcode 1 "$python" -c "$sanitize"
else
    echo "memcheck, racecheck: skipped (no compute-sanitizer on PATH or under CUDA_HOME)" \
        | tee "$out/sanitizer.txt"
fi
accuracy() {   # the last epoch's test accuracy in a training log
    grep -o "test acc [0-9.]*" "$out/lenet5_$1.txt" 2>/dev/null | tail -1 | cut -d" " -f3
}
echo "lenet5 test accuracy after 3 epochs: cuda $(accuracy cuda)%, cpu $(accuracy cpu)%" \
    | tee "$out/summary.txt"
echo "${status[*]}" | tee -a "$out/summary.txt"
