"""The language's rules that reviewers found unenforced or wrong: each mistake is one
located diagnostic with exit status 1, and the forms that must work compute the right
values (checked against NumPy written here)."""
import numpy as np
import pytest

from compiler import compile, gradcheck, parse, reference
from compiler.builder import Builder, F
from compiler.errors import SymnetError
from compiler.reference import classes_of
from symnet.cli import main


def check_error(tmp_path, capsys, case, text, line, col, message):
    """`symnet check` exits 1 and prints the located error, the line and a caret."""
    path = tmp_path / f"{case}.nn"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    first, source, caret = capsys.readouterr().err.rstrip("\n").split("\n")
    assert first == f"{path}:{line}:{col}: error: {message}"
    assert source == "    " + text.split("\n")[line - 1]
    assert caret == "    " + " " * (col - 1) + "^"


# ---- fn definitions and initializers ----------------------------------------------------
DEFINITIONS = {  # file, line, col, message
    "recursive_fn": ("fn f(a) = f(a) + 1\ninput x[N, 3]\noutput o = f(x)\n",
                     1, 11, "fn 'f' calls itself; a fn cannot be recursive"),
    "recursive_fn_alone": ("fn f(z) = f(z)\n", 1, 11, "fn 'f' calls itself; a fn cannot be recursive"),
    "normal_negative_std": ("param w[3] ~ normal(0, -1)\n",
                            1, 24, "normal(mean, std) needs a positive std, got -1"),
    "normal_zero_std": ("param w[3] ~ normal(1, 0)\n",
                        1, 24, "normal(mean, std) needs a positive std, got 0"),
    "uniform_reversed": ("param w[3] ~ uniform(1, -1)\n",
                         1, 14, "uniform(lo, hi) needs lo below hi, got uniform(1, -1)"),
    "uniform_in_a_layer": ("input x[N, 3]\nh = dense(x, 2, init=uniform(1, 0))\n",
                           2, 22, "uniform(lo, hi) needs lo below hi, got uniform(1, 0)"),
}



# ---- values sympy folds to infinity, nan or an imaginary number -------------------------
NOT_FINITE = {  # no code computes them
    "divide_by_zero_output": ("input x[N, 3]\nh = x / 0\noutput h\n", 2, 7, "division by zero"),
    "divide_by_zero_loss": ("input x[N, 3]\nh = 1 / 0\nloss mean(x * h)\n",
                            2, 7, "division by zero"),
    "divide_by_a_zero_difference": ("input x[N]\nh = x / (N - N)\n", 2, 7, "division by zero"),
    "zero_to_a_negative_power": ("input x[N]\nh = x * 0 ^ -1\n", 2, 11, "division by zero"),
    "log_of_zero": ("input x[N]\nh = x * log(0)\n", 2, 9, "log(...) is infinite or undefined here"),
    "sqrt_of_negative": ("input x[N]\nh = x * sqrt(-1)\n", 2, 9, "sqrt(...) is not a real number"),
    "divide_by_zero_in_fn": ("fn g(z) = z / 0\n", 1, 13, "division by zero"),
    "fn_of_a_pole": ("fn f(z) = 1 / z\ninput x[N]\nh = f(0) * x\n",
                     3, 5, "f(...) is infinite or undefined here"),
}



# ---- positional arguments are the same everywhere ---------------------------------------
def leaky(z, alpha):
    return np.where(z > 0, z, alpha * z)


