"""Tests for compiler/printing.py: derived gradient formulas, deltas, rendering, summary.

The oracle: a formula, evaluated numerically (sums expanded by sympy), must equal the
gradient the NumPy reference computes from the backward loop nests.
"""
import time

import numpy as np
import pytest
import sympy

from compiler import reference
from compiler.autodiff import differentiate
from compiler.errors import SymnetError
from compiler.functions import sigmoid
from compiler.index_ir import interpret
from compiler.pipeline import load, parse
from compiler.printing import delta_formulas, derive, gradient_formulas, render

SIGMOID_NEURON = """\
model neuron
input x[N, 2]
input y[N]
param w[2] = [0.5, -0.5]
param b = 0.1
s = sigmoid(x @ w + b)
loss mean((s - y) ^ 2)
"""

DENSE_342 = """\
input x[N, 3]
input t[N, 2]
h = relu(dense(x, 4))
output o = dense(h, 2)
loss mse(o, t)
"""

SOFTMAX_SMALL = """\
input x[N, 3]
input y[N] : i32
logits = dense(x, 4)
loss cross_entropy(logits, y)
"""

# A user op reading its input at two positions, one of them past the end.
SHIFTED = """\
model shifted
input x[N, 5]
input y[N, 5]
op diff(A)[n, i] = A[n, i + 1] - A[n, i]
param w[5] = [0.5, -0.3, 0.8, 0.1, -0.6]
h = diff(x * w)
loss mean((h - y) ^ 2)
"""

NEXT_TIMES = """\
model next_times
input x[N, 5]
op nxt(A, B)[n, i] = A[n, i + 1] * B[n, i]
param w[5] = [0.5, -0.3, 0.8, 0.1, -0.6]
loss mean(nxt(x, x * w))
"""

N = sympy.Symbol("N", integer=True, positive=True)


# ---- evaluating formulas numerically ------------------------------------------------
def evaluate(expr, values, batch):
    """A formula's value: sums expanded for N = batch, reads looked up in `values`."""
    expr = expr.xreplace({N: batch}).doit()
    reads = {e: read(values[str(e.base)], tuple(int(i) for i in e.indices))
             for e in expr.atoms(sympy.Indexed)}
    scalars = {s: values[s.name] for s in expr.free_symbols
               if isinstance(s, sympy.Symbol) and s.name in values}
    return float(expr.xreplace({**reads, **scalars}))


def read(array, index):
    """array[index]; 0 outside the array, as the language defines such reads."""
    inside = all(0 <= k < size for k, size in zip(index, np.shape(array)))
    return array[index] if inside else 0.0


def evaluate_entries(formula, values, shape, batch):
    """Every entry of a Formula's left-hand side, as an array."""
    out = np.zeros(shape)
    for position in np.ndindex(*shape):
        point = dict(zip(formula.index, position))
        out[position] = evaluate(formula.expr.xreplace(point), values, batch)
    return out


def reference_values(model, batch=2, seed=1, simplify=True):
    """All forward and backward buffers, keyed by the labels formulas use (δT for grad:T)."""
    inputs = reference.random_inputs(model, batch=batch, seed=seed)
    env = reference.run_forward(model, inputs)
    backward = differentiate(model, simplify=simplify)
    interpret(backward.comps, env, reference.bind_sizes(model, inputs),
              tensors={**model.tensors, **backward.tensors})
    values = dict(env)
    values.update({f"δ{tensor}": env[buffer] for tensor, buffer in backward.grads.items()})
    return values, {p: env[backward.grads[p]] for p in model.params}


def assert_formulas_match_reference(model, simplify=True, batch=2):
    derivation = derive(model, simplify=simplify)
    values, grads = reference_values(model, batch=batch, simplify=simplify)
    for name, formula in derivation.gradients.items():
        got = evaluate_entries(formula, values, grads[name].shape, batch)
        np.testing.assert_allclose(got, grads[name], rtol=1e-9, atol=1e-12, err_msg=name)
    for formula in derivation.deltas:
        want = values[formula.label]
        got = evaluate_entries(formula, values, want.shape, batch)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=formula.label)


