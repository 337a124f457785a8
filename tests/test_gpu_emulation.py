"""The GPU kernels run on the CPU (target "gpu-emulation", compiler/codegen/gpu_emulation.py):
every example, tile shape and strategy against the NumPy reference, and the
emulation's own checks (races in shared and global memory, addresses outside a
tensor), each shown to catch what it is for. tests/test_ptx.py checks the PTX text and
the runtime; tests/test_gpu.py runs the same kernels on a real GPU.
"""
import functools
import re

import numpy as np
import pytest
import sympy

from compiler import compile, gpu_schedule, parse, reference
from compiler.codegen.gpu_emulation import EmulatedKernelEmitter, sanitizer_report
from compiler.codegen.kernel import KernelEmitter
from compiler.gpucheck import ROUNDING, gpucheck, relative_error
from compiler.native import compile_ir
from test_ptx import NAMES, assert_close, model


# ---- the emulated grid against the reference ---------------------------------------------
def assert_gradients_match(program, m, inputs):
    """program.value_and_grad(inputs) equals the NumPy reference's, loss and every gradient."""
    loss, grads = program.value_and_grad(inputs)
    expected_loss, expected = reference.value_and_grad(m, inputs)
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    assert sorted(grads) == sorted(expected)
    for key in expected:
        assert_close(grads[key], expected[key])


@functools.lru_cache(maxsize=None)
def emulated(name, optimizer=None):
    return compile(model(name), target="gpu-emulation", optimizer=optimizer, cache=False)


def test_emulation_runs_the_ptx_launch_lists():
    for name in ("mlp", "lenet5"):
        _, ptx_spec, _, _ = compile_ir(model(name), target="ptx")
        _, emulated_spec, _, _ = compile_ir(model(name), target="gpu-emulation")
        assert emulated_spec["launches"] == ptx_spec["launches"]


@pytest.mark.parametrize("batch", [5, 97])     # fewer elements than threads; and wrapping
@pytest.mark.parametrize("name", NAMES)
def test_emulated_grid_matches_reference(name, batch):
    m, program = model(name), emulated(name)
    inputs = reference.random_inputs(m, batch=batch, seed=batch)
    expected = reference.forward(m, inputs)
    outputs = program.forward(inputs)
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key])
    if "value_and_grad" in program.spec["entries"]:
        assert_gradients_match(program, m, inputs)
    assert sanitizer_report(program) is None


@pytest.mark.parametrize("name", [n for n in NAMES if model(n).loss and model(n).params])
def test_emulated_sgd_step_subtracts_lr_times_gradient(name):
    m, program = model(name), emulated(name, "sgd")
    inputs = reference.random_inputs(m, batch=33, seed=3)
    before = program.get_params()
    expected_loss, grads = reference.value_and_grad(m, inputs, params=before)
    program.configure(lr=0.1)
    assert program.train_step(inputs) == pytest.approx(expected_loss, rel=1e-4)
    after = program.get_params()
    for key, grad in grads.items():
        assert_close(before[key] - after[key], 0.1 * grad)


def test_long_reductions_keep_float32_accuracy():
    """c1.W's gradient sums N*28*28 terms (235,200 at N=300): split over a block's 256
    threads and added in a tree, float32 keeps 1e-4 (one accumulator drifted by 3e-4)."""
    m = model("lenet5")
    inputs = reference.random_inputs(m, batch=300, seed=300)
    _, grads = emulated("lenet5").value_and_grad(inputs)
    _, expected = reference.value_and_grad(m, inputs)
    assert_close(grads["c1.W"], expected["c1.W"])


