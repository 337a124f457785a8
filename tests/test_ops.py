"""Every op of the language: derived gradients against finite differences (float64),
native code against the NumPy reference, textbook simplifications against the plain
derivation."""
import numpy as np
import pytest
import sympy

from compiler import compile, gradcheck, parse, reference
from compiler.autodiff import differentiate
from compiler.functions import sigmoid

# Each case: declarations + a loss using the op. Parameters are what gets differentiated,
# so operands are params (random values) unless an op needs integer labels.
HEADER = ("param A[3, 4] ~ normal(0, 1)\nparam B[4, 2] ~ normal(0, 1)\nparam v[4] ~ normal(0, 1)\n"
          "param s = 0.7\nparam P[3, 4] ~ uniform(0.5, 2)\n")
CASES = {
    "add_broadcast": "loss sum((A + v) ^ 2)",
    "sub_scalar": "loss sum((A - s) ^ 2)",
    "mul": "loss sum(A * v * s)",
    "div": "loss sum(A / P)",
    "pow": "loss sum(P ^ 3 + P ^ -1 + P ^ 0.5)",
    "pow_negative_base": "loss sum(A ^ 3 + A ^ 9 / 10 - A ^ 4.0 + (A + 4) ^ -11 * 100)",
    "pow_tensor_exponent": "loss sum(P ^ A + P ^ (v / 2))",
    "neg": "loss sum(-A * A)",
    "matmul": "loss sum((A @ B) ^ 2)",
    "vec_matmul": "loss sum((v @ B) ^ 2)",
    "mat_vec": "loss sum((A @ v) ^ 2)",
    "relu": "loss sum(relu(A) * A)",
    "sigmoid": "loss sum(sigmoid(A) * A)",
    "tanh": "loss sum(tanh(A) * v)",
    "leaky_relu": "loss sum(leaky_relu(A, alpha=0.1) * A)",
    "elu": "loss sum(elu(A, alpha=0.5) * A)",
    "step_sign": "loss sum(step(A) * A + sign(A) * A)",
    "exp_log_sqrt": "loss sum(exp(A) + log(P) + sqrt(P))",
    "abs": "loss sum(abs(A) * v)",
    "max_min": "loss sum(max(A, P) + min(A, v))",
    "softmax": "loss sum(softmax(A) * P)",
    "softmax_axis0": "loss sum(softmax(A, axis=0) * P)",
    "log_softmax": "loss sum(log_softmax(A) * P)",
    "sum_mean": "loss sum(A, axis=1) @ sum(P, axis=1) + mean(A * P) + mean(A, axis=0) @ v",
    "transpose": "loss sum((transpose(A) @ P) ^ 2)",
    "reshape": "loss sum(reshape(A, [2, 6]) @ reshape(P, [6, 2]))",
    "flatten": "param T[2, 3, 2, 2] ~ normal(0, 1)\nloss sum(flatten(T) ^ 2)",
    "mse": "loss mse(A, P)",
    "bce_sigmoid": "loss binary_cross_entropy(sigmoid(A), P / 2)",
    "bce_plain": "loss binary_cross_entropy(P / 3, A * 0 + 0.25)",
    "cross_entropy_onehot": "loss cross_entropy(A, softmax(P))",
    "fn": "fn swish(z) = z * sigmoid(z)\nloss sum(swish(A) * P)",
    # sympy folds sqrt(x ^ 2) to Abs(x), for which no code generator had code.
    "abs_folded": "fn root(z) = sqrt(z)\nop norm(X)[n] = sum(i: root(X[n, i] ^ 2))\n"
                  "loss sum(sqrt(A ^ 2) * v + root(P ^ 2) + (A ^ 2) ^ 1.5) + sum(norm(A))",
    "op_sum": "op sqdense(X, Y)[n, j] = sum(i: X[n, i] * Y[i, j] ^ 2)\nloss sum(sqdense(A, B))",
    "op_max": "op rowmax(X)[n] = max(k: X[n, k] * 2)\nloss sum(rowmax(A) ^ 2)",
    "op_nested": "op f(X, w)[n] = sum(i: X[n, i] * w[i]) + max(k: X[n, k])\nloss sum(f(A, v) ^ 2)",
    # reads outside the operand are 0: their adjoint must drop those positions
    "op_zero_padding": "op shift(X)[n, j] = X[n, j + 1] * X[n, j] - X[n, j - 2]\n"
                       "loss sum(shift(A) ^ 2)",
    "log_softmax_axis0": "loss sum(log_softmax(A, axis=0) * P)",
    "mean_negative_axis": "loss mean(A * P, axis=-1) @ A @ v + sum(A, axis=-2) @ v",
    "transpose_3d": "param T[2, 3, 4] ~ normal(0, 1)\nloss sum(transpose(T) ^ 3 * transpose(T + 1))",
    "reshape_minus_one": "loss sum(reshape(A, [-1, 3]) @ transpose(reshape(P, [-1, 3])) ^ 2)",
}
LABELLED = {
    "cross_entropy_classes": "input y[N] : i32\nparam Z[N0, 5] ~ normal(0, 1)\n",
    "onehot": "input y[N] : i32\n",
    "dense": "input x[N, 3]\n",
    "maxout": "input x[N, 3]\n",
    "dense_no_bias": "input x[N, 3]\n",
}
LABELLED_LOSS = {
    "cross_entropy_classes": "h = dense(x2, 5)\nloss cross_entropy(h, y)",
    "onehot": "h = dense(x2, 4)\nloss sum(onehot(y, 4) * h)",
    "dense": "h = relu(dense(x, 5))\nloss sum(h ^ 2)",
    "maxout": "h = maxout(x, 3, pieces=2)\nloss sum(h ^ 2)",
    "dense_no_bias": "h = tanh(dense(x, 5, bias=false))\nloss sum(dense(h, 2) ^ 2)",
}


