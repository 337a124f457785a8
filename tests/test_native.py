"""Native code for every example against the NumPy reference: float64 to 1e-9,
float32 to 1e-4; one train_step with SGD equals params - lr * grad; batch sizes change
freely; threads give the same numbers as one thread; code compiled in parts by worker
processes is the code compiled here."""
import re
import threading
import time

import numpy as np
import pytest

from compiler import compile, load, parse, reference
from compiler.native import compile_ir, eager_entries
from runtime import jit
from runtime.program import Program, ThreadTeam, data_address
from repository import EXAMPLES, ROOT


@pytest.fixture(autouse=True)
def in_the_repository(monkeypatch):
    """The tests name files as examples/NAME.nn, as a user in the repository would."""
    monkeypatch.chdir(ROOT)


def relative_error(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)) if want.size else 0.0


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def example(request):
    return load(str(ROOT / request.param))


@pytest.mark.parametrize("dtype, tolerance", [("f64", 1e-9), ("f32", 1e-4)])
def test_forward_and_gradients_match_reference(example, dtype, tolerance):
    program = compile(example, dtype=dtype, cache=False)
    for batch, seed in ((1, 0), (5, 1), (33, 2)):      # any batch size, in any order
        inputs = reference.random_inputs(example, batch=batch, seed=seed)
        outputs, expected = program.forward(inputs), reference.forward(example, inputs)
        for name, value in expected.items():
            assert relative_error(outputs[name], value) < tolerance, (name, batch)
        if example.loss is None or not example.params:
            continue
        loss, grads = program.value_and_grad(inputs)
        ref_loss, ref_grads = reference.value_and_grad(example, inputs)
        assert loss == pytest.approx(ref_loss, rel=tolerance, abs=tolerance)
        for name, g in ref_grads.items():
            assert relative_error(grads[name], g) < tolerance * 10, (name, batch)


def test_sgd_train_step_is_params_minus_lr_grad(example):
    if example.loss is None or not example.params:
        pytest.skip("no loss or no parameters")
    program = compile(example, dtype="f64", optimizer="sgd", cache=False)
    program.configure(lr=0.05)
    inputs = reference.random_inputs(example, batch=4, seed=7)
    before = program.get_params()
    _, grads = reference.value_and_grad(example, inputs, before)
    program.train_step(inputs)
    for name, value in program.get_params().items():
        np.testing.assert_allclose(value, before[name] - 0.05 * grads[name], rtol=1e-9, atol=1e-12)


def test_two_threads_compute_what_one_thread_does():
    model = load("examples/lenet5.nn")
    program = compile(model, cache=False)
    inputs = reference.random_inputs(model, batch=40, seed=3)
    loop = program.team.loop
    program.team = ThreadTeam(1, loop)
    one = program.value_and_grad(inputs)
    program.team = ThreadTeam(2, loop)
    two = program.value_and_grad(inputs)
    assert program.team.parts == 2 and len(program.team.workers) == 1
    assert one[0] == two[0]
    for name in one[1]:
        assert np.array_equal(one[1][name], two[1][name])


@pytest.mark.parametrize("path", ["examples/mlp.nn", "examples/lenet5.nn"])
def test_two_threads_train_as_one_thread_does(path):
    # Barriers are elided between independent kernels: updates must still wait for
    # every read of the old weights. (Batch 40: each part's rows are whole 4-row tiles,
    # as with one thread, so the sums run in the same order and agree bit for bit.)
    model = load(path)
    inputs = reference.random_inputs(model, batch=40, seed=5)
    params = {}
    for threads in (1, 2):
        program = compile(model, optimizer="sgd", cache=False)
        program.team = ThreadTeam(threads, program.team.loop)
        losses = [program.train_step(inputs) for _ in range(3)]
        params[threads] = (losses, program.get_params())
    assert params[1][0] == params[2][0]
    for name, value in params[1][1].items():
        assert np.array_equal(value, params[2][1][name]), name


