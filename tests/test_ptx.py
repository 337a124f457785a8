"""The PTX target where there is no GPU: every example's PTX passes ptxas; the launch
lists agree with the PTX and with the output sizes; and CudaProgram runs end to end
over a fake CUDA driver whose kernels are the emulated kernels (run on the CPU block by
block; tests/test_gpu_emulation.py checks those against the reference).

tests/test_gpu.py runs the same programs on a real GPU, where there is one.
"""
import ctypes
import functools
import glob
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import sympy

from compiler import compile, load, reference
from compiler import gpu_schedule
from compiler.gpu_schedule import BLOCK as GPU_BLOCK
from compiler.codegen import ptx as ptx_codegen
from compiler.native import compile_ir
from runtime import cuda
from runtime.cuda import (BLOCK, CudaDevice, CudaError, CudaProgram, GPUUnavailable,
                          grid_size, kernel_params, layout, resident_blocks)
from runtime.program import ProgramError, eval_dim

from fake_driver import ENTRY, FakeDriver, emulated_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "examples", "*.nn")))
ARCHES = ["sm_80", "sm_90"]


@functools.lru_cache(maxsize=None)
def model(name):
    return load(os.path.join(ROOT, "examples", f"{name}.nn"))


def ptx_for(name, arch="sm_80", optimizer=None):
    """(spec, PTX text) of an example."""
    return _ptx(name, arch, optimizer)


@functools.lru_cache(maxsize=None)
def _ptx(name, arch, optimizer):
    _, spec, _, emitter = compile_ir(model(name), optimizer, target="ptx", arch=arch)
    return spec, emitter.ptx()