# ---- linear regression: the textbook answer -----------------------------------------
def test_linreg_gradient_is_the_textbook_formula():
    model = load("examples/linreg.nn")
    formulas = gradient_formulas(model)
    n = sympy.Symbol("n", integer=True)
    x, y = sympy.IndexedBase("x"), sympy.IndexedBase("y")
    a, b = sympy.symbols("a b")
    expected = {"a": sympy.Sum(-2 * x[n] * (y[n] - a * x[n] - b), (n, 0, N - 1)) / N,
                "b": sympy.Sum(-2 * (y[n] - a * x[n] - b), (n, 0, N - 1)) / N}
    assert set(formulas) == {"a", "b"}
    for name in expected:
        assert sympy.simplify((formulas[name] - expected[name]).doit()) == 0
        rng = np.random.default_rng(0)
        values = {"x": rng.normal(size=5), "y": rng.normal(size=5), "a": 0.4, "b": 0.1}
        assert evaluate(formulas[name], values, 5) == pytest.approx(
            evaluate(expected[name], values, 5), rel=1e-12)


def test_linreg_needs_no_deltas():
    assert delta_formulas(load("examples/linreg.nn")) == []


def test_linreg_values_at_a_point():
    model = load("examples/linreg.nn")
    values = {"x": np.array([0.15]), "y": np.array([0.3]), "a": 0.4, "b": 0.1}
    formulas = gradient_formulas(model)
    assert evaluate(formulas["a"], values, 1) == pytest.approx(-0.042)
    assert evaluate(formulas["b"], values, 1) == pytest.approx(-0.28)


# ---- formulas against the reference evaluator ---------------------------------------
@pytest.mark.parametrize("source", [SIGMOID_NEURON, DENSE_342, SOFTMAX_SMALL, SHIFTED, NEXT_TIMES],
                         ids=["sigmoid_neuron", "dense_342", "softmax", "shifted", "next_times"])
@pytest.mark.parametrize("simplify", [True, False])
def test_formulas_equal_reference_gradients(source, simplify):
    assert_formulas_match_reference(parse(source, "model.nn"), simplify=simplify)


@pytest.mark.parametrize("example", ["linreg", "perceptron", "custom", "neuron"])
def test_example_formulas_equal_reference_gradients(example):
    assert_formulas_match_reference(load(f"examples/{example}.nn"))


# ---- textbook forms -----------------------------------------------------------------
def test_sigmoid_derivative_keeps_the_s_times_one_minus_s_form():
    formulas = gradient_formulas(parse(SIGMOID_NEURON, "neuron.nn"))
    for expr in formulas.values():
        products = [m for m in expr.atoms(sympy.Mul)
                    if any(isinstance(f, sigmoid) and 1 - f in m.args for f in m.args)]
        assert products, sympy.sstr(expr)


def test_softmax_cross_entropy_delta_is_softmax_minus_onehot():
    (name, delta), = delta_formulas(parse(SOFTMAX_SMALL, "softmax.nn"))
    assert name == "logits"
    text = render(delta)
    assert "max" not in text                  # the stabilising shift cancelled
    assert "exp(logits[n, k])/Sum(exp(logits[n," in text and "eq(y[n], k)" in text


def test_mlp_lists_deltas_in_backward_order():
    model = load("examples/mlp.nn")
    start = time.perf_counter()
    derivation = derive(model)
    print(f"\nmlp gradient derivation: {time.perf_counter() - start:.3f} s")
    assert [f.name for f in derivation.deltas] == ["logits", "h2", "h1"]
    assert set(derivation.gradients) == set(model.params)
    h1_w = render(derivation.gradients["h1.W"].expr)
    assert "δh1[n, j]" in h1_w and "x[n, i]" in h1_w


def test_wrt_selects_one_parameter_and_the_deltas_it_needs():
    derivation = derive(load("examples/mlp.nn"), wrt="h2.W")
    assert list(derivation.gradients) == ["h2.W"]
    assert [f.name for f in derivation.deltas] == ["logits", "h2"]


def test_unknown_wrt_lists_the_parameters():
    with pytest.raises(SymnetError, match="the parameters are: a, b"):
        gradient_formulas(load("examples/linreg.nn"), wrt="c")


def test_index_variables_do_not_clash_with_tensor_names():
    derivation = derive(load("examples/lenet5.nn"), wrt="c1.W")
    formula = derivation.gradients["c1.W"]
    index_names = {s.name for s in formula.expr.atoms(sympy.Symbol) if s.is_integer}
    assert not index_names & {"x", "y"}


# ---- rendering ----------------------------------------------------------------------
@pytest.mark.parametrize("example", ["linreg", "mlp", "lenet5", "custom", "softmax_regression"])
def test_latex_is_well_formed(example):
    derivation = derive(load(f"examples/{example}.nn"))
    for formula in list(derivation.gradients.values()) + derivation.deltas:
        latex = formula.render("latex")
        assert "grad:" not in latex and "dJ/d" not in latex and "δ" not in latex
        assert latex.count("{") == latex.count("}")
        depth = 0
        for ch in latex:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert latex.startswith(r"\frac{\partial J}{\partial ") or latex.startswith(r"{\delta_")


