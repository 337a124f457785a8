"""The schedule's choices (which nests vectorize along what) and, for each vector code
path, native results against the NumPy reference on shapes that hit its edges: rows
shorter than a vector, rows of several vectors with a masked tail, rows long enough to
loop over vectors, zero padding, tiles that divide the extent or not."""
import re

import numpy as np
import pytest

from compiler import compile, load, parse, reference
from compiler.autodiff import differentiate
from compiler.lower import lower
from compiler.native import compile_ir
from compiler.schedule import schedule
from runtime.program import ThreadTeam
from reference_check import assert_matches_reference

LANES = 16


def nests(path, entry="train_step", lanes=LANES):
    return nests_of(load(path), entry, lanes)


def nests_of(model, entry, lanes=LANES):
    lowered = lower(model, "sgd")
    kernels = schedule(lowered.entries[entry], lowered.tensors, lanes=lanes)
    return {n.comp.out: n for k in kernels for n in k.nests}


def test_convolution_weight_gradients_vectorize_along_the_image_row():
    found = nests("examples/lenet5.nn")
    for name, row in (("grad:c1.W", "x"), ("grad:c3.W", "x")):
        assert found[name].strategy == "wide"
        assert str(found[name].along) == row
        assert found[name].tile == 5                   # all five filter columns at once


def test_dense_input_gradient_tiles_four_outputs():
    found = nests("examples/mlp.nn")
    assert found["grad:h1"].strategy == "wide" and found["grad:h1"].tile == 4


def test_forward_products_keep_the_output_row_in_vectors():
    found = nests("examples/mlp.nn")
    assert found["h1.dense"].strategy == "outer"


def compiled_nests(model, optimizer="sgd"):
    """entry -> {output: nest} as compiled: epilogues folded, stores decided."""
    _, _, kernels, _ = compile_ir(model, optimizer)
    return {entry: {n.comp.out: n for k in ks for n in k.nests} for entry, ks in kernels.items()}


@pytest.mark.parametrize("optimizer, updated", [("sgd", ["h1.W"]),
                                                ("adam", ["state:h1.W.m", "state:h1.W.v", "h1.W"])])
def test_the_update_runs_on_the_weight_gradient_in_registers(optimizer, updated):
    """The train step applies the update to the weight gradient's accumulators and never
    stores the gradient; value_and_grad returns the gradient, so it stores it."""
    found = compiled_nests(load("examples/mlp.nn"), optimizer)
    step, grad = found["train_step"]["grad:h1.W"], found["value_and_grad"]["grad:h1.W"]
    assert [e.out for e in step.epilogue] == updated and not step.store
    assert not grad.epilogue and grad.store
    # The forward product keeps its bias + ReLU in registers and is never stored: the
    # backward pass reads ReLU's derivative from h1 (step(h1), autodiff.in_terms_of_output).
    assert [e.out for e in found["train_step"]["h1.dense"].epilogue] == ["h1"]
    for entry in ("train_step", "predict"):
        assert not found[entry]["h1.dense"].store and found[entry]["h1.dense"].epilogue
        assert not found[entry]["logits.dense"].store
    assert "h1.dense" not in {t for c in differentiate(load("examples/mlp.nn")).comps
                              for t in c.reads}


def test_an_epilogue_reads_the_product_only_at_its_own_point():
    """A map reading the product at the next column runs after the whole row (in
    registers, the next chunk would not exist yet); one writing what the product reads
    (custom.nn's update of W, read by its own gradient) is not folded either. The first
    gives the reference's values."""
    src = ("model m\ninput x[N, 6]\nparam W[6, 20] ~ normal(0, 1)\n"
           "op next(A)[n, j] = A[n, j] * A[n, j + 1]\nh = x @ W\noutput z = next(h)\n")
    model = parse(src, "next.nn")
    found = compiled_nests(model)["predict"]
    assert not found["h"].epilogue and found["h"].store
    x = np.random.default_rng(1).standard_normal((9, 6))
    np.testing.assert_allclose(compile(model, dtype="f64", cache=False).forward({"x": x})["z"],
                               reference.forward(model, {"x": x})["z"], rtol=1e-12)
    assert not compiled_nests(load("examples/custom.nn"))["train_step"]["grad:W"].epilogue