@pytest.mark.parametrize("splits", [2, 7, 98, 500])
def test_split_reductions_cover_every_term_once(splits, monkeypatch):
    """A sum split into parts, one block each, then added by the finish launch: LeNet-5's
    bias and weight gradients of both convolutions at batch 3 (c3.W's as a 16x16 tile
    split over the reduction, the others as block sums), where the parts of 98 or 500
    get one term (or chunk) or none, and 7 leaves a short last part. A term counted
    twice or left out changes the gradient; one step of SGD runs the tails."""
    def count(c, tensors):
        return splits if c.out in ("grad:c1.b", "grad:c1.W", "grad:c3.b", "grad:c3.W") else 1
    monkeypatch.setattr(gpu_schedule, "split_count", count)
    monkeypatch.setattr(gpu_schedule, "tile_split_count", lambda c, tile, tensors: count(c, tensors))
    m = model("lenet5")
    _, spec, kernels, _ = compile_ir(m, target="gpu-emulation")
    assert sorted(k.strategy for k in kernels["train_step"] if k.parts) == ["split"] * 3 + ["tile"]
    assert {b["shape"][0] for b in spec["buffers"] if b["name"].startswith("split:grad:c1.b")} \
        == {6 * splits}
    program = compile(m, target="gpu-emulation", optimizer="sgd", cache=False)
    inputs = reference.random_inputs(m, batch=3, seed=3)
    loss, grads = program.value_and_grad(inputs)
    expected_loss, expected_grads = reference.value_and_grad(m, inputs)
    for key in ("c1.b", "c1.W", "c3.b", "c3.W"):
        assert_close(grads[key], expected_grads[key])
    assert sanitizer_report(program) is None
    before = program.get_params()
    program.configure(lr=0.1)
    program.train_step(inputs)
    after = program.get_params()
    for key in ("c1.b", "c3.W"):
        assert_close(before[key] - after[key], 0.1 * expected_grads[key])


def test_few_outputs_with_long_sums_are_split():
    """The schedule splits a sum only where its outputs leave most of the GPU idle and
    its sums are long: LeNet-5's convolution gradients (c3.W's 16 x 150 as a contraction
    in ten 16x16 tiles, split over the reduction), not its dense ones (sums over the
    batch alone); each part gets at least PART terms at the nominal batch (a split
    tile's, TILE_PART), and the parts fill the GPU (SLOTS blocks) at most."""
    m = model("lenet5")
    _, _, kernels, _ = compile_ir(m, target="ptx")
    split = {k.head.out: (k.strategy, k.splits) for k in kernels["train_step"] if k.parts}
    assert split == {"grad:c1.b": ("split", 98), "grad:c1.W": ("split", 6),
                     "grad:c3.b": ("split", 12), "grad:c3.W": ("tile", 50)}
    terms = {"grad:c1.b": 128 * 28 * 28, "grad:c1.W": 128 * 28 * 28, "grad:c3.b": 128 * 10 * 10,
             "grad:c3.W": 128 * 10 * 10}
    blocks = {"grad:c1.b": 6, "grad:c1.W": 150, "grad:c3.b": 16, "grad:c3.W": 10}  # c3.W: tiles
    for out, (strategy, parts) in split.items():
        part = gpu_schedule.TILE_PART if strategy == "tile" else gpu_schedule.PART
        assert terms[out] // parts >= part
        assert blocks[out] * parts <= gpu_schedule.SLOTS
    finish = [k for k in kernels["train_step"] if k.strategy == "finish"]
    assert [k.head.out for k in finish] == ["grad:c3.b", "grad:c3.W", "grad:c1.b", "grad:c1.W"]
    assert all(k.tails for k in finish)                 # the optimizer's update runs there


STRIDED = """model strided
input x[N, 2, 9, 9]
input y[N] : i32
h = relu(conv2d(x, filters=3, size=3))
g = relu(conv2d(h, filters=4, size=3, stride=2, pad=1))
output logits = dense(flatten(g), 10)
loss cross_entropy(logits, y)
"""


def test_window_guards_that_say_more_than_the_reads_range_mask_the_read():
    """A sum's short loops run whole on the GPU, their guards as masks (ptx.py's WINDOW).
    The input gradient of a strided, padded convolution has guards its read's range does
    not imply (`Mod(h - ky + 1, 2) = 0`: only every other window position reads the
    output gradient), so the windowed read is masked, and the gradients still match
    the reference; LeNet-5's s2 gradient, whose guards are the read's range, is checked
    above."""
    m = parse(STRIDED, filename="strided.nn")
    _, _, kernels, _ = compile_ir(m, target="ptx")
    head = next(k.head for k in kernels["train_step"] if k.head.out == "grad:h")
    assert any(isinstance(g, sympy.Eq) for g in head.guards) and head.reduce == "sum"
    program = compile(m, target="gpu-emulation", cache=False)
    for batch in (1, 7):
        assert_gradients_match(program, m, reference.random_inputs(m, batch=batch, seed=batch))
    assert sanitizer_report(program) is None