def assert_close(actual, expected, rtol=1e-4):
    """Equal to `rtol` relative to the largest magnitude in `expected`: float32 sums of
    many terms keep that accuracy over the whole array, not on each tiny element."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * scale)


# ---- the PTX text -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", NAMES)
def test_ptxas_accepts_the_ptx(name, arch, tmp_path):
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas (CUDA toolkit) is not installed")
    _, ptx = ptx_for(name, arch)
    assert f".target {arch}" in ptx
    source, cubin = tmp_path / f"{name}.ptx", tmp_path / f"{name}.cubin"
    source.write_text(ptx)
    done = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", str(cubin), str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cubin.stat().st_size > 0
    # Accumulators and staged values stay in registers: no kernel uses local memory.
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", done.stderr)
    assert len(frames) == ptx.count(".entry") and all(f == ("0", "0") for f in frames), done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_one_ptx_entry_per_launch_with_its_buffers_as_parameters(name):
    spec, ptx = ptx_for(name)
    declared = {kernel: params.count(".param") for kernel, params in ENTRY.findall(ptx)}
    launches = list(itertools.chain(*spec["launches"].values()))
    # A launch shared by several entries (the forward pass) is one kernel.
    assert sorted(declared) == sorted({launch["kernel"] for launch in launches})
    for launch in launches:                    # (sizes, buffers...), as runtime/cuda.py passes
        assert declared[launch["kernel"]] == 1 + len(launch["buffers"]), launch


def test_a_sums_short_window_loops_run_whole_and_unrolled(monkeypatch):
    """LeNet-5's s2 gradient sums c3.W[o, c, ky, kx] * grad:c3.conv2d[n, o, h - ky,
    w - kx] over o < 16 and a 5 x 5 window, guarded to the 10 x 10 image. Its window runs
    whole (WINDOW), unrolled: an fma per term along kx; with WINDOW = 0 the loops take
    bounds from the guards, which differ from thread to thread: one fma in a loop.
    (tests/test_gpu_emulation.py checks the values.)"""
    def s2_gradient():
        _, _, _, emitter = compile_ir(model("lenet5"), "sgd", target="ptx")
        return re.search(r"\.entry k\d+_grad_s2\(.*?\n}\n", emitter.ptx(), re.S).group(0)
    whole = s2_gradient()
    monkeypatch.setattr(ptx_codegen, "WINDOW", 0)
    guarded = s2_gradient()
    assert whole.count("fma.rn.f32") == 5 and guarded.count("fma.rn.f32") == 1


@pytest.mark.parametrize("name", NAMES)
def test_launch_grids_cover_the_work(name):
    """A thread per element, a thread per row, a block per element, a block per part of
    an element's sum (and a thread per element to add them), or a block per tile of the
    output (and part of the reduction)."""
    _, spec, kernels, _ = compile_ir(model(name), target="ptx")
    buffers = {b["name"]: b for b in spec["buffers"]}
    for entry, launches in spec["launches"].items():
        assert len(launches) == len(kernels[entry])
        for launch, kernel in zip(launches, kernels[entry]):
            assert launch["strategy"] == kernel.strategy
            if kernel.parts:                    # its output: the parts' sums, for the finish
                assert launch["buffers"][-1] == kernel.scratch
                assert kernel.head.out not in launch["buffers"]
            else:
                assert launch["buffers"][0] == kernel.head.out
            for n in (1, 7, 300):
                sizes = {size: n for size in spec["size_names"]}
                elements = math.prod(eval_dim(d, sizes) for d in buffers[kernel.head.out]["shape"])
                blocks = eval_dim(launch["blocks"], sizes)
                if kernel.strategy in ("thread", "finish"):
                    assert blocks == math.ceil(elements / BLOCK), launch
                elif kernel.strategy == "rows":
                    rows = eval_dim(buffers[kernel.head.out]["shape"][0], sizes)
                    assert blocks == math.ceil(rows / BLOCK), launch
                    assert all(eval_dim(buffers[c.out]["shape"][0], sizes) == rows
                               for c in kernel.comps)
                elif kernel.strategy == "block":
                    assert blocks == elements, launch
                elif kernel.strategy == "split":
                    assert blocks == elements * kernel.splits, launch
                    assert buffers[kernel.scratch]["shape"] == [blocks]
                else:
                    t, extent = kernel.tile, dict(zip(kernel.head.index, buffers[kernel.head.out]["shape"]))
                    rows = math.prod(eval_dim(extent[v], sizes) for v in t.rows)
                    cols = math.prod(eval_dim(extent[v], sizes) for v in t.cols)
                    assert rows * cols == elements
                    assert blocks == math.ceil(rows / t.tm) * math.ceil(cols / t.tn) * kernel.splits, launch


def test_lenet5_launches_by_hand():
    """Per example: conv1 6x28x28 outputs a thread each; conv2 a 10x10 image x 16 filter
    matrix product over 6x5x5 (implicit im2col) in 64x16 tiles; f5 N x 120 in 16x16 tiles;
    the logits' 10 columns a thread each."""
    spec, _ = ptx_for("lenet5")
    launches = {launch["buffers"][0]: launch for launch in spec["launches"]["predict"]}
    strategies = {layer: launch["strategy"] for layer, launch in launches.items()}
    assert strategies == {"c1.conv2d": "thread", "s2": "thread", "c3.conv2d": "tile", "s4": "thread",
                          "f5.flatten": "thread", "f5.dense": "tile", "f6.dense": "tile",
                          "logits.dense": "thread"}
    blocks = {layer: eval_dim(launch["blocks"], {"N": 64}) for layer, launch in launches.items()}
    assert blocks == {"c1.conv2d": 6 * 28 * 28 * 64 // 256, "s2": 6 * 14 * 14 * 64 // 256,
                      "c3.conv2d": 100 * 64 // 64, "s4": 400 * 64 // 256, "f5.flatten": 100,
                      "f5.dense": 4 * 8, "f6.dense": 4 * 6, "logits.dense": 3}
    # Each bias + ReLU runs in its product's launch, by the thread that stored the element.
    assert [c.out for c in _kernel(spec, "lenet5", "c3.conv2d").comps] == ["c3.conv2d", "c3"]


def _kernel(spec, name, head, entry="predict"):
    _, _, kernels, _ = compile_ir(model(name), target="ptx")
    return next(k for k in kernels[entry] if k.head.out == head)


def test_lenet5_train_step_sums_long_reductions_by_block_and_updates_in_place():
    """Weight and bias gradients sum over the batch (and the image): a block each, or
    (the convolutions') several blocks each (c3.W: tiles split over the reduction) and a
    finishing launch; every parameter's Adam update runs in its gradient's (last)
    launch (72 loop nests: 30 launches, cross-entropy's four steps in one, and 4 more
    for the split sums)."""
    _, spec, kernels, _ = compile_ir(model("lenet5"), "adam", target="ptx")
    step = kernels["train_step"]
    heads = {k.head.out: k for k in step}           # a split sum: its finishing launch
    for p in ("c1.W", "c1.b", "c3.W", "c3.b", "f5.b", "f6.b", "logits.b", "logits.W"):
        kernel = heads[f"grad:{p}"]
        assert kernel.strategy == ("finish" if p.startswith("c") else "block"), p
        assert [c.out for c in kernel.tails] == [f"state:{p}.m", f"state:{p}.v", p]
    for p in ("f5.W", "f6.W"):
        assert heads[f"grad:{p}"].strategy == "tile"
        assert heads[f"grad:{p}"].tails[-1].out == p
    assert len(step) == 34 and sum(len(k.comps) for k in step) == 72 + 4