def test_an_epilogue_is_not_bound_by_the_products_guards():
    """grad:t (a convolution's input gradient, guard h - ky >= 0) carries grad:a in its
    epilogue, which reads x[n, ky, h - ky, w] with variables of the same names: outside
    x it must read 0, whatever the product's guards proved about its own reads."""
    src = ("model m\ninput x[N, 3, 6, 6]\nparam s = 0.7\nconst K[1, 3, 3, 3] = 0.25\n"
           "op g(A, B)[n, ky, h, w] = A[n, ky, h, w] * B[n, ky, h - ky, w]\n"
           "a = x * s\nt = g(a, x)\noutput c2 = conv2d(t, K)\nloss mean(c2 ^ 2)\n")
    model = parse(src, "guards.nn")
    assert [e.out for e in compiled_nests(model)["value_and_grad"]["grad:t"].epilogue] == ["grad:a"]
    inputs = reference.random_inputs(model, batch=2, seed=2)
    loss, grads = compile(model, dtype="f64", cache=False).value_and_grad(inputs)
    ref_loss, ref_grads = reference.value_and_grad(model, inputs)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grads["s"], ref_grads["s"], rtol=1e-10)


def test_no_vector_schedule_without_lanes():
    found = nests("examples/lenet5.nn", lanes=None)
    assert "wide" not in {n.strategy for n in found.values()}


def test_index_arithmetic_folds_its_constants():
    """Register tiles put row and lane numbers into index expressions: `0 + i*784` and
    `-2 + ky + 16` fold as they are emitted (once a fifth of LeNet-5's instructions)."""
    for name in ("pooling", "mlp"):
        ir_text, *_ = compile_ir(load(f"examples/{name}.nn"), entries=("predict",))
        assert ir_text.count("= add i64 ") > 50
        constant = re.findall(r"= (?:add|mul) i64 -?\d+, -?\d+$|= add i64 0, |= mul i64 1, ", ir_text, re.M)
        assert constant == [], name