def test_tiles_that_grow_with_the_batch_are_split_with_a_scratch_buffer_that_grows_too():
    """MLP's first layer: N x 128 outputs in 16x16 tiles, 64 at the nominal batch (fewer
    than the multiprocessors), its 784 terms in 3 parts of at least TILE_PART; the
    scratch buffer holds N x 128 x 3 sums, so batch 1 (one tile) and 300 (19 x 8 tiles,
    more than the fake GPU's grid) both match the reference."""
    m = model("mlp")
    _, spec, kernels, _ = compile_ir(m, target="ptx")
    first, finish = kernels["predict"][:2]
    assert (first.head.out, first.strategy, first.splits) == ("h1.dense", "tile", 3)
    assert (finish.strategy, finish.splits, finish.scratch) == ("finish", 3, first.scratch)
    assert 784 // 3 >= gpu_schedule.TILE_PART
    scratch = next(b for b in spec["buffers"] if b["name"] == first.scratch)
    assert scratch["shape"] == ["384*N"] and scratch["kind"] == "aux"
    for batch in (1, 300):
        inputs = reference.random_inputs(m, batch=batch, seed=batch)
        assert_close(emulated("mlp").forward(inputs)["logits"], reference.forward(m, inputs)["logits"])
    assert sanitizer_report(emulated("mlp")) is None


@pytest.mark.parametrize("shape", gpu_schedule.TILES)
def test_every_tile_shape_matches_reference(shape, monkeypatch):
    """Register tiles of 4x4, 2x2 and 1x1 outputs per thread, at batch 37 (rows past the
    last full tile, a reduction past the last full chunk)."""
    monkeypatch.setattr(gpu_schedule, "tile_shape", lambda rows, cols: shape)
    for name in ("mlp", "lenet5"):
        m = model(name)
        _, _, kernels, _ = compile_ir(m, target="gpu-emulation")
        assert {k.tile.tm for k in kernels["value_and_grad"] if k.tile} == {shape[0]}
        program = compile(m, target="gpu-emulation", cache=False)
        assert_gradients_match(program, m, reference.random_inputs(m, batch=37, seed=37))
        assert sanitizer_report(program) is None


POWERS = """model powers
input x[N, 8]
input e[N, 8]
output general = x ^ e
output integer = x ^ 9 + x ^ 3.0 - x ^ -11
"""


def test_powers_of_negative_bases_agree_with_c_pow():
    """The GPU's pow is ex2(e lg2 x), NaN for any x < 0: the PTX target corrects the sign
    and the special cases, the emulation runs that same formula (with the host's exp2
    and log2), and integer exponents, 3.0 included, are repeated multiplications."""
    m = parse(POWERS, filename="powers.nn")
    x = np.array([[-2, -2, -2, -2, 0, 0, 3, -0.5]] * 3, np.float32)
    e = np.array([[3, 2, 0.5, 0, 0, -1, 2.5, -3]] * 3, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = {"general": np.power(x, e), "integer": x ** 9 + x ** 3 - x ** -11.0}
    outputs = compile(m, target="gpu-emulation", cache=False).forward({"x": x, "e": e})
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6)   # NaN == NaN
    integer_only = parse(POWERS.replace("output general = x ^ e\n", ""), filename="powers.nn")
    _, _, _, emitter = compile_ir(integer_only, target="ptx")
    assert "lg2" not in emitter.ptx() and "ex2" not in emitter.ptx()


# ---- the emulation's checks, each shown to catch what it is for ---------------------------
PROBE = """
model probe
input x[N, 20]
input y[N] : i32
output logits = dense(x, 10)
loss cross_entropy(logits, y)
"""


