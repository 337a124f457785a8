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
}
LABELLED = {
    "cross_entropy_classes": "input y[N] : i32\nparam Z[N0, 5] ~ normal(0, 1)\n",
    "onehot": "input y[N] : i32\n",
    "dense": "input x[N, 3]\n",
    "maxout": "input x[N, 3]\n",
}
LABELLED_LOSS = {
    "cross_entropy_classes": "h = dense(x2, 5)\nloss cross_entropy(h, y)",
    "onehot": "h = dense(x2, 4)\nloss sum(onehot(y, 4) * h)",
    "dense": "h = relu(dense(x, 5))\nloss sum(h ^ 2)",
    "maxout": "h = maxout(x, 3, pieces=2)\nloss sum(h ^ 2)",
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