def case_source(name):
    if name in CASES:
        return HEADER + CASES[name] + "\n"
    extra = "" if "x[N" in LABELLED[name] else "input x2[N, 3]\n"
    return LABELLED[name].replace("param Z[N0, 5] ~ normal(0, 1)\n", "") + extra + LABELLED_LOSS[name] + "\n"


ALL = list(CASES) + list(LABELLED)


@pytest.fixture(scope="module")
def models():
    return {name: parse(case_source(name), f"{name}.nn") for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_gradient_matches_finite_differences(models, name):
    checks, _ = gradcheck(models[name], seed=3, samples=30)
    assert checks, "no parameters were checked"
    for check in checks:
        assert check.rel_error < 1e-6, (name, check)


@pytest.mark.parametrize("name", ALL)
def test_native_matches_reference(models, name):
    model = models[name]
    inputs = reference.random_inputs(model, batch=4, seed=5)
    ref_loss, ref_grads = reference.value_and_grad(model, inputs)
    for dtype, tol in (("f64", 1e-9), ("f32", 1e-4)):
        loss, grads = compile(model, dtype=dtype, cache=False).value_and_grad(inputs)
        assert loss == pytest.approx(ref_loss, rel=tol, abs=tol), dtype
        for p, g in ref_grads.items():
            scale = max(np.abs(g).max(), 1e-12)
            assert np.abs(grads[p] - g).max() / scale < tol * 10, (dtype, p)


def test_softmax_cross_entropy_simplification_equals_plain_derivation():
    model = parse("input x[N, 6]\ninput y[N] : i32\nh = dense(x, 5)\nloss cross_entropy(h, y)\n", "ce.nn")
    inputs = reference.random_inputs(model, batch=7, seed=2)
    loss_s, simplified = reference.value_and_grad(model, inputs, simplify=True)
    loss_p, plain = reference.value_and_grad(model, inputs, simplify=False)
    assert loss_s == loss_p
    for p in simplified:
        np.testing.assert_allclose(simplified[p], plain[p], rtol=1e-12, atol=1e-14)
    # The simplified backward has no routing through the max (no argmax read).
    reads = {a.tensor for c in differentiate(model).comps for a in c.accesses.values()}
    assert not any("argmax" in t for t in reads)


def test_sigmoid_derivative_is_s_times_one_minus_s():
    z = sympy.Symbol("z", real=True)
    textbook = sympy.diff(sigmoid(z), z)
    assert textbook == sigmoid(z) * (1 - sigmoid(z))
    plain = sympy.diff(1 / (1 + sympy.exp(-z)), z)
    for value in (-3.0, -0.5, 0.0, 0.2, 4.0):
        assert float(textbook.subs(z, value)) == pytest.approx(float(plain.subs(z, value)), rel=1e-14)


def test_relu_derivative_is_read_from_the_layer_output_and_equals_backprop_by_hand():
    """relu'(z) = step(z) is step(h) for h = relu(z): the backward pass reads h (not the
    product h.matmul and b, to recompute z) and its gradients equal backpropagation
    written in NumPy with the mask z > 0, at pre-activations with exact zeros and both
    signs (a zero pre-activation passes no gradient, as step(0) = 0)."""
    model = parse("input x[N, 3]\ninput y[N, 2]\nparam W[3, 4] = [[1, -1, 0, 2], [0, 1, -1, 1], [1, 0, 0, -1]]\n"
                  "param b[4] = [0, 0, 0.5, -2]\nparam V[4, 2] ~ normal(0, 1)\n"
                  "h = relu(x @ W + b)\noutput o = h @ V\nloss mse(o, y)\n", "r.nn")
    bodies = {c.out: (str(c.body), {a.tensor for a in c.accesses.values()})
              for c in differentiate(model).comps}
    assert bodies["grad:h.matmul"] == ("_grad:h*step(_h)", {"grad:h", "h"})
    assert bodies["grad:b"] == ("_grad:h*step(_h)", {"grad:h", "h"})
    x = np.array([[1, 1, 1], [0, 0, 0], [2, -1, 0.5], [-1, 2, 3]], float)
    y = np.arange(8, dtype=float).reshape(4, 2) / 4
    inputs = {"x": x, "y": y}
    loss, grads = reference.value_and_grad(model, inputs)
    W, b, V = (np.asarray(model.params[n], float) for n in ("W", "b", "V"))
    z = x @ W + b                                   # holds exact zeros (x = 0, b = 0)
    assert (z == 0).any() and (z > 0).any() and (z < 0).any()
    h = np.maximum(z, 0)
    d_o = 2 * (h @ V - y) / y.size                  # mse: the mean over every element
    d_z = (d_o @ V.T) * (z > 0)
    assert loss == pytest.approx(np.mean((h @ V - y) ** 2), rel=1e-12)
    np.testing.assert_allclose(grads["V"], h.T @ d_o, rtol=1e-12)
    np.testing.assert_allclose(grads["W"], x.T @ d_z, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], d_z.sum(0), rtol=1e-12, atol=1e-15)
    native = compile(model, dtype="f64", cache=False).value_and_grad(inputs)[1]
    for name in grads:
        np.testing.assert_allclose(native[name], grads[name], rtol=1e-12, atol=1e-15)