@pytest.mark.parametrize("policy, guarded", [
    ("block", {"grad_logits_W": 9, "grad_logits_b": 9}),
    ("split", {"grad_logits_W": 9, "grad_logits_b": 9}),
    ("tile", {"logits_dense": 2, "grad_logits_W": 2})])
def test_the_emulation_sees_every_missing_barrier(policy, guarded, monkeypatch):
    """The emulation's racecheck: with every barrier, no race; with any one barrier of
    these kernels left out, a race in that kernel. (A block reduction has a barrier
    before the tree and after each of its 8 steps, as has each part of a split one; a
    tile, after staging a chunk and after using it. At batch 37 each block here meets
    several elements or chunks, so every barrier guards something.)"""
    if policy == "split":
        monkeypatch.setattr(gpu_schedule, "choose_strategy", lambda c, tensors: (
            ("block", None) if c.reduce == "sum" else ("thread", None)))
        monkeypatch.setattr(gpu_schedule, "split_count", lambda c, tensors: (
            2 if gpu_schedule._elements(c, tensors).is_Integer else 1))
    if policy == "tile":
        monkeypatch.setattr(gpu_schedule, "worth_tiling", lambda rows, cols, terms: True)
        monkeypatch.setattr(gpu_schedule, "tile_shape", lambda rows, cols: (16, 16, 1, 1))
    m = parse(PROBE)
    inputs = reference.random_inputs(m, batch=37, seed=5)
    barrier = EmulatedKernelEmitter.sync

    def races_without(dropped):
        """The kernels' barriers in order, and the race report with barrier `dropped` left out."""
        seen = []

        def sync(self):
            seen.append(self.fn.name.split("_", 1)[1])
            if len(seen) - 1 != dropped:
                barrier(self)
        monkeypatch.setattr(EmulatedKernelEmitter, "sync", sync)
        program = compile(m, target="gpu-emulation", entries=("value_and_grad",), cache=False)
        program.value_and_grad(inputs)
        return seen, sanitizer_report(program)
    kernels, report = races_without(None)
    assert report is None
    checked = 0
    for n, kernel in enumerate(kernels):
        if kernel in guarded:
            _, report = races_without(n)
            assert re.fullmatch(rf"\d+ races in shared memory \(the first in kernel k\d+_{kernel}\)",
                                report or ""), \
                (n, kernel, report)
            checked += 1
    assert checked == sum(guarded.values())


def test_the_emulation_sees_addresses_outside_a_tensor(monkeypatch):
    """The emulation's memcheck: LeNet-5's padded convolution reads x at y + ky - 2,
    which the generated code clamps into x (then zeroes). Taking every index as proven
    in bounds drops the clamp, and the reads outside x are reported."""
    m = model("lenet5")
    inputs = reference.random_inputs(m, batch=7, seed=7)
    program = compile(m, target="gpu-emulation", entries=("predict",), cache=False)
    program.forward(inputs)
    assert sanitizer_report(program) is None
    monkeypatch.setattr(KernelEmitter, "known_in_bounds", lambda self, e, dim: True)
    program = compile(m, target="gpu-emulation", entries=("predict",), cache=False)
    program.forward(inputs)
    assert re.fullmatch(r"\d+ out-of-bounds accesses \(the first in kernel k0_c1_conv2d\)",
                        sanitizer_report(program) or "")


FLIPPED = """
model flipped
input x[N, 4]
param W[4, 4] ~ glorot
op flip(A, B)[n, j] = A[n, 3 - j] + 0 * B[n, j]
h = relu(x @ W)
output y = flip(h, h)
loss mean(y)
"""                                   # (B only tells the op the range of j)