def test_worker_processes_compile_what_this_process_compiles():
    """A large module is compiled in parts by worker processes; compiled here, part after
    part, the objects are the same bytes and training gives the same numbers."""
    model = load("examples/mlp.nn")
    ir_text, spec, _, _ = compile_ir(model, "sgd", entries=eager_entries(model))
    assert len(jit._split(ir_text)) > 1
    assert jit.compile_objects(ir_text, jobs=0) == jit.compile_objects(ir_text, jobs=2)
    inputs = reference.random_inputs(model, batch=20, seed=5)
    trained = []
    for jobs in (0, 2):
        library = jit.NativeLibrary(ir_text, cache_dir=None, jobs=jobs)
        program = Program(spec, library, model.params)
        trained.append(([program.train_step(inputs) for _ in range(3)], program.get_params()))
    assert trained[0][0] == trained[1][0]
    for name, value in trained[0][1].items():
        assert np.array_equal(value, trained[1][1][name])


def test_kernels_streamed_to_llvm_make_the_same_module():
    """compile() hands finished functions to LLVM's workers while it writes the rest:
    each part is a module LLVM accepts on its own, the module's text is the one written
    without streaming, and the streamed objects train as the whole module does."""
    model = load("examples/mlp.nn")
    stream = jit.PartStream(2, jobs=0)
    ir_text, spec, _, emitter = compile_ir(model, "sgd", entries=eager_entries(model), stream=stream)
    assert ir_text == str(emitter.module) == compile_ir(model, "sgd", entries=eager_entries(model))[0]
    assert len(stream.parts) > 2
    for part in stream.parts:
        jit._parse(part)                  # verifies: defined once, every callee declared
    defined = [re.findall(r'^define [^@]*@"([^"]+)"', part, re.M) for part in stream.parts]
    assert sorted(sum(defined, [])) == sorted(re.findall(r'^define [^@]*@"([^"]+)"', ir_text, re.M))
    objects = [jit._compile_part(part, 2) for part in stream.parts]
    library = jit.NativeLibrary(ir_text, cache_dir=None, jobs=0)
    inputs = reference.random_inputs(model, batch=7, seed=3)
    runs = []
    for lib in (library, None):
        if lib is None:
            lib = jit.NativeLibrary.__new__(jit.NativeLibrary)
            lib.name = "streamed"
            lib._link(b"".join(len(o).to_bytes(8, "little") + o for o in objects))
        program = Program(spec, lib, model.params)
        runs.append([program.train_step(inputs) for _ in range(3)])
    assert runs[0] == runs[1]


def test_a_mistake_midway_stops_the_streaming_workers(monkeypatch, tmp_path):
    """An error (or a Ctrl-C) while the code generator writes kernels leaves no LLVM
    worker behind: its threads and processes end before the error reaches the caller."""
    from compiler.codegen import llvm as codegen
    monkeypatch.setenv("SYMNET_CACHE", str(tmp_path))
    monkeypatch.setattr(codegen.LLVMEmitter, "PART_COST", 1)
    original, made = codegen.LLVMEmitter.new_kernel, []

    def new_kernel(self, kernel):
        if len(made) == 6:
            raise KeyboardInterrupt
        made.append(kernel)
        return original(self, kernel)

    monkeypatch.setattr(codegen.LLVMEmitter, "new_kernel", new_kernel)
    streams = []
    monkeypatch.setattr(jit.PartStream, "__init__", _recording(jit.PartStream.__init__, streams))
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        compile(load("examples/lenet5.nn"))
    (stream,) = streams
    assert stream._threads and stream.cost >= jit._SPLIT_CHARS     # the workers had started
    assert set(threading.enumerate()) <= before



def test_a_module_that_gains_a_global_midway_compiles_whole(monkeypatch):
    """Parts stream out before a global variable appears; a part cannot define it for the
    others, so the stream is abandoned and the module compiles whole, and runs."""
    from compiler.codegen import llvm as codegen
    import llvmlite.ir as ir
    monkeypatch.setattr(codegen.LLVMEmitter, "PART_COST", 1)
    original = codegen.LLVMEmitter.new_kernel

    def new_kernel(self, kernel):
        if self.shipped and "marker" not in self.module.globals:
            ir.GlobalVariable(self.module, ir.IntType(32), "marker").initializer = ir.Constant(ir.IntType(32), 7)
        return original(self, kernel)
    monkeypatch.setattr(codegen.LLVMEmitter, "new_kernel", new_kernel)
    streams = []
    monkeypatch.setattr(jit.PartStream, "__init__", _recording(jit.PartStream.__init__, streams))
    model = load("examples/mlp.nn")
    inputs = reference.random_inputs(model, batch=5, seed=2)
    loss = compile(model, cache=False).train_step(inputs)
    stream = streams[0]             # the code generator's (compile_objects makes its own)
    assert stream.parts and stream.finish() is None            # parts went out, then gave up
    monkeypatch.setattr(codegen.LLVMEmitter, "new_kernel", original)
    assert loss == compile(model, cache=False).train_step(inputs)