def test_latex_names_layer_parameters_legibly():
    formula = derive(load("examples/mlp.nn")).gradients["h1.W"]
    latex = formula.render("latex")
    assert r"\frac{\partial J}{\partial {W_{h_{1}}}_{i,j}}" in latex
    assert r"{\delta_{h_{1}}}_{n,j}" in latex


def test_unicode_and_text_forms():
    derivation = derive(load("examples/mlp.nn"), wrt="h1.b")
    assert derivation.gradients["h1.b"].render("text").startswith("dJ/dh1.b[i] = Sum(")
    assert "∂J/∂h1.b[i] =" in derivation.gradients["h1.b"].render("unicode")
    assert "δh1[n, i]" in derivation.gradients["h1.b"].render("unicode")


def test_unknown_format_is_an_error():
    with pytest.raises(SymnetError, match="unknown format"):
        render(sympy.Symbol("a"), "html")


# ---- summary table ------------------------------------------------------------------
def test_summary_counts_parameters():
    table = parse(DENSE_342, "dense.nn").summary()
    assert table.splitlines()[-1] == "Total learnable parameters: 26"
    rows = {line.split()[0]: line for line in table.splitlines()[2:-1]}
    assert rows["h.W"].split()[1:] == ["param", "[3,", "4]", "12"]
    assert rows["h"].split()[1] == "relu"


def test_summary_skips_argmax_buffers_and_groups_thousands():
    table = load("examples/mlp.nn").summary()
    assert ".argmax" not in table
    assert "Total learnable parameters: 109,386" in table
    assert "100,352" in table


# ---- every example, every format, as `symnet grad` prints it ---------------------------
def examples_with_a_loss():
    import glob
    return [path for path in sorted(glob.glob("examples/*.nn")) if load(path).loss]


# Models whose max reductions once crashed the unicode printer (MaxOver._pretty).
MAX_MODELS = {
    "maxout_mse": "input x[N, 3]\ninput t[N, 2]\ng = maxout(x, 2, pieces=3)\nloss mse(g, t)\n",
    "softmax_axis0": "input x[N, 3]\np = softmax(dense(x, 2), axis=0)\nloss mean(p * p)\n",
    "conv_maxpool": "input x[N, 1, 6, 6]\nc = maxpool(relu(conv2d(x, filters=2, size=3)), 2)\n"
                    "loss mean(c)\n",
}


@pytest.mark.parametrize("flags", [[], ["--no-simplify"], ["--chain"]])
@pytest.mark.parametrize("source", examples_with_a_loss() + list(MAX_MODELS))
def test_grad_prints_in_every_format(tmp_path, capsys, source, flags):
    """`symnet grad` in text, unicode and LaTeX, simplified, raw and as chains."""
    from symnet.cli import main
    if source in MAX_MODELS:
        path = tmp_path / f"{source}.nn"
        path.write_text(MAX_MODELS[source])
        source = str(path)
    for fmt in ("text", "unicode", "latex"):
        assert main(["grad", source, "--format", fmt, "--traceback", *flags]) == 0
        out = capsys.readouterr().out
        lhs = {"text": "dJ/d", "unicode": "∂J/∂", "latex": r"\frac{\partial J}{\partial "}[fmt]
        assert lhs in out and "grad:" not in out


# ---- guards and reads outside a tensor ----------------------------------------------
def piecewise_conditions(expr):
    return {p.args[0].cond for p in expr.atoms(sympy.Piecewise)}


def test_guards_true_over_the_whole_range_are_left_out():
    """δA[n, i] reads δh[n, i - 1] under `i >= 1` and `i - 1 < 5`; for i < 5 the second
    always holds and is not printed."""
    formula = derive(parse(SHIFTED, "shifted.nn")).gradients["w"]
    i = sympy.Symbol("i", integer=True)
    assert piecewise_conditions(formula.expr) == {sympy.GreaterThan(i, 1)}


def test_pooling_gradient_has_no_guard_once_floor_bounds_are_known():
    """maxpool's gradient reads the pooled δ at floor(h/2) < 14 for h < 28: always true."""
    deltas = {f.name: f for f in derive(load("examples/lenet5.nn")).deltas}
    assert not deltas["c1"].expr.has(sympy.Piecewise)
    assert render(deltas["c1"].expr).count("δs2[n, c, floor(h/2), floor(w/2)]") == 1