def test_the_emulation_sees_a_tail_reading_another_threads_element(monkeypatch):
    """The emulation's race check on global memory: y reads h at another element, so
    it must not join h's launch. With the fusion rule reduced to "same shape", it
    does: the results go wrong, and the check reports the race in that launch."""
    m = parse(FLIPPED)
    inputs = reference.random_inputs(m, batch=300, seed=3)
    expected = reference.forward(m, inputs)["y"]
    program = compile(m, target="gpu-emulation", entries=("predict",), cache=False)
    assert_close(program.forward(inputs)["y"], expected)
    assert sanitizer_report(program) is None
    monkeypatch.setattr(gpu_schedule, "_elementwise_fusible", lambda kernel, c, tensors: (
        tensors[c.out].shape == tensors[kernel.head.out].shape))
    program = compile(m, target="gpu-emulation", entries=("predict",), cache=False)
    program.forward(inputs)
    assert re.fullmatch(r"\d+ races in global memory \(the first in kernel k0_h_matmul\)",
                        sanitizer_report(program) or "")


def test_gpucheck_compares_adam_steps_not_rounding_noise():
    """Adam's first step, lr * g / (|g| + eps), turns the sign of rounding noise in a
    near-zero gradient into +lr or -lr: at batch 7 with the default eps, LeNet-5's f5.W
    steps differ by 6e-4 (measured by hand, 40 s: `gpucheck(..., adam_eps=0)` reports
    5.8e-4). gpucheck compares at eps = 10% of the largest gradient and allows the one
    float32 rounding of each new parameter, and every value agrees."""
    check = gpucheck(model("lenet5"), batches=(7,), optimizer="adam")
    comparisons, report = check.comparisons, check.report
    assert check.eps_raised
    assert report is None
    assert sorted(c.name for c in comparisons if c.name.startswith("step of")) == \
        [f"step of {p}" for p in sorted(model("lenet5").params)]
    assert all(c.passes() for c in comparisons), [(c.name, c.errors) for c in comparisons]



def test_an_overflow_on_both_sides_is_no_difference():
    """A random model whose exp(h^2) overflows: the emulated GPU and the CPU give inf (and
    after a step NaN) in the same places; inf - inf had made every comparison NaN, a
    failure. A value finite on one side only is still an infinite error."""
    inf, nan = np.inf, np.nan
    assert relative_error([inf, 2.0, nan, -inf], [inf, 2.0 + 2e-6, nan, -inf]) == pytest.approx(1e-6, rel=1e-3)
    for actual, expected in [([1.0, 2.0], [inf, 2.0]), ([inf, 2.0], [1.0, 2.0]),
                             ([nan, 2.0], [1.0, 2.0]), ([-inf, 2.0], [inf, 2.0]), ([nan], [inf])]:
        assert relative_error(actual, expected) == inf, (actual, expected)
    model = parse("input x[N, 4]\nh = dense(x, 3)\noutput e = exp(100 * h ^ 2)\n"
                  "loss mean(e)\n", "overflow.nn")
    check = gpucheck(model, batches=(5,))
    assert check.report is None
    assert all(c.passes() for c in check.comparisons), [(c.name, c.errors) for c in check.comparisons]

# h.b drops out of c = h - mean(h, axis=0): its gradient is 0 in exact arithmetic, and
# what each side computes is the rounding noise of a sum that cancels, in its own order.
CANCELLING = """model cancel
input x[N, 8]
h = dense(x, 6)
c = h - mean(h, axis=0)
output o = tanh(c)
loss mean(o ^ 2)
"""


def test_gpucheck_takes_cancellation_for_rounding():
    """grad h.b differs between GPU and CPU by the size of the values themselves (a flat
    1e-4 failed it); against float64 the CPU's own float32 result errs as much, and the
    GPU no more than ROUNDING times that, so it passes, and so does the step of h.b
    (lr times a gradient that is noise)."""
    check = gpucheck(parse(CANCELLING, "cancel.nn"), batches=(5,))
    values = {c.name: c for c in check.comparisons}
    bias = values["grad h.b"]
    assert bias.errors[5] > 0.1 and bias.passes()
    gpu_error, cpu_error = bias.rounding[5]
    assert cpu_error > 0.1 and gpu_error <= ROUNDING * cpu_error
    assert all(c.passes() for c in check.comparisons), [(c.name, c.errors) for c in check.comparisons]
    assert [c.name for c in check.comparisons if c.rounding] == ["grad h.b"]   # float64 asked once