MODELS = {
    # 3x3 filters on rows of 7 (less than a vector), 20 (a vector and a tail) and 75
    # (a loop over vectors), with and without zero padding, two channels.
    "short": ("model m\ninput x[N, 2, 7, 7]\ninput y[N] : i32\n"
              "c = relu(conv2d(x, filters=3, size=3, pad=\"same\"))\n"
              "output z = dense(flatten(c), 4)\nloss cross_entropy(z, y)\n"),
    "tail": ("model m\ninput x[N, 2, 9, 20]\ninput y[N] : i32\n"
             "c = tanh(conv2d(x, filters=3, size=3))\n"
             "output z = dense(flatten(c), 3)\nloss cross_entropy(z, y)\n"),
    "long": ("model m\ninput x[N, 1, 3, 75]\ninput y[N] : i32\n"
             "c = relu(conv2d(x, filters=2, size=3, pad=\"same\"))\n"
             "output z = dense(flatten(c), 6)\nloss cross_entropy(z, y)\n"),
    # pooling's gradient reads at half rate (fdiv(w, 2)) and compares argmax lanes with
    # per-lane index arithmetic (2*Mod(h, 2) + Mod(w, 2)); rows of 9 and 22
    "pool": ("model m\ninput x[N, 2, 9, 22]\ninput y[N] : i32\n"
             "c = relu(conv2d(x, filters=2, size=3, pad=\"same\"))\n"
             "output z = dense(flatten(maxpool(c, 2)), 3)\nloss cross_entropy(z, y)\n"),
    # a dense input gradient whose row (7) does not divide into tiles of 4 or 2
    "odd": ("model m\ninput x[N, 7]\ninput y[N] : i32\nh = sigmoid(dense(x, 37))\n"
            "output z = dense(h, 3)\nloss cross_entropy(z, y)\n"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("dtype", ["f64", "f32"])        # 8 and 16 lanes with AVX-512
def test_vector_paths_match_the_reference(name, batch, dtype):
    model = parse(MODELS[name], f"{name}.nn")
    program = compile(model, dtype=dtype, cache=False)
    inputs = reference.random_inputs(model, batch=batch, seed=batch)
    loss, grads = program.value_and_grad(inputs)
    ref_loss, ref_grads = reference.value_and_grad(model, inputs)
    rtol, atol = (1e-9, 1e-12) if dtype == "f64" else (2e-4, 1e-6)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    for param, grad in ref_grads.items():
        np.testing.assert_allclose(grads[param], grad, rtol=rtol, atol=atol, err_msg=param)
    out = program.forward(inputs)["z"]
    np.testing.assert_allclose(out, reference.forward(model, inputs)["z"], rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 6, 37])
def test_a_weight_matrix_larger_than_the_cache_runs_in_panels(dtype, batch):
    # 300 x 512 weights (600 KiB in f32) exceed PANEL_BYTES: column panels of B, every
    # row of a thread's share per panel; rows in register-tile blocks (6 with AVX-512)
    # plus leftovers. A share of 16 rows or more (batch 37 on two threads) reads the
    # panel from a contiguous copy.
    model = parse("model mm\ninput A[N, 300]\nparam B[300, 512] ~ normal(0, 1)\noutput C = A @ B\n", "mm.nn")
    ir_text, _, _, _ = compile_ir(model, dtype=dtype)
    assert "panel.head" in ir_text and "pack.head" in ir_text
    program = compile(model, dtype=dtype, cache=False)
    program.team = ThreadTeam(2, program.team.loop)       # whatever the machine's cores
    A = np.random.default_rng(batch).standard_normal((batch, 300))
    B = program.get_params()["B"].astype(np.float64)
    rtol = 1e-10 if dtype == "f64" else 1e-4
    np.testing.assert_allclose(program.forward({"A": A})["C"], A @ B, rtol=rtol, atol=rtol * 30)


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_a_vector_sum_of_shifted_reads_zero_pads(dtype):
    # k < 20 (the union of what the reads need); x[n, k + 3] past the row reads 0, and
    # the lanes past k's extent (20 = 16 + 4) add nothing.
    src = ("model m\ninput x[N, 20]\nop tails(A)[n] = sum(k: A[n, k] + A[n, k + 3])\n"
           "output s = tails(x)\n")
    model = parse(src, "tails.nn")
    assert nests_of(model, "predict")["s"].strategy == "wide"
    x = np.random.default_rng(0).standard_normal((5, 20))
    out = compile(model, dtype=dtype, cache=False).forward({"x": x})["s"]
    np.testing.assert_allclose(out, x.sum(1) + x[:, 3:].sum(1), rtol=1e-5)


def test_short_rows_of_many_filters_put_the_lanes_along_the_filters():
    """LeNet-5's second convolution (16 filters, rows of 10): lanes along the filters
    ("across"); its first (6 filters, rows of 28) keeps them along the row."""
    found = nests("examples/lenet5.nn", "predict")
    assert found["c3.conv2d"].strategy == "across" and str(found["c3.conv2d"].along) == "o"
    assert found["c1.conv2d"].strategy == "outer"
    assert nests("examples/lenet5.nn", "predict", lanes=8)["c3.conv2d"].strategy == "across"


@pytest.mark.parametrize("dtype, rtol", [("f64", 1e-9), ("f32", 2e-5)])
@pytest.mark.parametrize("filters, pad", [(16, "valid"), (12, "valid"), (12, "same"), (40, "valid")])
def test_lanes_along_filters_match_the_reference(filters, pad, dtype, rtol):
    """Filters in vector lanes: a full vector (16), masked lanes (12; 40 in two or three
    vectors and a tail), zero padding read by broadcasts; rows of 9, blocks of 6 images,
    leftover images, several threads. Forward (bias + ReLU epilogue) and every gradient."""
    size = 9 if pad == "same" else 13                       # rows of 9 either way
    model = parse(f"input x[N, 3, {size}, {size}]\n"
                  f'h = relu(conv2d(x, filters={filters}, size=5, pad="{pad}"))\n'
                  "p = dense(flatten(h), 3)\n"
                  "loss mean(p * p)\n", "filters.nn")
    lanes = 16 if dtype == "f32" else 8
    assert nests_of(model, "evaluate", lanes)["h.conv2d"].strategy == "across"
    program = compile(model, dtype=dtype, cache=False)
    assert_matches_reference(program, model, (13, 1, 6), rtol)