def test_elementwise_max_ties_route_to_one_operand():
    model = parse("param a[3] = [1, 2, 3]\nparam b[3] = [1, 5, 0]\nloss sum(max(a, b))\n", "t.nn")
    _, grads = reference.value_and_grad(model, {})
    assert np.array_equal(grads["a"] + grads["b"], [1, 1, 1])
    assert np.array_equal(grads["a"], [1, 0, 1])


def test_reduction_max_ties_route_to_first_element():
    model = parse("param a[1, 4] = [[2, 7, 7, 1]]\nop top(X)[n] = max(k: X[n, k])\n"
                  "loss sum(top(a))\n", "t.nn")
    _, grads = reference.value_and_grad(model, {})
    assert np.array_equal(grads["a"], [[0, 1, 0, 0]])
    _, native = compile(model, dtype="f64", cache=False).value_and_grad({})
    assert np.array_equal(native["a"], [[0, 1, 0, 0]])


def test_three_four_two_network_has_26_parameters():
    model = parse("input x[N, 3]\ninput t[N, 2]\nh = relu(dense(x, 4))\noutput o = dense(h, 2)\n"
                  "loss mse(o, t)\n", "net.nn")
    assert model.param_count() == 26
    assert sorted(model.params) == ["h.W", "h.b", "o.W", "o.b"]