def test_shared_memory_and_barriers_only_where_blocks_cooperate():
    """Tile and block kernels stage data in shared memory between barriers; a kernel of
    independent threads has neither."""
    spec, ptx = ptx_for("lenet5")
    bodies = dict(re.findall(r"\.entry\s+(\w+)\s*\((?:[^)]*)\)\s*\{(.*?)\n\}", ptx, re.DOTALL))
    for launch in itertools.chain(*spec["launches"].values()):
        body = bodies[launch["kernel"]]
        cooperative = launch["strategy"] in ("tile", "block", "split")
        assert ("bar.sync" in body) == cooperative and ("st.shared" in body) == cooperative, launch


def test_a_map_joins_a_launch_only_at_its_own_element():
    """Tails read what the launch writes at the element they compute, and overwrite
    nothing the launch reads elsewhere; otherwise they start a launch of their own."""
    from compiler.index_ir import Access, Comprehension, TensorInfo, access_symbol, index_symbols
    (i,), (j,) = index_symbols(["i"]), index_symbols(["j"])
    tensors = {t: TensorInfo(t, (8,)) for t in "abcd"}

    def map_of(out, reads, index):
        symbols = {access_symbol(t): Access(t, (at,)) for t, at in reads}
        return Comprehension(out, (index,), sympy.Add(*symbols), symbols)
    head = map_of("b", [("a", i)], i)
    same = map_of("c", [("b", j), ("a", j)], j)             # b and a at its own element
    shifted = map_of("c", [("b", j + 1)], j)                 # another thread's element of b
    overwrite = map_of("a", [("d", j)], j)                   # a is read by the head: same element
    shifted_head = map_of("b", [("a", i + 1)], i)
    for tail, fused in [(same, True), (shifted, False), (overwrite, True)]:
        kernels = gpu_schedule.gpu_schedule([head, tail], tensors)
        assert (len(kernels) == 1) == fused, tail
    # The head reads a at i + 1: overwriting a at j would race with a neighbour.
    assert len(gpu_schedule.gpu_schedule([shifted_head, overwrite], tensors)) == 2



def test_short_nests_over_the_same_rows_share_a_launch_with_a_thread_per_row():
    """Cross-entropy's maximum, exponentials, their sum and the picked logit run over the
    batch's rows: one launch, each thread a row. A nest joins only if it reads what the
    launch writes in its own row, runs over as many rows, and keeps the rows short."""
    from compiler.index_ir import Access, Comprehension, TensorInfo, access_symbol, index_symbols
    _, _, kernels, _ = compile_ir(model("mlp"), target="ptx")
    rows = [[c.out for c in k.comps] for k in kernels["evaluate"] if k.strategy == "rows"]
    assert rows == [[f"loss.cross_entropy.{t}" for t in ("max", "exp", "sum", "picked")]]
    n, k = index_symbols(["n", "k"])
    tensors = {"a": TensorInfo("a", (8, 4)), "r": TensorInfo("r", (8,)), "e": TensorInfo("e", (8, 4)),
               "q": TensorInfo("q", (4,)), "long": TensorInfo("long", (8, 300)),
               "l": TensorInfo("l", (8,))}

    def nest(out, reads, index, reduce=None):
        symbols = {access_symbol(t): Access(t, at) for t, at in reads}
        body = sympy.Add(*symbols)
        if reduce:
            return Comprehension(out, index, body, symbols, "max", (k,), (reduce,))
        return Comprehension(out, index, body, symbols)
    row_max = nest("r", [("a", (n, k))], (n,), reduce=4)
    shifted = nest("e", [("a", (n, k)), ("r", (n,))], (n, k))
    assert [x.strategy for x in gpu_schedule.gpu_schedule([row_max, shifted], tensors)] == ["rows"]
    neighbour = nest("e", [("a", (n, k)), ("r", (n + 1,))], (n, k))      # another thread's row
    columns = nest("q", [("r", (k,))], (k,))                              # rows of another extent
    long_rows = nest("l", [("long", (n, k))], (n,), reduce=300)            # 300 steps a row
    for other in (neighbour, columns, long_rows):
        assert len(gpu_schedule.gpu_schedule([row_max, other], tensors)) == 2, other.out