def elu(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def test_positional_alpha_in_fn_op_and_statement_bodies():
    model = parse("fn f(z) = leaky_relu(z, 0.2)\n"
                  "fn g(z) = elu(z, 0.5) + elu(z)\n"
                  "op h(A)[n, j] = leaky_relu(A[n, j], 0.3) * elu(A[n, j], alpha=2)\n"
                  "input x[N, 3]\n"
                  "output a = f(x)\noutput b = g(x)\noutput c = h(x)\n"
                  "output d = leaky_relu(x, 0.2) - elu(x, 0.5)\n", "alpha.nn")
    x = np.random.default_rng(0).normal(size=(4, 3)) * 2
    out = reference.forward(model, {"x": x})
    np.testing.assert_allclose(out["a"], leaky(x, 0.2), rtol=1e-14)
    np.testing.assert_allclose(out["b"], elu(x, 0.5) + elu(x, 1.0), rtol=1e-14)
    np.testing.assert_allclose(out["c"], leaky(x, 0.3) * elu(x, 2.0), rtol=1e-14)
    np.testing.assert_allclose(out["d"], leaky(x, 0.2) - elu(x, 0.5), rtol=1e-14)


def test_positional_alpha_in_a_fn_has_the_right_gradient():
    model = parse("fn f(z) = leaky_relu(z, 0.2) + elu(z, 0.5)\nparam w[6] = [-2, -1, -0.5, 0.5, 1, 2]\n"
                  "loss sum(f(w * 3))\n", "grad.nn")
    _, grads = reference.value_and_grad(model, {})
    z = 3 * model.params["w"]
    expected = 3 * (np.where(z > 0, 1, 0.2) + np.where(z > 0, 1, 0.5 * np.exp(z)))
    np.testing.assert_allclose(grads["w"], expected, rtol=1e-12)


# ---- names: layer parameters, outputs ---------------------------------------------------
NAMES = {  # a name is defined once, a layer's included
    # the second layer of h's statement makes h_2.W: h_2's own layer silently got h_2.W_2
    "layer_names_clash": ("input x[N, 3]\nh = dense(x, 2) + dense(x, 2)\nh_2 = dense(x, 5)\n", 3, 7,
                          "dense names its parameter 'h_2.W', but the layer at line 2 already "
                          "made 'h_2.W'; give this statement another name"),
    "dotted_name_after_layer": ("input x[N, 3]\nh = dense(x, 2)\nh.W = x * 3\noutput o = h.W\n",
                                3, 1, "'h.W' is already defined at line 2"),
    "dotted_name_before_layer": ("input x[N, 3]\nh.W = x * 3\nh = dense(x, 2)\n", 3, 5,
                                 "dense names its parameter 'h.W', but 'h.W' is already "
                                 "defined at line 2"),
    "layer_internal_name": ("input x[N, 3]\nh = relu(dense(x, 2))\nh.dense = x\n",
                            3, 1, "'h.dense' is already defined at line 2"),
}



OUTPUTS = """\
input x[N, 3]
h = relu(x)
output o = h
output h
output i = x
g = x
output g
"""


@pytest.mark.parametrize("run", ["reference", "native"])
def test_outputs_keep_their_names(run):
    model = parse(OUTPUTS, "outputs.nn")
    x = np.random.default_rng(1).normal(size=(2, 3))
    forward = (compile(model, dtype="f64", cache=False).forward if run == "native"
               else lambda inputs: reference.forward(model, inputs))
    out = forward({"x": x})
    assert sorted(out) == ["g", "h", "i", "o"]
    for name, value in [("o", np.maximum(x, 0)), ("h", np.maximum(x, 0)), ("i", x), ("g", x)]:
        np.testing.assert_array_equal(out[name], value)


def test_output_of_an_alias_built_in_python():
    b = Builder()
    x = b.input("x", ["N", 2])
    h = b.let("h", F.relu(x))
    b.output("o", h)
    out = reference.forward(b.build(), {"x": np.array([[-1.0, 2.0]])})
    assert list(out) == ["o"] and np.array_equal(out["o"], [[0, 2]])


def test_output_copy_passes_gradients_through():
    model = parse("input x[N, 2]\nparam w[2] = [0.5, -1.5]\nh = x * w\noutput o = h\n"
                  "loss mean(o * o)\n", "copy.nn")
    checks, _ = gradcheck(model, seed=0)
    assert all(c.rel_error < 1e-7 for c in checks)



LAYER_PARAMS = """\
input x[N, 3]
h = dense(x, 4)
k = h.b
output w2 = h.W * 2
output h.W
loss mean(h) + 0.5 * sum(h.W ^ 2) + sum(k)
"""


def test_later_statements_read_the_parameters_a_layer_made():
    """`h.W` names the parameter dense made (docs/language.md, Expressions): weight decay
    is written with it, and it can be an output."""
    model = parse(LAYER_PARAMS, "decay.nn")
    params = {k: np.random.default_rng(3).normal(size=v.shape) for k, v in model.params.items()}
    x = np.random.default_rng(4).normal(size=(5, 3))
    program = compile(model, dtype="f64", cache=False)
    program.set_params(params)
    out = program.forward({"x": x})
    np.testing.assert_array_equal(out["h.W"], params["h.W"])
    np.testing.assert_array_equal(out["w2"], 2 * params["h.W"])
    loss, grads = program.value_and_grad({"x": x})
    W, b = params["h.W"], params["h.b"]
    assert loss == pytest.approx(np.mean(x @ W + b) + 0.5 * np.sum(W ** 2) + np.sum(b), rel=1e-12)
    # d/dW: mean(x @ W) gives the column sums of x over 4N; the decay gives W itself.
    np.testing.assert_allclose(grads["h.W"], W + x.sum(axis=0)[:, None] / (4 * len(x)), rtol=1e-12)
    np.testing.assert_allclose(grads["h.b"], np.full(4, 1 + 1 / 4), rtol=1e-12)
    checks, _ = gradcheck(model, seed=0)
    assert checks and all(c.rel_error < 1e-7 for c in checks)


@pytest.mark.parametrize("loss", ["(y - x @ w) ^ 2", "(y - 2 * y) ^ 2"])
def test_a_loss_of_many_values_is_labelled_their_mean(loss):
    """`loss (y - x @ w) ^ 2` averages over the batch: `check` calls that step mean (the
    matmul before it once leaked its label onto it)."""
    model = parse(f"input x[N, 2]\ninput y[N]\nparam w[2] = [1, 2]\nloss {loss}\n", "mean.nn")
    ops = {t: model.graph.nodes[t]["op"] for t in model.graph.nodes}
    assert ops["loss"] == "mean" and ops["loss.pow"] == "pow"
    assert [op for t, op in ops.items() if t.startswith("loss.matmul")] in ([], ["matmul"])

# ---- i32 inputs: class labels are range-checked, other integers are not -----------------
def test_classes_come_from_onehot_and_cross_entropy():
    onehot = parse("input y[N] : i32\nt = onehot(y, 7)\nloss mean(t * 2)\n", "o.nn")
    labels = parse("input y[N] : i32\ninput z[N, 4]\nloss cross_entropy(z * 2, y)\n", "c.nn")
    counts = parse("input k[N] : i32\nparam w = 1\nloss mean(k * w)\n", "k.nn")
    assert (classes_of(onehot, "y"), classes_of(labels, "y"), classes_of(counts, "k")) == (7, 4, None)


def test_an_i32_count_is_not_refused_as_a_class():
    model = parse("input k[N] : i32\nparam w = 1.5\nloss mean(k * w)\n", "k.nn")
    k = np.array([2, 5, -1, 9])
    loss, grads = compile(model, dtype="f64", cache=False).value_and_grad({"k": k})
    assert loss == pytest.approx(np.mean(k * 1.5))
    assert grads["w"] == pytest.approx(np.mean(k))
    assert reference.random_inputs(model, batch=4)["k"].dtype == np.int32


def test_labels_outside_the_classes_are_still_refused():
    model = parse("input y[N] : i32\ninput z[N, 3]\nloss cross_entropy(z, y)\n", "c.nn")
    program = compile(model, dtype="f64", cache=False)
    with pytest.raises(Exception, match="holds class 3, outside 0..2"):
        program.evaluate({"y": np.array([0, 3]), "z": np.zeros((2, 3))})


# ---- train statements -------------------------------------------------------------------
TRAIN = {  # one, with its optimizer's keys
    "train_unknown_key": ("train sgd(lr=0.1, beta=0.9)\n", 1, 19,
                          "sgd has no option 'beta'; it takes lr, batch, epochs, seed"),
    "train_key_of_another_optimizer": ("train adam(beta=0.9)\n", 1, 12,
                                       "adam has no option 'beta'; it takes lr, beta1, beta2, "
                                       "eps, batch, epochs, seed; did you mean 'beta2'?"),
    "misspelt_optimizer": ("train sdg(lr=0.1)\n", 1, 1, "unknown optimizer 'sdg'; expected "
                           "one of sgd, momentum, adam; did you mean 'sgd'?"),
    "second_train": ("train sgd(lr=0.1)\ntrain adam(lr=0.01)\n",
                     2, 1, "the model already has a train statement (line 1)"),
}



def test_second_train_and_foreign_keys_raise_symnet_errors():
    with pytest.raises(SymnetError, match="momentum has no option 'beta1'"):
        parse("train momentum(lr=0.1, beta1=0.9)\n")
    model = parse("input x[N]\ntrain momentum(lr=0.1, beta=0.8, batch=N, epochs=3, seed=2)\n")
    assert model.train == {"optimizer": "momentum", "lr": 0.1, "beta": 0.8, "batch": "full",
                           "epochs": 3, "seed": 2}
    counts = parse("input x[N]\ntrain sgd(lr=1, batch=64, epochs=3)\n").train
    assert [type(counts[k]) for k in ("lr", "batch", "epochs")] == [float, int, int]


# ---- op bodies and onehot ---------------------------------------------------------------
OPS = {  # rank, index binding, dtype, arguments
    "negative_pad": ("input x[N, 1, 8, 8]\nh = conv2d(x, filters=2, size=3, pad=-1)\n", 2, 38,
                     "conv2d argument 'pad' must be at least 0, got -1"),
    "unknown_pad": ("input x[N, 1, 8, 8]\nh = conv2d(x, filters=2, size=3, pad=\"full\")\n", 2, 38,
                    "conv2d argument 'pad' must be \"valid\", \"same\" or an integer, got \"full\""),
    "too_few_indices": ("input x[N, 2]\nop f(A)[n, j] = A[n]\no = f(x)\n",
                        2, 17, "A has shape [N, 2] (2 indices), indexed with 1"),
    "onehot_of_floats": ("input x[N, 4]\no = onehot(x, 3)\n", 2, 5,
                         "onehot expects i32 class indices, got [N, 4] f32; declare the input "
                         "with `: i32`"),
    "sum_over_an_output_index": ("input x[N, 2]\nop bad(A)[n, j] = sum(j: A[n, j])\n", 2, 19,
                                 "sum(j: ...) reuses the index 'j', which is already bound "
                                 "here; give the reduction its own index"),
    "nested_sums_over_one_index": ("op bad(A)[n] = max(k: sum(k: A[n, k]))\n", 1, 23,
                                   "sum(k: ...) reuses the index 'k', which is already bound "
                                   "here; give the reduction its own index"),
    # was an internal IRError: the read of A[n, k] outside the sum had no loop for k
    "reduction_index_outside_its_sum": ("op bad(A)[n] = sum(k: A[n, k]) * A[n, k]\n", 1, 39,
                                        "index 'k' is used outside the reduction that binds it"),
}



# ---- statements -------------------------------------------------------------------------
STATEMENTS = {  # hints for a likely slip
    "loss_assigned": ("input x[N]\ninput y[N]\nloss = mse(x, y)\n", 3, 1,
                      "cannot assign to keyword 'loss'; write `loss mse(x, y)`, "
                      "or `loss J = mse(x, y)` to name it"),
}


# ---- every table of mistakes above ------------------------------------------------------
MISTAKES = {**DEFINITIONS, **NOT_FINITE, **NAMES, **TRAIN, **OPS, **STATEMENTS}


@pytest.mark.parametrize("case", MISTAKES)
def test_mistakes_are_located(tmp_path, capsys, case):
    check_error(tmp_path, capsys, case, *MISTAKES[case])