def _recording(init, into):
    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        into.append(self)
    return recording


def test_data_address_is_where_the_array_starts():
    """The quick way (a ctypes view) and NumPy's own agree, for read-only arrays, views
    into a larger array and empty arrays (the quick way refuses the last two kinds)."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    frozen = base.copy()
    frozen.flags.writeable = False
    for array in (base, base[1:], base[2:3], frozen, np.zeros((0, 4), np.float32),
                  np.frombuffer(b"\0" * 16, np.float32)):
        assert data_address(array) == array.ctypes.data


def test_a_fused_kernel_is_compiled_as_one_function_per_nest():
    """LeNet-5's forward pass is one fused kernel of 17 loop nests; each (with the maps
    in its register epilogue) is a function of its own (one for a block of rows, one for
    a row), so no function is large enough to keep one core busy while the others wait
    (it was 400,000 characters of IR and took 1.4 s; the largest now, a convolution with
    its bias + ReLU epilogue on a 6-row tile, is 183,000, and the whole cold compile of
    the train step takes about as long as that one function did)."""
    model = load("examples/lenet5.nn")
    ir_text, _, kernels, _ = compile_ir(model, "sgd", entries=eager_entries(model))
    sizes = [len(f) for f in re.split(r"\n(?=define )", ir_text) if f.startswith("define")]
    assert max(sizes) < 200_000, max(sizes)
    assert len(jit._split(ir_text)) >= 4
    fused = max(kernels["train_step"], key=lambda k: len(k.nests))
    # 17 loop nests, 5 of them (bias + ReLU) in the epilogue of a product's nest
    assert sum(len(n.comps) for n in fused.nests) == 17 and len(fused.nests) == 12
    assert ir_text.count('define internal void @"kernel_0_row') == 12


class CountingSemaphore(threading.Semaphore):
    def __init__(self):
        super().__init__(0)
        self.sleeps = 0

    def acquire(self, *args, **kwargs):
        self.sleeps += 1
        return super().acquire(*args, **kwargs)


def test_workers_that_went_to_sleep_are_woken_for_the_next_step():
    """With one poll before sleeping, the worker sleeps between steps and is woken for
    each: two programs trained in turn, with pauses, give one thread's numbers."""
    model = load("examples/mlp.nn")
    inputs = reference.random_inputs(model, batch=40, seed=5)
    losses, params = {}, {}
    for threads in (1, 2):
        programs = [compile(model, optimizer="sgd") for _ in range(2)]
        for program in programs:
            program.team = ThreadTeam(threads, program.team.loop)
            program.team.POLLS = 1
            program.team.wake = [CountingSemaphore() for _ in program.team.wake]
        losses[threads] = []
        for _ in range(3):
            for program in programs:
                losses[threads].append(program.train_step(inputs))
                time.sleep(0.005)
        params[threads] = programs[1].get_params()
    assert all(program.team.wake[0].sleeps >= 3 for program in programs)
    assert losses[1] == losses[2]
    for name, value in params[1].items():
        assert np.array_equal(value, params[2][name]), name


# An output that only the runtime reads: a product whose map (folded into its register
# epilogue) feeds the loss, with a gradient that does not need the product's value.
READ_BACK_ONLY = ("model m\ninput x[N, 8]\nparam W[8, 20] ~ normal(0, 1)\n"
                  "op triple(A)[n, j] = 3 * A[n, j]\noutput h = x @ W\nloss mean(triple(h))\n")


@pytest.mark.parametrize("path", EXAMPLES + ["read_back_only"], ids=lambda p: getattr(p, "stem", p))
def test_what_a_program_reads_back_its_entry_wrote(path, monkeypatch):
    """The compiler leaves in registers what it believes the runtime never reads back
    (compiler/native.py `_observed`); every buffer Program's methods read after a call
    must be one that call stored, or a parameter."""
    model = parse(READ_BACK_ONLY, "m.nn") if path == "read_back_only" else load(path)
    program = compile(model, cache=False)
    read = []
    original = Program._workspace_array
    monkeypatch.setattr(Program, "_workspace_array",
                        lambda self, name: read.append((self._last_entry, name)) or original(self, name))
    inputs = reference.random_inputs(model, batch=3)
    program.forward({k: v for k, v in inputs.items() if k in program.spec["entry_inputs"]["predict"]})
    if model.loss is not None:
        program.evaluate(inputs)
        if model.params:
            program.value_and_grad(inputs)
            program.train_step(inputs)
    assert read
    for entry, name in read:
        assert name in program.spec["written"][entry] or name in program.persistent, (entry, name)