def test_f64_is_refused_for_the_ptx_target():
    with pytest.raises(ValueError, match=r"float32 \(dtype='f32'\)"):
        compile(model("linreg"), target="ptx", dtype="f64")


def test_unknown_gpu_architecture_is_refused():
    with pytest.raises(ValueError, match="unsupported GPU architecture 'sm_52'"):
        compile_ir(model("linreg"), target="ptx", arch="sm_52")


# ---- launch parameters ----------------------------------------------------------------------
def test_grid_covers_the_elements_up_to_the_resident_blocks():
    assert BLOCK == GPU_BLOCK == 256                   # the runtime launches what the kernels assume
    assert resident_blocks(132, 2048) == 1056          # H100 SXM: 132 SMs x 8 blocks of 256
    assert resident_blocks(1, 128) == 1                # never less than one block
    assert [grid_size(b, 1056) for b in (0, 1, 56, 1056, 1176)] == [0, 1, 56, 1056, 1056]


def test_totals_evaluate_from_the_sizes():
    assert eval_dim("4704*N", {"N": 64}) == 301056
    assert eval_dim("((100*N + 63) // 64) * (1)", {"N": 65}) == 102
    assert eval_dim(10, {"N": 64}) == 10
    assert eval_dim("N*M", {"N": 3, "M": 5}) == 15


def test_layout_aligns_every_buffer():
    offsets, total = layout([4, 0, 1000, 256, 1])
    assert offsets == [0, 256, 256, 1280, 1536]
    assert total == 1792
    assert all(offset % 256 == 0 for offset in offsets)


def test_kernel_params_point_at_their_values():
    values, addresses = kernel_params([0x1000, 0x2000, 0xDEADBEEF00])
    assert addresses.dtype == np.uint64 and len(addresses) == 3
    read = [ctypes.c_uint64.from_address(int(a)).value for a in addresses]
    assert read == [0x1000, 0x2000, 0xDEADBEEF00]
    assert values.ctypes.data == int(addresses[0])


# ---- no GPU here ------------------------------------------------------------------------------
def test_without_cuda_bindings_construction_fails_at_once_with_one_line(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)       # makes `import` raise ImportError
    monkeypatch.setattr(cuda, "_devices", {})
    with pytest.raises(GPUUnavailable) as caught:
        compile(model("mlp"), target="ptx")
    assert str(caught.value) == "cuda-bindings is not installed (pip install 'symnet[gpu]')"
    assert isinstance(caught.value, RuntimeError)


def test_no_device_and_no_driver_are_named():
    with pytest.raises(GPUUnavailable, match="^no CUDA device found$"):
        CudaDevice(FakeDriver(devices=0))

    class NoLibrary(FakeDriver):
        def cuInit(self, flags):
            raise RuntimeError('"cuda" is an NVIDIA driver library and can only be found '
                               "via system search.\nEnsure the driver is installed.")
    with pytest.raises(GPUUnavailable) as caught:
        CudaDevice(NoLibrary())
    assert str(caught.value) == ('no NVIDIA driver: libcuda could not be loaded ("cuda" is an '
                                 "NVIDIA driver library and can only be found via system search.)")


# ---- CudaProgram over a fake driver -----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def host_kernels(name, optimizer=None):
    return emulated_kernels(model(name), optimizer)


def fake_program(name, optimizer=None, **driver_options):
    spec, ptx = ptx_for(name, optimizer=optimizer)
    driver = FakeDriver(host_kernels(name, optimizer), **driver_options)
    return CudaProgram(spec, ptx, model(name).params, device=CudaDevice(driver)), driver