@pytest.mark.parametrize("value", ["o", "grad h.W", "grad h.b"])
def test_gpucheck_fails_a_wrong_gpu_value(value, monkeypatch):
    """One element of one GPU value off by 1e-3 of the largest magnitude of its kind
    (outputs, gradients) fails, also where the value is cancellation noise (grad h.b):
    float64 clears rounding, not an error the CPU does not make."""
    from compiler import gpucheck as module

    def perturbed(model, target="cpu", **options):
        program = compile(model, target=target, **options)
        if target == "gpu-emulation":
            forward, value_and_grad = program.forward, program.value_and_grad

            def off(values):
                values = {k: np.array(v, copy=True) for k, v in values.items()}
                values[value.removeprefix("grad ")].flat[3] += 1e-3 * max(
                    float(np.max(np.abs(v))) for v in values.values())
                return values
            program.forward = lambda inputs: off(forward(inputs)) if value == "o" else forward(inputs)
            program.value_and_grad = lambda inputs: ((lambda loss, grads: (loss, off(grads)))(
                *value_and_grad(inputs)) if value != "o" else value_and_grad(inputs))
        return program
    monkeypatch.setattr(module, "compile", perturbed)
    check = gpucheck(parse(CANCELLING, "cancel.nn"), batches=(5,))
    # a step is allowed its gradient's rounding only where that gradient passed
    step = ["step of h.b"] if value == "grad h.b" else []
    assert [c.name for c in check.comparisons if not c.passes()] == [value, *step]


def test_a_second_symbolic_size_schedules_for_the_gpu():
    """The GPU schedule weighs strategies at a nominal size: for every size the model
    declares (here D too), not only N (a second size once stopped the PTX target)."""
    m = parse("model two\ninput x[N, D]\nparam s = 0.7\n"
              "output t = sum(x * s, axis=1)\nloss mean(x * s)\n")
    _, spec, _, _ = compile_ir(m, target="ptx")
    assert spec["size_names"] == ["N", "D"]
    program = compile(m, target="gpu-emulation", cache=False)
    x = np.random.default_rng(1).standard_normal((6, 300)).astype(np.float32)
    np.testing.assert_allclose(program.forward({"x": x})["t"], 0.7 * x.sum(axis=1), rtol=1e-5)
    loss, grads = program.value_and_grad({"x": x})
    assert loss == pytest.approx(0.7 * x.mean(), rel=1e-5)
    assert grads["s"] == pytest.approx(x.mean(), rel=1e-4)
    assert sanitizer_report(program) is None


def test_entries_compiled_apart_share_one_buffer_table():
    """Program builds train_step and evaluate first and the other entries on first use,
    each a module of its own indexing one buffer table: the scratch buffers of split
    sums must be listed the same way whichever entries a module holds (listing only its
    own, `predict` here wrote the 1024 parts of `stat` into the loss's 2-float scratch)."""
    m = parse("model alias\ninput x[N, 16]\ninput z[N, 8192]\nparam s = 0.5\n"
              "loss mean((x * s) ^ 2)\noutput stat = sum(z * z)\n")
    tables = {entries: compile_ir(m, target="gpu-emulation", entries=entries)[1]["buffers"]
              for entries in (None, ("predict",), ("train_step", "evaluate"))}
    assert tables[None] == tables[("predict",)] == tables[("train_step", "evaluate")]
    assert any(b["name"].startswith("split:stat:") for b in tables[None])
    program = compile(m, target="gpu-emulation", cache=False)
    rng = np.random.default_rng(4)
    inputs = {"x": rng.standard_normal((3, 16)).astype(np.float32),
              "z": rng.standard_normal((3, 8192)).astype(np.float32)}
    loss, _ = program.evaluate(inputs)
    assert program.forward(inputs)["stat"] == pytest.approx(float((inputs["z"] ** 2).sum()), rel=1e-5)
    assert program.evaluate(inputs)[0] == pytest.approx(loss, rel=1e-6)
    assert sanitizer_report(program) is None