def test_initial_values_are_reproducible_by_seed():
    src = "input x[N, 3]\nh = dense(x, 4)\nloss sum(h)\n"
    a, b = parse(src, "m.nn"), parse(src, "m.nn")
    assert np.array_equal(a.params["h.W"], b.params["h.W"])
    other = parse(src, "m.nn", seed=1)
    assert not np.array_equal(a.params["h.W"], other.params["h.W"])
    # He initialisation: std sqrt(2 / fan_in).
    big = parse("input x[N, 400]\nh = dense(x, 300)\nloss sum(h)\n", "m.nn")
    assert np.std(big.params["h.W"]) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert np.all(big.params["h.b"] == 0)


# ---- forward values against NumPy written here ---------------------------------------------
# The gradient checks above and the native-against-reference checks compare the op with
# itself (one index formula feeds the reference, its derivative and the native code): an
# op that computed the wrong function (min for max, a sum for a mean) would pass them all.
# Here every builtin's value is checked against NumPy formulas written independently.
VALUES_SOURCE = """\
input x[N, 4]
input p[N, 4]
input y[N] : i32
input q[N, 2, 3]
const w[4] = [1, -2, 3, 0.5]
const M[4, 3] = [[1, 0, 2], [0, 1, -1], [3, 1, 0], [-1, 2, 1]]
const c[4] = [0, 1, 0.5, 0.25]
fn swish(z) = z * sigmoid(z)
op rowmax(A)[n] = max(k: A[n, k])
op shifted(A)[n, j] = A[n, j + 1] - A[n, j - 1] + A[n, j]
op gram(A)[i, j] = sum(n: A[n, i] * A[n, j])
"""


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _np_logsumexp(z, axis):
    m = z.max(axis=axis, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def _np_shifted(a):
    padded = np.pad(a, ((0, 0), (1, 1)))
    return padded[:, 2:] - padded[:, :-2] + a


W_ = np.array([1, -2, 3, 0.5])
M_ = np.array([[1, 0, 2], [0, 1, -1], [3, 1, 0], [-1, 2, 1]], dtype=float)
C_ = np.array([0, 1, 0.5, 0.25])
CLAMPED = np.clip(C_, 1e-7, 1 - 1e-7)
# name: (expression, NumPy value from (x, p, y, q, params))
VALUES = {
    "relu": ("relu(x)", lambda x, p, y, q, P: np.maximum(x, 0)),
    "sigmoid": ("sigmoid(x)", lambda x, p, y, q, P: _np_sigmoid(x)),
    "tanh": ("tanh(x)", lambda x, p, y, q, P: np.tanh(x)),
    "leaky_relu_default": ("leaky_relu(x)", lambda x, p, y, q, P: np.where(x > 0, x, 0.01 * x)),
    "leaky_relu_alpha": ("leaky_relu(x, alpha=0.3)", lambda x, p, y, q, P: np.where(x > 0, x, 0.3 * x)),
    "elu_default": ("elu(x)", lambda x, p, y, q, P: np.where(x > 0, x, np.exp(x) - 1)),
    "elu_alpha": ("elu(x, 0.5)", lambda x, p, y, q, P: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    "step": ("step(x)", lambda x, p, y, q, P: (x > 0) * 1.0),
    "sign": ("sign(x)", lambda x, p, y, q, P: np.sign(x)),
    "exp": ("exp(x)", lambda x, p, y, q, P: np.exp(x)),
    "log": ("log(p)", lambda x, p, y, q, P: np.log(p)),
    "sqrt": ("sqrt(p)", lambda x, p, y, q, P: np.sqrt(p)),
    "abs": ("abs(x)", lambda x, p, y, q, P: np.abs(x)),
    "max": ("max(x, p)", lambda x, p, y, q, P: np.maximum(x, p)),
    "min": ("min(x, 0.2)", lambda x, p, y, q, P: np.minimum(x, 0.2)),
    "arithmetic": ("x * w - w / 2 + 3 - p", lambda x, p, y, q, P: x * W_ - W_ / 2 + 3 - p),
    "div": ("x / p", lambda x, p, y, q, P: x / p),
    "pow": ("x ^ 3 + p ^ 0.5 + p ^ -2", lambda x, p, y, q, P: x ** 3 + p ** 0.5 + p ** -2.0),
    "pow_tensor_exponent": ("p ^ x", lambda x, p, y, q, P: p ** x),
    "neg_binds_looser_than_pow": ("-x ^ 2", lambda x, p, y, q, P: -(x ** 2)),
    "pow_right_associative": ("p ^ 2 ^ 3", lambda x, p, y, q, P: p ** 8),
    "matmul": ("x @ M", lambda x, p, y, q, P: x @ M_),
    "vec_matmul": ("w @ M", lambda x, p, y, q, P: W_ @ M_),
    "mat_vec": ("x @ w", lambda x, p, y, q, P: x @ W_),
    "softmax": ("softmax(x)", lambda x, p, y, q, P: np.exp(x - _np_logsumexp(x, 1))),
    "softmax_axis0": ("softmax(x, axis=0)", lambda x, p, y, q, P: np.exp(x - _np_logsumexp(x, 0))),
    "log_softmax": ("log_softmax(x)", lambda x, p, y, q, P: x - _np_logsumexp(x, 1)),
    "log_softmax_axis0": ("log_softmax(x, axis=0)", lambda x, p, y, q, P: x - _np_logsumexp(x, 0)),
    "onehot": ("onehot(y, 4)", lambda x, p, y, q, P: np.eye(4)[y]),
    "dense": ("dense(x, 3)", lambda x, p, y, q, P: x @ P["o.W"] + P["o.b"]),
    "dense_no_bias": ("dense(x, 3, bias=false)", lambda x, p, y, q, P: x @ P["o.W"]),
    "maxout": ("maxout(x, 3, pieces=2)",
               lambda x, p, y, q, P: (np.einsum("ni,ijp->njp", x, P["o.W"]) + P["o.b"]).max(axis=2)),
    "transpose": ("transpose(x)", lambda x, p, y, q, P: x.T),
    "transpose_3d": ("transpose(q)", lambda x, p, y, q, P: q.transpose(2, 1, 0)),
    "reshape": ("reshape(x, [N, 2, 2])", lambda x, p, y, q, P: x.reshape(-1, 2, 2)),
    "reshape_minus_one": ("reshape(q, [-1, 2])", lambda x, p, y, q, P: q.reshape(-1, 2)),
    "flatten": ("flatten(q)", lambda x, p, y, q, P: q.reshape(len(q), -1)),
    "sum": ("sum(x)", lambda x, p, y, q, P: x.sum()),
    "sum_axis": ("sum(q, axis=1)", lambda x, p, y, q, P: q.sum(axis=1)),
    "sum_negative_axis": ("sum(q, axis=-1)", lambda x, p, y, q, P: q.sum(axis=-1)),
    "mean": ("mean(q)", lambda x, p, y, q, P: q.mean()),
    "mean_axis0": ("mean(x, axis=0)", lambda x, p, y, q, P: x.mean(axis=0)),
    "mean_negative_axis": ("mean(q, axis=-2)", lambda x, p, y, q, P: q.mean(axis=-2)),
    "mse": ("mse(x, p)", lambda x, p, y, q, P: np.mean((x - p) ** 2)),
    "cross_entropy_classes": ("cross_entropy(x, y)", lambda x, p, y, q, P: np.mean(
        _np_logsumexp(x, 1)[:, 0] - x[np.arange(len(y)), y])),
    "cross_entropy_soft": ("cross_entropy(x, p)", lambda x, p, y, q, P: np.sum(
        p * (_np_logsumexp(x, 1) - x)) / len(x)),
    "bce_of_sigmoid": ("binary_cross_entropy(sigmoid(x), p)", lambda x, p, y, q, P: np.mean(
        -(p * np.log(_np_sigmoid(x)) + (1 - p) * np.log(1 - _np_sigmoid(x))))),
    "bce_clamped": ("binary_cross_entropy(c, p)", lambda x, p, y, q, P: np.mean(
        -(p * np.log(CLAMPED) + (1 - p) * np.log(1 - CLAMPED)))),
    "fn": ("swish(x)", lambda x, p, y, q, P: x * _np_sigmoid(x)),
    "op_max": ("rowmax(x)", lambda x, p, y, q, P: x.max(axis=1)),
    "op_zero_padding": ("shifted(x)", lambda x, p, y, q, P: _np_shifted(x)),
    "op_sum": ("gram(x)", lambda x, p, y, q, P: x.T @ x),
}


@pytest.fixture(scope="module")
def value_programs():
    """One model with every case as an output `o` of its own model (so that layers are
    named `o.W`, `o.b`), its inputs, random parameters, and its float64 program."""
    rng = np.random.default_rng(11)
    inputs = {"x": rng.normal(size=(5, 4)) * 2, "p": rng.uniform(0.05, 0.95, (5, 4)),
              "y": np.array([0, 3, 1, 2, 3], dtype=np.int32), "q": rng.normal(size=(5, 2, 3))}
    cases = {}
    for name, (expr, _) in VALUES.items():
        model = parse(VALUES_SOURCE + f"output o = {expr}\n", f"{name}.nn")
        params = {k: rng.normal(size=v.shape) for k, v in model.params.items()}
        used = {k: v for k, v in inputs.items() if k in model.inputs}
        cases[name] = (model, used, params)
    return inputs, cases


@pytest.mark.parametrize("name", VALUES)
def test_forward_value_matches_numpy(value_programs, name):
    inputs, cases = value_programs
    model, used, params = cases[name]
    expected = np.asarray(VALUES[name][1](inputs["x"], inputs["p"], inputs["y"], inputs["q"], params))
    got = reference.forward(model, used, params)["o"]
    assert np.shape(got) == expected.shape, name
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    program = compile(model, dtype="f64", cache=False)
    if params:
        program.set_params(params)
    native = program.forward(used)["o"]
    assert np.shape(native) == expected.shape, name
    np.testing.assert_allclose(native, expected, rtol=1e-12, atol=1e-12)


# Reshapes whose source and target dims line up and whose do not, fixed and batched
# (N = 3): each element must land where NumPy's row-major reshape puts it, and the
# gradient must route each back (dJ/dw sums each element's gradient times its own x, so
# a gradient routed to another element shows).
RESHAPES = [((2, 3, 4), (4, 6)), ((4, 6), (2, 3, 4)), ((6, 4), (3, 8)), ((2, 12), (2, 3, 4)),
            ((2, 3, 4), (2, 12)), ((2, 3, 4), (24,)), (("N", 4, 5), ("N", 20)),
            (("N", 20), ("N", 5, 4)), (("N", 6), (-1, 3)), (("N", 4, 6), (-1, 8)),
            (("N", 2, 3, 2), ("N", 3, 4)), (("N", 4), (4, "N"))]


@pytest.mark.parametrize("src,dst", RESHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reshape_puts_each_element_where_numpy_does_and_routes_its_gradient_back(src, dst):
    dims = lambda shape: ", ".join(map(str, shape))
    model = parse(f"input x[{dims(src)}]\nparam w = 1\noutput o = reshape(x * w, [{dims(dst)}])\n"
                  "loss sum(o * o * o)\n", "r.nn")
    shape = tuple(3 if d == "N" else d for d in src)
    x = np.random.default_rng(2).normal(size=shape)
    expected = x.reshape(tuple(-1 if d == "N" else d for d in dst))
    program = compile(model, dtype="f64", cache=False)
    np.testing.assert_array_equal(program.forward({"x": x})["o"], expected)
    loss, grads = program.value_and_grad({"x": x})
    assert loss == pytest.approx(np.sum(x ** 3), rel=1e-12)
    # d/dw sum((w x)^3) at w = 1 is 3 sum(x^3): every element's gradient came back once.
    assert grads["w"] == pytest.approx(3 * np.sum(x ** 3), rel=1e-12)


def test_flatten_gradient_reads_an_affine_index_not_a_modulo():
    """grad of flatten(s[N, 16, 5, 5]) reads g[n, 25*c + 5*y + x]: the index stays below
    400 for every c, y, x, so no modulo is needed (nor paid in every element's address)."""
    from compiler.lower import lower
    model = parse("input s[N, 16, 5, 5]\nloss sum(dense(flatten(s), 3))\n", "f.nn")
    comps = lower(model, "sgd").entries["value_and_grad"]
    index = [a.index for c in comps for a in c.accesses.values() if "flatten" in a.tensor
             and c.out.startswith("grad:")]
    assert index and all(not i.has(sympy.Mod) for ix in index for i in ix), index