@pytest.mark.parametrize("name", NAMES)
def test_cuda_program_over_fake_driver_matches_cpu(name):
    m = model(name)
    program, driver = fake_program(name, "sgd")
    cpu = compile(m, optimizer="sgd", cache=False)
    assert program.device.max_blocks == 4 and program.device.name == "Fake GPU"
    inputs = reference.random_inputs(m, batch=19, seed=1)
    outputs, expected = program.forward(inputs), cpu.forward(inputs)
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key], 1e-5)
    if "train_step" not in program.spec["entries"]:
        return
    loss, outputs = program.evaluate(inputs)
    assert loss == pytest.approx(cpu.evaluate(inputs)[0], rel=1e-5)
    loss, grads = program.value_and_grad(inputs)
    expected_loss, expected_grads = cpu.value_and_grad(inputs)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for key in expected_grads:
        assert_close(grads[key], expected_grads[key], 1e-5)
    for step in range(2):
        assert program.train_step(inputs) == pytest.approx(cpu.train_step(inputs), rel=1e-5)
    params = program.get_params()
    for key, value in cpu.get_params().items():
        assert_close(params[key], value, 1e-5)
    assert {grid for _, grid in driver.grids} <= {1, 2, 3, 4}


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_optimizer_state_and_hyperparameters_live_on_the_device(optimizer):
    m = model("softmax_regression")
    program, _ = fake_program("softmax_regression", optimizer)
    cpu = compile(m, optimizer=optimizer, cache=False)
    inputs = reference.random_inputs(m, batch=20, seed=2)
    # Adam's default eps (1e-8) turns the rounding noise of near-zero gradients into
    # steps of +-lr either way; a larger one keeps the comparison well posed.
    settings = {"lr": 0.02, "eps": 1e-3} if optimizer == "adam" else {"lr": 0.02}
    for target in (program, cpu):
        target.configure(**settings)
        for _ in range(3):                     # Adam's bias correction changes every step
            target.train_step(inputs)
        target.reset_optimizer()
        target.train_step(inputs)
    assert program.steps == cpu.steps == 1
    params = program.get_params()
    for key, value in cpu.get_params().items():
        assert_close(params[key], value)


def test_set_params_uploads_and_checks_like_program():
    program, _ = fake_program("linreg")
    program.set_params({"a": 2.0, "b": -1.0})
    x = np.array([0.0, 1.0, 2.0], np.float32)
    assert program.value_and_grad({"x": x, "y": 2 * x - 1})[0] == 0.0
    assert program.get_params() == {"a": 2.0, "b": -1.0}
    with pytest.raises(ProgramError, match="unknown parameter 'c'"):
        program.set_params({"c": 1.0})
    with pytest.raises(ProgramError, match="missing input 'y'"):
        program.train_step({"x": x})


def test_copies_of_persistent_state_hold_the_programs_lock():
    """get_params, set_params and reset_optimizer copy while holding the program's lock, as
    every call does: a copy queued between the launches of another thread's train step
    would read (or overwrite) parameters that step has half updated."""
    program, driver = fake_program("softmax_regression", "momentum")
    held = []
    for call in ("cuMemcpyDtoH", "cuMemcpyHtoD"):
        def copy(*args, copy=getattr(driver, call)):
            held.append(program.lock._is_owned())
            return copy(*args)
        setattr(driver, call, copy)
    params = program.get_params()
    program.set_params(params)
    program.reset_optimizer()
    program.train_step(reference.random_inputs(model("softmax_regression"), batch=3))
    assert len(held) > 4 and all(held), held


def test_the_first_nonfinite_tensor_is_found_as_on_the_cpu():
    program, _ = fake_program("neuron")
    cpu = compile(model("neuron"), cache=False)
    inputs = reference.random_inputs(model("neuron"), batch=4)
    for target in (program, cpu):
        params = target.get_params()
        params["yhat.W"] = np.full_like(params["yhat.W"], np.inf)
        target.set_params(params)
        target.value_and_grad(inputs)
    assert program.first_nonfinite() == cpu.first_nonfinite() is not None


def test_each_batch_size_has_its_own_plan_and_evicted_plans_free_their_memory():
    program, driver = fake_program("perceptron")
    m = model("perceptron")
    for batch in range(1, 7):
        out = program.forward(reference.random_inputs(m, batch=batch))
        assert all(len(value) == batch for value in out.values())
    assert len(driver.allocations) == 1 + 4    # persistent block + the four plans kept


def test_a_gpu_older_than_the_ptx_target_is_refused_before_loading():
    class Turing(FakeDriver):
        ATTRIBUTES = {**FakeDriver.ATTRIBUTES, 75: 7, 76: 5}
    with pytest.raises(GPUUnavailable, match="^Fake GPU is sm_75; the PTX is for sm_80 or newer$"):
        CudaProgram(*ptx_for("linreg"), model("linreg").params, device=CudaDevice(Turing()))