def test_reads_outside_a_tensor_are_named_once_per_tensor():
    from compiler.printing import outside_reads
    model = parse(NEXT_TIMES, "next_times.nn")
    derivation = derive(model)
    formulas = list(derivation.gradients.values()) + derivation.deltas
    assert outside_reads(model, formulas) == ["x[n, i + 1] where i + 1 >= 5"]
    assert outside_reads(model, formulas, "unicode") == ["x[n, i + 1] where i + 1 ≥ 5"]
    lenet = load("examples/lenet5.nn")
    derivation = derive(lenet)
    assert outside_reads(lenet, list(derivation.gradients.values()) + derivation.deltas) == [
        "x[n, c, j + ky - 2, i + kx - 2] where j + ky - 2 < 0 or j + ky - 2 >= 28 "
        "or i + kx - 2 < 0 or i + kx - 2 >= 28"]
    for clean in ("mlp", "linreg"):
        model = load(f"examples/{clean}.nn")
        derivation = derive(model)
        assert outside_reads(model, list(derivation.gradients.values()) + derivation.deltas) == []


def test_grad_notes_reads_outside_a_tensor(tmp_path, capsys):
    from symnet.cli import main
    path = tmp_path / "next_times.nn"
    path.write_text(NEXT_TIMES)
    assert main(["grad", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "  (reads outside a tensor are 0: x[n, i + 1] where i + 1 >= 5)"
    assert main(["grad", str(path), "--format", "latex"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "%   (reads outside a tensor are 0: x[n, i + 1] where i + 1 >= 5)"


@pytest.mark.parametrize("flags", [[], ["--chain"]])
def test_latex_values_at_a_point_are_comments(capsys, flags):
    """With --format latex every line is an equation or a `%` comment: the values of
    --at (plain text, arrays over several lines) are comments like the headings."""
    from symnet.cli import main
    assert main(["grad", "docs/tutorial/twolayer.nn", "--wrt", "h.W", "--format", "latex",
                 "--at", "x=1,y=0.5", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(("%", r"\frac", "{")) for line in lines), lines
    at = lines.index("% at x=1, y=0.5 (inputs as a batch of one):")
    # The values, by NumPy's forward pass and the chain rule written out here (they were
    # once numbers copied from the command's own output).
    p = load("docs/tutorial/twolayer.nn").params
    x, y = np.ones((1, 2)), 0.5
    h = 1 / (1 + np.exp(-(x @ p["h.W"] + p["h.b"])))
    yhat = 1 / (1 + np.exp(-(h @ p["yhat.W"] + p["yhat.b"])))
    delta_h = 2 * (yhat - y) * yhat * (1 - yhat) * p["yhat.W"].T * h * (1 - h)     # [1, 3]
    rows = [", ".join(f"{v:.6g}" for v in row) for row in x.T @ delta_h]
    assert lines[at + 1:] == [f"%   J = {((yhat - y) ** 2).item():.6g}",
                              f"%   dJ/dh.W = [[{rows[0]}],",
                              f"%              [{rows[1]}]]"]


# A small CNN: padded convolution, max pooling, a second convolution, flatten, dense.
SMALL_CNN = """\
model small_cnn
input x[N, 1, 4, 4]
input y[N] : i32
c1 = relu(conv2d(x, filters=1, size=3, pad="same"))
s2 = maxpool(c1, 2)
c3 = relu(conv2d(s2, filters=2, size=1))
f = dense(flatten(c3), 3)
loss cross_entropy(f, y)
"""


def test_cnn_formulas_equal_reference_gradients():
    assert_formulas_match_reference(parse(SMALL_CNN, "small_cnn.nn"), batch=1)


def test_flatten_reads_have_no_modulo_that_always_holds():
    """flatten's index map is a chain of floor divisions and remainders; a remainder
    of a value already inside its range (floor(i/4) < 2 for i < 8; 4*i1 + 2*i2 + i3 < 8)
    is that value, and printing Mod(..., 2) around it only hides the textbook
    c3[n, floor(i/4), Mod(floor(i/2), 2), Mod(i, 2)]."""
    derivation = derive(parse(SMALL_CNN, "small_cnn.nn"))
    assert render(derivation.gradients["f.W"].expr) == \
        "Sum(c3[n, floor(i/4), Mod(floor(i/2), 2), Mod(i, 2)]*δf[n, j], (n, 0, N - 1))"
    deltas = {f.name: render(f.expr) for f in derivation.deltas}
    assert deltas["c3"] == "Sum(f.W[4*i1 + 2*i2 + i3, j]*δf[i0, j], (j, 0, 2))"