def test_a_sum_over_a_compound_extent_compiles():
    """A loss summing a reshape(..., [-1, 4]) runs over 3*N rows, a size computed at the
    kernel's entry (the IR once put it after the entry's branch: invalid IR); one over
    x @ transpose(x * w) runs over N**2 elements (once: no code for a power). Both
    against gradients written out by hand."""
    reshaped = parse("model r\ninput x[N, 3, 4]\nparam w[3, 4] ~ ones\n"
                     "o = reshape(x * w, [-1, 4])\nloss mean(o)\n")
    gram = parse("model g\ninput x[N, 3]\nparam w[3] = 1\nloss mean(x @ transpose(x * w))\n")
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    loss, grads = compile(reshaped, dtype="f64", cache=False).value_and_grad({"x": x})
    assert loss == pytest.approx(np.mean(x))
    np.testing.assert_allclose(grads["w"], x.sum(axis=0) / x.size, rtol=1e-12)
    x = x[:, :, 0]
    loss, grads = compile(gram, dtype="f64", cache=False).value_and_grad({"x": x})
    assert loss == pytest.approx(np.mean(x @ x.T))
    np.testing.assert_allclose(grads["w"], x.sum(axis=0) ** 2 / 25, rtol=1e-12)


def test_the_files_hyperparameters_go_with_its_optimizer():
    """A file's `train sgd(lr=0.3)` was tuned for sgd: compiled for adam, adam's own
    defaults apply (as `symnet train --optimizer adam` does)."""
    m = parse("model t\ninput x[N]\nparam a = 1\nloss mean(a * x)\ntrain sgd(lr=0.3)\n")
    assert compile(m, cache=False).spec["optimizer_defaults"] == {"lr": 0.3}
    adam = compile(m, optimizer="adam", cache=False).spec["optimizer_defaults"]
    assert adam["lr"] == 0.001 and adam["beta1"] == 0.9


def test_a_program_that_is_let_go_stops_its_worker_threads(monkeypatch):
    """A notebook compiles again and again: each Program's workers (and the native code
    they hold) must go with it, not sleep on forever."""
    import gc
    import weakref
    monkeypatch.setenv("SYMNET_THREADS", "2")
    model = load("examples/mlp.nn")
    inputs = reference.random_inputs(model, batch=32, seed=0)
    program = compile(model)
    program.forward(inputs)                     # batch 32: both threads run it
    (worker,) = program.team.workers
    library = weakref.ref(program.library)
    del program
    gc.collect()
    worker.join(timeout=30)
    assert not worker.is_alive()
    gc.collect()
    assert library() is None


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_a_program_is_not_copied_behind_the_users_back(how):
    """A shallow copy would share the parameters with its original (training one trains
    both); pickling failed deep inside ctypes. Each is refused with what to do instead."""
    import copy
    import pickle
    program = compile(load("examples/linreg.nn"))
    copier = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    with pytest.raises(TypeError, match=r"cannot be pickled or copied.*set_params\("):
        copier(program)


def test_compile_checks_its_arguments_before_compiling():
    """A typo in `entries` compiled nothing and said nothing; a string was read letter by
    letter; a path instead of a Model failed with AttributeError."""
    model = load("examples/linreg.nn")
    with pytest.raises(ValueError, match="unknown entry point 'predictt'; expected predict, "
                                         "evaluate, value_and_grad or train_step"):
        compile(model, entries=["predictt"])
    assert compile(model, entries="value_and_grad").spec["compiled"] == ["value_and_grad"]
    with pytest.raises(TypeError, match=r"compile takes a Model \(compiler.load\(path\) or "
                                        r"compiler.parse\(text\)\), got 'examples/linreg.nn'"):
        compile("examples/linreg.nn")
    with pytest.raises(ValueError, match="unknown target 'gpu'; expected 'cpu' or 'cuda'"):
        compile(model, target="gpu")
    with pytest.raises(ValueError, match="opt_level must be 0..3, got 5"):
        compile(model, opt_level=5)