def test_driver_failures_name_the_call_and_the_error(monkeypatch):
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")         # no graph: each launch alone
    with pytest.raises(CudaError, match="cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND"):
        CudaProgram(*ptx_for("linreg"), model("linreg").params,
                    device=CudaDevice(FakeDriver(kernels={})))
    program, _ = fake_program("linreg", fail={"cuLaunchKernel": 701})
    x = np.ones(3, np.float32)
    first = program.spec["launches"]["train_step"][0]["kernel"]
    with pytest.raises(CudaError, match=f"^cuLaunchKernel of {first} failed: "
                                        "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: the fake driver"):
        program.train_step({"x": x, "y": x})


def test_by_default_a_step_is_one_graph_launch_and_its_failure_says_so(monkeypatch):
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    program, driver = fake_program("linreg", fail={"cuGraphLaunch": 700})
    x = np.ones(3, np.float32)
    with pytest.raises(CudaError, match="^cuGraphLaunch failed: CUDA_ERROR_ILLEGAL_ADDRESS"):
        program.train_step({"x": x, "y": x})
    assert driver.instantiated == 1


def test_refused_ptx_is_reported_with_the_drivers_compiler_log():
    device = CudaDevice(FakeDriver())
    with pytest.raises(CudaError) as info:
        device.load_module("// no kernels here\n")
    assert str(info.value) == ("cuModuleLoadData failed: CUDA_ERROR_INVALID_PTX: the fake "
                               "driver refused; the driver's PTX compiler says: ptxas fatal : "
                               "no .entry in the module")


def test_a_kernel_failing_after_its_launch_is_reported_by_the_next_copy_with_a_hint():
    program, _ = fake_program("linreg", fail={"cuMemcpyDtoH": 700})
    x = np.ones(3, np.float32)
    with pytest.raises(CudaError, match=r"^cuMemcpyDtoH failed: CUDA_ERROR_ILLEGAL_ADDRESS: "
                                        r"the fake driver refused \(a kernel queued before the "
                                        r"copy failed; CUDA_LAUNCH_BLOCKING=1 names it\)$"):
        program.train_step({"x": x, "y": x})


def test_kernels_index_in_32_bits_and_sizes_past_that_are_refused(monkeypatch):
    """The kernels split positions into indices with 32-bit divisions: no innermost
    loop of LeNet-5 or the MLP divides 64-bit integers (a GPU does that in several
    instructions), but for the flatten's own index expression (i // 25, ...); before,
    19 of LeNet-5's 35 did. Each launch states what it numbers (its elements, and its
    terms where threads share them out), and the runtime refuses a batch that would pass 2**32 (here a limit of 50,000: LeNet-5's
    conv1 numbers 4704 positions per example, f5.W's gradient 48,000) with one line,
    before allocating anything."""
    for name in ("lenet5", "mlp"):
        bodies = dict(re.findall(r"\.entry\s+(\w+)\s*\((?:[^)]*)\)\s*\{(.*?)\n\}",
                                 ptx_for(name)[1], re.DOTALL))
        loops, dividing = 0, []
        for kernel, body in bodies.items():
            for label, block in re.findall(r"^(\$L__BB\d+_\d+):\n(.*?)(?=^\$L__|\Z)", body, re.M | re.S):
                if re.search(rf"bra(\.uni)?\s+{re.escape(label)};", block):     # it loops to itself
                    loops += 1
                    if re.search(r"(mul\.hi|div|rem)\.[us]64", block):
                        dividing.append(kernel)
        assert loops >= 10 and all("flatten" in kernel for kernel in dividing), (name, dividing)
    spec, ptx = ptx_for("lenet5")
    positions = {launch["kernel"]: launch["positions"] for launch in spec["launches"]["train_step"]}
    assert positions["k0_c1_conv2d"] == ["4704*N"]                  # a thread sums its 25 terms
    assert next(v for k, v in positions.items() if "grad_c3_W" in k) == [2400, "100*N"]
    program, driver = fake_program("lenet5", "sgd")
    monkeypatch.setattr(cuda, "INDEX_LIMIT", 50_000)
    allocated = len(driver.allocations)
    with pytest.raises(ProgramError, match=r"^N=11 is too large for the GPU kernels: k0_c1_conv2d "
                                           r"would number 51,744 positions \(at most 49,999\)$"):
        program.train_step(reference.random_inputs(model("lenet5"), batch=11))
    assert len(driver.allocations) == allocated
    program.train_step(reference.random_inputs(model("lenet5"), batch=10))


def test_profile_times_each_kernel_of_a_call_and_the_call_still_runs():
    """CudaProgram.profile makes the call `repeats` times, each kernel between two events
    (the fake records host time, as its kernels run at launch), and gives each kernel's
    median time in launch order; the calls themselves train as usual."""
    program, driver = fake_program("lenet5", "sgd")
    inputs = reference.random_inputs(model("lenet5"), batch=5, seed=2)
    program.configure(lr=0.1)
    before = program.get_params()["c1.b"]
    driver.grids.clear()
    profile = program.profile("train_step", inputs, repeats=2)
    launches = program.spec["launches"]["train_step"]
    assert [p[0] for p in profile] == [launch["kernel"] for launch in launches]
    assert [p[1] for p in profile] == [launch["strategy"] for launch in launches]
    assert [(p[0], p[2]) for p in profile] * 2 == driver.grids
    assert driver.waits == [cuda.WAIT_NS] * 2           # each timed call queued behind a wait
    assert all(ms > 0 for *_, ms in profile)
    assert program.steps == 2 and not np.allclose(program.get_params()["c1.b"], before)
    assert program._timings is None                     # later calls are not timed
    program.train_step(inputs)
    assert program.steps == 3


def test_graphs_compute_what_separate_launches_compute():
    """With use_graphs, each entry runs as one CUDA graph of its launches, built once per
    batch size and entry: the same kernels in the same order, so the same numbers, bit
    for bit."""
    m = model("lenet5")
    plain, _ = fake_program("lenet5", "sgd")
    graphed, driver = fake_program("lenet5", "sgd")
    plain.use_graphs, graphed.use_graphs = False, True
    for program in (plain, graphed):
        program.configure(lr=0.05)
    for batch in (5, 5, 3, 5):
        inputs = reference.random_inputs(m, batch=batch, seed=batch)
        assert plain.train_step(inputs) == graphed.train_step(inputs)
        for name, value in plain.forward(inputs).items():
            np.testing.assert_array_equal(graphed.forward(inputs)[name], value)
        loss, grads = plain.value_and_grad(inputs)
        graph_loss, graph_grads = graphed.value_and_grad(inputs)
        assert loss == graph_loss
        for name in grads:
            np.testing.assert_array_equal(graph_grads[name], grads[name])
    assert driver.instantiated == 2 * 3             # batch sizes 5 and 3; three entries each
    for name, value in plain.get_params().items():
        np.testing.assert_array_equal(graphed.get_params()[name], value)


def test_graphs_under_cuda_bindings_11s_cuGraphInstantiate():
    """cuda-bindings 11.x (which a CUDA 12 driver runs) names the call with flags
    cuGraphInstantiateWithFlags; its cuGraphInstantiate takes a log buffer and its size
    (a TypeError for (graph, flags)). 12.x and later export only cuGraphInstantiate."""
    class Bindings11(FakeDriver):
        def cuGraphInstantiate(self, graph, log_buffer, buffer_size):
            raise AssertionError("cuda-bindings 11.x: not the call with flags")

        def cuGraphInstantiateWithFlags(self, graph, flags):
            return FakeDriver.cuGraphInstantiate(self, graph, flags)
    spec, ptx = ptx_for("linreg", optimizer="sgd")
    driver = Bindings11(host_kernels("linreg", "sgd"))
    program = CudaProgram(spec, ptx, model("linreg").params, device=CudaDevice(driver))
    program.use_graphs = True
    x = np.array([0.0, 1.0, 2.0], np.float32)
    program.train_step({"x": x, "y": 2 * x - 1})
    assert driver.instantiated == 1


def test_each_thread_makes_the_context_current_before_its_calls():
    """A context is current in one thread only (cuCtxSetCurrent binds it to the calling
    thread, as the fake does): a program made in one thread runs in others, each call
    the first of its thread, every group of calls making the context current there
    first; a launch from a thread that never did is refused."""
    program, driver = fake_program("lenet5", "sgd")
    inputs = reference.random_inputs(model("lenet5"), batch=5, seed=1)
    expected, params = program.forward(inputs)["logits"], program.get_params()
    results, errors = [], []

    def graphed():
        program.use_graphs = True
        return program.train_step(inputs)
    calls = [lambda: program.forward(inputs)["logits"], lambda: program.train_step(inputs),
             lambda: program.profile("train_step", inputs, repeats=1), graphed,
             program.get_params, lambda: program.set_params(params),
             program.reset_optimizer, program.device.synchronize]

    def first_in_its_thread(call):
        try:
            results.append(call())
        except Exception as exc:         # reported by the main thread
            errors.append(exc)
    for call in calls:
        thread = threading.Thread(target=first_in_its_thread, args=(call,))
        thread.start()
        thread.join()
    assert not errors, errors
    np.testing.assert_array_equal(results[0], expected)
    assert program.steps == 0           # reset_optimizer, after three steps
    (function, grid, addresses, _, _), *_ = program._last["launches"]["train_step"]
    refused = []
    stranger = threading.Thread(target=lambda: refused.append(driver.cuLaunchKernel(
        function, grid, 1, 1, BLOCK, 1, 1, 0, 0, addresses.ctypes.data, 0)[0]))
    stranger.start()
    stranger.join()
    assert refused == [driver.CUresult.CUDA_ERROR_INVALID_CONTEXT]


def test_the_profiles_wait_kernel_passes_ptxas(tmp_path):
    """CudaDevice.timed_run's symnet_wait is PTX written by hand: ptxas checks it for
    both architectures, as it does the generated kernels."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not installed")
    path = tmp_path / "wait.ptx"
    path.write_text(cuda.WAIT_PTX)
    for arch in ("sm_80", "sm_90"):
        result = subprocess.run([ptxas, f"-arch={arch}", str(path), "-o", str(tmp_path / "w.cubin")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_calls_pass_the_argument_checks_of_the_installed_cuda_bindings():
    """Where cuda-bindings is installed but the driver library is not, every call goes
    first to the real binding: it converts its arguments (raising TypeError on a wrong
    one) before it looks for libcuda; then the fake answers."""
    try:
        real = cuda.load_driver()
    except GPUUnavailable as exc:
        pytest.skip(str(exc))
    try:
        real.cuInit(0)
        pytest.skip("a CUDA driver is present: tests/test_gpu.py checks the real calls")
    except (TypeError, ValueError):
        raise
    except Exception:                   # the driver library is missing: as wanted here
        pass

    def _as_real(argument):
        """The fake's handles (tuples, lists, dicts) stand for driver objects: pass 0 in
        their place; a graph node's parameters become the binding's own struct."""
        if isinstance(argument, FakeDriver.CUDA_KERNEL_NODE_PARAMS):
            node = real.CUDA_KERNEL_NODE_PARAMS()
            for key, value in vars(argument).items():
                setattr(node, key, _as_real(value))
            return node
        if isinstance(argument, list) and all(isinstance(a, tuple) for a in argument):
            return []                                   # no graph nodes to depend on here
        if isinstance(argument, list) and not isinstance(argument[0], str):
            return argument                             # JIT options and their values
        return 0 if isinstance(argument, (tuple, list, dict)) else argument   # ["event", t]

    class Checked(FakeDriver):
        CUresult = real.CUresult
        CUdevice_attribute = real.CUdevice_attribute
        CUjit_option = real.CUjit_option

        def __getattribute__(self, name):
            fake = super().__getattribute__(name)
            if not name.startswith("cu"):
                return fake

            def call(*args):
                try:
                    getattr(real, name)(*(_as_real(a) for a in args))
                except (TypeError, ValueError, OverflowError):
                    raise
                except Exception:      # arguments accepted; then no libcuda to call
                    pass
                return fake(*args)
            return call

    program = CudaProgram(*ptx_for("mlp"), model("mlp").params,
                          device=CudaDevice(Checked(host_kernels("mlp"))))
    inputs = reference.random_inputs(model("mlp"), batch=3)
    program.train_step(inputs)
    program.forward(inputs)
    program.get_params()
    program.profile("train_step", inputs, repeats=1)
    program.use_graphs = True
    program.train_step(inputs)
    program.device.synchronize()
    # The PTX compiler's log of refused PTX: asked for with options the binding converts
    # itself (a wrong one would only lose the log, so look for it).
    with pytest.raises(CudaError, match="; the driver's PTX compiler says: ptxas fatal"):
        program.device.load_module("// no kernels here\n")


def test_the_gpu_tests_run_over_the_dry_run_driver():
    """tests/test_gpu.py skips here (no GPU), so its own code would first run on a lent
    GPU's scarce time. Over tests/fake_gpu (a cuda.bindings.driver module made of
    FakeDriver and the emulated kernels) its quick cases run now, unchanged; the rest,
    and benchmarks/gpu_check.sh, run the same way by hand (see that module)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "fake_gpu"), ROOT]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
         "-k", "linreg or describes or refuses or train_steps or thread or powers"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"^9 passed, \d+ deselected", result.stdout, re.M), result.stdout[-3000:]
