"""Tests for what users see: the graph drawing (compiler/drawing.py), the chain rule
(compiler/chain.py), the PNG pictures (runtime/plot.py) and the graph and show verbs."""
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sympy

from compiler import drawing, reference
from compiler.autodiff import differentiate
from compiler.chain import Factor, chain_formulas, render_chains
from compiler.errors import SymnetError
from compiler.native import model_hash
from compiler.pipeline import load, parse
from runtime import checkpoint, plot
from runtime.data import read_png, save_png
from symnet import cli, present_verbs
from test_printing import SHIFTED

N = sympy.Symbol("N", integer=True, positive=True)
n, i, j = sympy.symbols("n i j", integer=True)

TWO_LAYER = """\
model twolayer
input x[N, 2]
input y[N, 1]
h = sigmoid(dense(x, 3))
output yhat = sigmoid(dense(h, 1))
loss mse(yhat, y)
"""

EDGES = """\
model edges
input img[N, 1, 6, 6]
const K[3, 3] = [[1, 0, -1], [1, 0, -1], [1, 0, -1]]
output edges = conv2d(img, K)
"""


def read(tensor, *index):
    return sympy.IndexedBase(tensor)[index]


def same(a, b):
    return sympy.simplify(a - b) == 0


def png(path):
    """The decoded pixels of a PNG file, checked to be a picture (not one colour)."""
    pixels = read_png(path)
    assert pixels.var() > 0, f"{path} is blank"
    return pixels


def color(rgb):
    """A [0, 1] colour as the 8-bit pixel save_png writes."""
    return np.round(np.asarray(rgb) * 255).astype(np.uint8)


# ---- graph --------------------------------------------------------------------------
def dot_nodes(text):
    return dict(re.findall(r'^\s*"([^"]+)" \[label="([^"]*)"', text, re.M))


def dot_edges(text):
    return set(re.findall(r'^\s*"([^"]+)" -> "([^"]+)"', text, re.M))


def test_dot_has_a_labelled_node_per_tensor_and_the_graph_edges():
    model = load("examples/lenet5.nn")
    text = drawing.to_dot(model)
    nodes = dot_nodes(text)
    tensors = [t for t, info in model.tensors.items() if info.kind != "aux"]
    assert sorted(nodes) == sorted(tensors)
    assert nodes["c1"] == r"c1\nrelu\n[N, 6, 28, 28]"
    assert nodes["c1.W"] == r"c1.W\n[6, 1, 5, 5]"
    assert nodes["y"] == r"y\n[N] : i32"
    assert dot_edges(text) == {(a, b) for a, b in model.graph.edges() if a in nodes and b in nodes}


def test_dot_styles_parameters_inputs_outputs_and_loss_apart():
    text = drawing.to_dot(load("examples/mlp.nn"))
    style = {name: line for line in text.splitlines()
             for name in re.findall(r'^\s*"([^"]+)" \[', line)}
    assert drawing.STYLES["param"] in style["h1.W"]
    assert drawing.STYLES["input"] in style["x"]
    assert drawing.STYLES["output"] in style["logits"]
    assert drawing.STYLES["loss"] in style["loss"]
    assert drawing.STYLES["value"] in style["h1"]


def test_backward_adds_gradient_nodes_with_edges_from_what_they_read():
    model = load("examples/linreg.nn")
    text = drawing.to_dot(model, backward=True)
    grads = {name for name in dot_nodes(text) if name.startswith("grad:")}
    assert grads == set(differentiate(model).tensors)
    edges = dot_edges(text)
    assert {("x", "grad:a"), ("grad:yhat", "grad:a"), ("grad:yhat", "grad:b"),
            ("yhat", "grad:yhat"), ("grad:loss", "grad:loss.pow")} <= edges
    assert ("yhat", "loss.pow") in edges               # the forward graph is still there


def test_backward_of_a_model_without_loss_is_an_error():
    with pytest.raises(SymnetError, match="no loss statement"):
        drawing.to_dot(parse(EDGES), backward=True)


def test_quote_escapes_dot_specials():
    assert drawing.quote('a"b\\c\nd') == r'"a\"b\\c\nd"'


def test_graph_verb_prints_dot_or_writes_a_file(tmp_path, capsys):
    assert cli.main(["graph", "examples/linreg.nn"]) == 0
    printed = capsys.readouterr().out
    assert printed == drawing.to_dot(load("examples/linreg.nn"))
    out = tmp_path / "g.dot"
    assert cli.main(["graph", "examples/linreg.nn", "--backward", "-o", str(out)]) == 0
    assert out.read_text() == drawing.to_dot(load("examples/linreg.nn"), backward=True)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_graph_verb_renders_svg_and_png_with_graphviz(tmp_path, fmt):
    out = tmp_path / f"g.{fmt}"
    model = "examples/lenet5.nn" if fmt == "svg" else "examples/linreg.nn"
    assert cli.main(["graph", model, "--backward", "-o", str(out)]) == 0
    if fmt == "svg":
        svg = out.read_text()
        assert svg.lstrip().startswith("<?xml") and "<title>c1.W</title>" in svg
        assert "<title>grad:c1.W</title>" in svg
    else:
        assert png(out).shape[2] in (3, 4)


def test_svg_without_graphviz_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
    assert cli.main(["graph", "examples/linreg.nn", "-o", str(tmp_path / "g.svg")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: writing SVG needs Graphviz's `dot` program")
    assert err.count("\n") == 1 and not (tmp_path / "g.svg").exists()
    assert cli.main(["graph", "examples/linreg.nn", "-o", str(tmp_path / "g.dot")]) == 0


def test_graph_verb_refuses_unknown_output_formats(tmp_path, capsys):
    assert cli.main(["graph", "examples/linreg.nn", "-o", str(tmp_path / "g.pdf")]) == 1
    assert "must end in .dot, .svg or .png" in capsys.readouterr().err


def test_graph_verb_refuses_a_folder_as_output(tmp_path, capsys):
    assert cli.main(["graph", "examples/linreg.nn", "-o", str(tmp_path)]) == 1
    assert capsys.readouterr().err == \
        f"error: cannot write '{tmp_path}': it is a folder; -o needs a file name\n"


# ---- chain rule ---------------------------------------------------------------------
def evaluate(expr, env, indices, batch):
    """A factor's value at integer indices, reading tensors from the reference env."""
    expr = expr.xreplace({sympy.Symbol(k, integer=True): v for k, v in indices.items()})
    expr = expr.xreplace({N: batch})
    expr = expr.xreplace({r: sympy.Float(env[str(r.base)][tuple(int(k) for k in r.indices)])
                          for r in expr.atoms(sympy.Indexed)})
    return float(expr.xreplace({s: sympy.Float(float(env[s.name])) for s in expr.free_symbols
                                if s.name in env}))


def env_of(model, batch=4, seed=1):
    inputs = reference.random_inputs(model, batch=batch, seed=seed)
    rng = np.random.default_rng(seed)
    params = {p: v + rng.normal(0, 0.3, np.shape(v)) for p, v in model.params.items()}
    env = reference.run_forward(model, inputs, params)
    _, grads = reference.value_and_grad(model, inputs, params)
    return env, grads


def test_linreg_chain_is_the_loss_derivative_times_the_input():
    model = load("examples/linreg.nn")
    chains = dict(chain_formulas(model))
    assert list(chains) == ["a", "b"]
    head, local = chains["a"]
    assert (head.top, head.bottom, local.top, local.bottom) == ("J", "yhat", "yhat", "a")
    assert same(head.expr, 2 * (read("yhat", n) - read("y", n)) / N)
    assert same(local.expr, read("x", n))
    assert chains["b"][1].expr == 1
    env, grads = env_of(model)
    for param, (head, local) in chains.items():
        total = sum(evaluate(head.expr, env, {"n": k}, 4) * evaluate(local.expr, env, {"n": k}, 4)
                    for k in range(4))
        assert total == pytest.approx(float(grads[param]), rel=1e-12)


def test_two_layer_sigmoid_chain_has_one_local_derivative_per_step():
    model = parse(TWO_LAYER)
    factors = dict(chain_formulas(model))["h.W"]
    assert [f.label() for f in factors] == [
        "dJ/dyhat", "dyhat/dyhat.dense", "dyhat.dense/dh", "dh/dh.dense", "dh.dense/dh.W"]
    head, sig2, weight2, sig1, inputs = (f.expr for f in factors)
    yhat, h = read("yhat", n, i), read("h", n, i)
    assert same(head, 2 * (yhat - read("y", n, i)) / N)
    assert same(sig2, yhat * (1 - yhat))                 # sigmoid' as s (1 - s)
    assert same(weight2, read("yhat.W", i, j))
    assert same(sig1, h * (1 - h))
    assert same(inputs, read("x", n, i))


def test_two_layer_chain_products_sum_to_the_reference_gradients():
    model = parse(TWO_LAYER)
    chains = dict(chain_formulas(model))
    env, grads = env_of(model)

    def value(factor, **indices):
        return evaluate(factor.expr, env, indices, 4)

    head, sig2, dense2 = chains["yhat.W"]
    for r in range(3):            # dJ/dyhat.W[r, 0] = sum_n dJ/dyhat * yhat' * h[n, r]
        total = sum(value(head, n=k, i=0) * value(sig2, n=k, i=0) * value(dense2, n=k, i=r)
                    for k in range(4))
        assert total == pytest.approx(grads["yhat.W"][r, 0], rel=1e-10)
    head, sig2, weight2, sig1, dense1 = chains["h.W"]
    for r in range(2):
        for c in range(3):        # ... * yhat.W[c, 0] * h'[n, c] * x[n, r]
            total = sum(value(head, n=k, i=0) * value(sig2, n=k, i=0) *
                        value(weight2, i=c, j=0) * value(sig1, n=k, i=c) *
                        value(dense1, n=k, i=r) for k in range(4))
            assert total == pytest.approx(grads["h.W"][r, c], rel=1e-10)


def test_cross_entropy_collapses_into_the_softmax_delta():
    factors = dict(chain_formulas(load("examples/mlp.nn"), wrt="h2.W"))["h2.W"]
    assert [f.label() for f in factors] == [
        "dJ/dlogits", "dlogits/dlogits.dense", "dlogits.dense/dh2", "dh2/dh2.dense",
        "dh2.dense/dh2.W"]
    head = factors[0].expr
    assert head.has(sympy.exp) and "eq(y[n], k)" in str(head)
    assert "loss." not in str(head)                    # the loss internals are inlined
    assert str(factors[3].expr) == "step(h2[n, i])"       # relu' read from its output




def test_a_step_reading_one_tensor_at_two_positions_joins_the_delta():
    """h[n, i] = A[n, i + 1] - A[n, i]: no elementwise dh/dA exists (summing the two
    reads' derivatives gave 0); the chain starts below it, at dJ/dA."""
    model = parse(SHIFTED)
    factors = dict(chain_formulas(model))["w"]
    assert [f.label() for f in factors] == ["dJ/dh.mul", "dh.mul/dw"]
    env, grads = env_of(model)
    env["δh"] = 2 * (env["h"] - env["y"]) / (4 * 5)       # the delta of the mean of squares
    assert render_chains(model).endswith(                   # ... defined where it is read
        "    where δT = dJ/dT for the named tensors T:\n      δh[n, i] = 2*(h[n, i] - y[n, i])/(5*N)")
    head, local = factors
    for r in range(5):
        total = sum(evaluate(head.expr, env, {"n": k, "i": r}, 4) *
                    evaluate(local.expr, env, {"n": k, "i": r}, 4) for k in range(4))
        assert total == pytest.approx(grads["w"][r], rel=1e-10)


def test_chain_renders_as_text_unicode_and_latex():
    model = parse(TWO_LAYER)
    text = render_chains(model, wrt="h.W")
    assert "  dJ/dh.W = dJ/dyhat * dyhat/dyhat.dense * dyhat.dense/dh * dh/dh.dense * " \
           "dh.dense/dh.W" in text
    assert "    dh.dense/dh.W = x[n, i]" in text
    unicode = render_chains(model, wrt="h.W", fmt="unicode")
    assert "∂J/∂h.W = ∂J/∂yhat · ∂yhat/∂yhat.dense · ∂yhat.dense/∂h" in unicode
    latex = render_chains(model, wrt="h.W", fmt="latex")
    assert latex.startswith("% the chain rule")
    assert r"\frac{\partial J}{\partial W_{h}} = \frac{\partial J}{\partial \hat{y}} \cdot" in latex
    assert r"\frac{\partial \mathrm{dense}_{h}}{\partial W_{h}} = {x}_{n,i}" in latex


PADDED = """\
model padded
input x[N, 1, 6, 6]
h = relu(conv2d(x, filters=2, size=3, pad="same"))
p = maxpool(h, 2)
loss mean(p)
"""


def test_chain_notes_reads_outside_a_tensor():
    """A padded convolution's local derivative dh.conv2d/dh.W = x[n, c, ky + y - 1, ...]
    reads x past its border, where the language reads 0; as in `symnet grad`, a last
    line says where, in each format (LaTeX: a comment). Unpadded chains have none."""
    note = ("(reads outside a tensor are 0: x[n, c, ky + y - 1, i + kx - 1] where "
            "ky + y - 1 < 0 or ky + y - 1 >= 6 or i + kx - 1 < 0 or i + kx - 1 >= 6)")
    model = parse(PADDED)
    text = render_chains(model, wrt="h.W").split("\n")
    assert text[-2] == "    dh.conv2d/dh.W = x[n, c, ky + y - 1, i + kx - 1]"
    assert text[-1] == "  " + note
    assert render_chains(model, wrt="h.W", fmt="latex").split("\n")[-1] == "%   " + note
    assert render_chains(model, wrt="h.W", fmt="unicode").split("\n")[-1] == \
        "  " + note.replace(">=", "≥")
    assert "reads outside" not in render_chains(parse(PADDED.replace('"same"', '"valid"')))


def test_factor_labels():
    factor = Factor("h", "h.dense", sympy.S.One)
    assert factor.label() == "dh/dh.dense"
    assert factor.label("unicode") == "∂h/∂h.dense"
    assert factor.render("text") == "dh/dh.dense = 1"


def test_chain_errors_name_the_problem():
    with pytest.raises(SymnetError, match="'c' is not a parameter of linreg"):
        chain_formulas(load("examples/linreg.nn"), wrt="c")
    with pytest.raises(SymnetError, match="no loss statement"):
        chain_formulas(parse(EDGES))



UNUSED_LAYER = ("input x[N, 2]\ninput t[N, 1]\ninput y[N] : i32\np = sigmoid(dense(x, 1))\n"
                "logits = dense(x, 3)\nl2 = cross_entropy(logits, y)\n"
                "loss binary_cross_entropy(p, t)\n")


def test_a_parameter_the_loss_ignores_has_a_zero_chain_and_the_others_are_printed(tmp_path, capsys):
    """docs/language.md's Losses example: logits feeds l2, which the loss does not use."""
    model = parse(UNUSED_LAYER, "unused.nn")
    chains = dict(chain_formulas(model))
    assert chains["logits.W"] == [] and chains["logits.b"] == []
    assert [f.bottom for f in chains["p.W"]][-1] == "p.W"
    for fmt, zero in (("text", "dJ/dlogits.W = 0"), ("unicode", "∂J/∂logits.W = 0"),
                      ("latex", r"\frac{\partial J}{\partial W_{\mathrm{logits}}} = 0")):
        text = render_chains(model, fmt=fmt)
        assert zero in text and "does not depend on logits.W" in text, fmt
        assert ("W_{p}" if fmt == "latex" else "p.W") in text     # p's chain is there too
    path = tmp_path / "unused.nn"
    path.write_text(UNUSED_LAYER)
    assert cli.main(["grad", str(path), "--chain"]) == 0
    assert "dJ/dlogits.b = 0  (the loss does not depend on logits.b)" in capsys.readouterr().out


def test_a_parameter_read_by_the_loss_itself_has_no_product_to_show():
    """Weight decay reads h.W in the loss statement: its chain is the one factor dJ/dh.W,
    printed once, not as `dJ/dh.W = dJ/dh.W`."""
    model = parse("input x[N, 3]\nh = dense(x, 4)\nloss mean(h) + 0.5 * sum(h.W ^ 2)\n", "wd.nn")
    assert [(f.top, f.bottom) for f in dict(chain_formulas(model))["h.W"]] == [("J", "h.W")]
    lines = render_chains(model).split("\n")
    assert [line for line in lines if "dJ/dh.W" in line] == [
        "  dJ/dh.W = 1.0*h.W[i, j] + Sum(x[n, i]*δh[n, j], (n, 0, N - 1))"]

# ---- plots ----------------------------------------------------------------------------
def history(epochs=5, accuracy=True):
    return [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.2 / e + 0.1,
             "train_accuracy": 0.5 + 0.08 * e if accuracy else None,
             "test_accuracy": 0.45 + 0.08 * e if accuracy else None}
            for e in range(1, epochs + 1)]


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make `import matplotlib` fail, so the built-in rasterizer draws."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_history_plot_draws_falling_loss_and_both_splits(tmp_path, no_matplotlib):
    path = tmp_path / "h.png"
    plot.plot_history(history(), path)
    pixels = png(path)
    assert pixels.shape == (300, 800, 3)                  # loss and accuracy panels
    train = np.all(pixels[:, :400] == color(plot.TRAIN_COLOR), axis=2)
    test = np.all(pixels[:, :400] == color(plot.TEST_COLOR), axis=2)
    assert train.sum() > 200 and test.sum() > 200
    rows, cols = np.nonzero(train)
    left, right = rows[cols < 150].mean(), rows[(cols > 250) & (cols < 380)].mean()
    assert left < right                                   # the loss goes down the picture


def test_history_without_accuracy_has_one_panel(tmp_path, no_matplotlib):
    path = tmp_path / "h.png"
    plot.plot_history(history(3, accuracy=False), path)
    assert png(path).shape == (300, 400, 3)


def test_history_of_one_epoch_is_drawn(tmp_path, no_matplotlib):
    path = tmp_path / "h.png"
    plot.plot_history(history(1), path)
    assert np.all(png(path) == color(plot.TRAIN_COLOR), axis=2).any()


def test_empty_history_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot.plot_history([], tmp_path / "h.png")


def test_history_plot_with_matplotlib_has_the_same_size(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "h.png"
    plot.plot_history(history(), path)
    assert png(path).shape == (300, 800, 3)


def test_history_of_one_epoch_with_matplotlib_has_whole_epoch_ticks(tmp_path, monkeypatch):
    """One epoch is not 0.96, 0.98, 1.00, ... epochs."""
    pytest.importorskip("matplotlib")
    figures, pixels = [], plot._figure_pixels
    monkeypatch.setattr(plot, "_figure_pixels", lambda figure: figures.append(figure) or pixels(figure))
    plot.plot_history(history(1), tmp_path / "h.png")
    for axes in figures[0].axes:
        low, high = axes.get_xlim()
        assert [t for t in axes.get_xticks() if low <= t <= high] == [1.0]


def test_nice_ticks_are_round_and_cover_the_range():
    assert plot.nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plot.nice_ticks(0.6, 5.4, integer=True) == [1, 2, 3, 4, 5]
    assert plot.nice_ticks(-3, 2.5) == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]


def test_feature_maps_tile_each_channel_scaled_to_its_range(tmp_path):
    ramp = np.arange(16.0).reshape(4, 4)
    path = tmp_path / "maps.png"
    plot.save_feature_maps([("layer", np.stack([ramp, np.full((4, 4), 7.0)]))], path)
    pixels = png(path)[..., 0]
    assert pixels.shape == (8 + 18 + 60 + 8, 8 + 118 + 8)   # margins, label, tiles / label
    top, left, tile = 26, 8, 56                    # margin + label row; 4 px enlarged 14x
    assert pixels[top, left] == 0 and pixels[top + tile - 1, left + tile - 1] == 255
    assert pixels[top, left + tile - 1] == round(3 / 15 * 255)
    assert pixels[top + 20, left + tile + 4 + 20] == 128         # a constant map is gray


def test_feature_maps_refuse_vectors(tmp_path):
    with pytest.raises(ValueError, match=r"expected \[channels, height, width\]"):
        plot.save_feature_maps([("v", np.ones(5))], tmp_path / "m.png")


def test_decision_boundary_colours_each_side_by_class(tmp_path):
    points = np.array([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    path = tmp_path / "b.png"
    plot.save_decision_boundary(path, lambda xy: (xy[:, 0] > 0).astype(int), points,
                                np.array([0, 1, 0, 1]))
    pixels = png(path)
    assert pixels.shape == (480, 480, 3)
    light = [color(0.35 * np.array(c) + 0.65) for c in plot.PALETTE[:2]]
    middle = (plot.MARGIN[2] + 480 - plot.MARGIN[3]) // 2
    assert (pixels[middle, plot.MARGIN[0] + 10] == light[0]).all()
    assert (pixels[middle, 480 - plot.MARGIN[1] - 10] == light[1]).all()
    dark = np.all(pixels == color(plot.PALETTE[1]), axis=2)
    assert dark.sum() > 20                              # the class-1 points


# ---- show ---------------------------------------------------------------------------
@pytest.fixture
def shirt(tmp_path):
    from runtime.data import load_dataset
    path = tmp_path / "shirt.png"
    save_png(path, load_dataset("embedded").x_test[0, 0])
    return path


def test_conv_outputs_follow_bias_and_activation():
    assert present_verbs.conv_outputs(load("examples/lenet5.nn")) == ["c1", "c3"]
    assert present_verbs.conv_outputs(parse(EDGES)) == ["edges"]


def test_feature_maps_of_a_vertical_edge_kernel():
    image = np.zeros((6, 6))
    image[:, :3] = 1.0                                  # bright left half
    maps = present_verbs.feature_maps(parse(EDGES), {}, image)
    assert [name for name, _ in maps] == ["img", "edges"]
    expected = np.tile([0.0, 3.0, 3.0, 0.0], (4, 1))    # 1+1+1 - (1+1+1) where it crosses
    np.testing.assert_allclose(maps[1][1][0], expected)


def test_show_draws_the_conv_layers_of_lenet(tmp_path, shirt, capsys):
    out = tmp_path / "maps.png"
    assert cli.main(["show", "examples/lenet5.nn", "--input", str(shirt), "-o", str(out)]) == 0
    assert "x [1, 28, 28], c1 [6, 28, 28], c3 [16, 10, 10]" in capsys.readouterr().out
    # rows: x (28 px x2), c1 (6 tiles), c3 (16 tiles of 10 px x6, two rows of 8)
    assert png(out).shape == (8 + (18 + 60) * 2 + 18 + 2 * 64 + 8, 8 + 8 * 64 - 4 + 8, 3)


def test_show_named_tensors_and_their_errors(tmp_path, shirt, capsys):
    out = str(tmp_path / "maps.png")
    args = ["show", "examples/lenet5.nn", "--input", str(shirt), "-o", out, "--tensors"]
    assert cli.main(args + ["c1,s2"]) == 0
    assert "c1 [6, 28, 28], s2 [6, 14, 14]" in capsys.readouterr().out
    assert cli.main(args + ["c1, c1,s2"]) == 0          # each tensor drawn once
    assert "x [1, 28, 28], c1 [6, 28, 28], s2 [6, 14, 14]\n" in capsys.readouterr().out
    assert cli.main(args + ["x,c1"]) == 0               # the input, drawn first anyway
    assert "x [1, 28, 28], c1 [6, 28, 28]\n" in capsys.readouterr().out
    assert cli.main(args + ["x"]) == 0
    assert "x [1, 28, 28]\n" in capsys.readouterr().out
    assert cli.main(args + ["c9"]) == 1
    assert "error: 'c9' is not a tensor of lenet5" in capsys.readouterr().err
    assert cli.main(args + ["f5"]) == 1
    assert "feature maps need a tensor shaped [N, C, H, W]" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["-o", "--boundary"])
def test_show_writes_png_only_under_a_png_name(tmp_path, shirt, capsys, option):
    """Not PNG data under a .jpg name: the same rule as graph's and train --plot's."""
    out = tmp_path / "m.jpg"
    mode = ["--input", str(shirt)] if option == "-o" else ["--data", "docs/tutorial/points.csv"]
    assert cli.main(["show", "examples/perceptron.nn", *mode, option, str(out)]) == 1
    assert capsys.readouterr().err == (f"error: cannot write '{out}': {option} draws a PNG "
                                       "image; the name must end in .png\n")
    assert not out.exists()


def test_show_with_trained_weights_and_a_wrong_checkpoint(tmp_path, shirt, capsys):
    model = load("examples/lenet5.nn")
    ckpt = tmp_path / "lenet.npz"
    params = {k: v * 2 for k, v in model.params.items()}
    checkpoint.save(ckpt, params, model_name="lenet5", model_hash=model_hash(model))
    image = np.asarray(read_png(shirt)[..., 0], dtype=np.float64) / 255
    trained = present_verbs.feature_maps(model, params, image)[1][1]
    assert not np.allclose(trained, present_verbs.feature_maps(model, model.params, image)[1][1])
    out = str(tmp_path / "m.png")
    assert cli.main(["show", "examples/lenet5.nn", "--weights", str(ckpt), "--input",
                     str(shirt), "-o", out]) == 0
    other = tmp_path / "linreg.npz"
    checkpoint.save(other, {"a": np.array(1.0), "b": np.array(0.0)}, model_name="linreg",
                    model_hash="x")
    capsys.readouterr()
    assert cli.main(["show", "examples/lenet5.nn", "--weights", str(other), "--input",
                     str(shirt), "-o", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_show_boundary_of_a_trained_perceptron(tmp_path, capsys):
    model = load("examples/perceptron.nn")
    ckpt = tmp_path / "p.npz"
    checkpoint.save(ckpt, {"w": np.array([1.0, 1.0]), "b": np.array(0.0)},
                    model_name="perceptron", model_hash=model_hash(model))
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (60, 2))
    labels = (points.sum(axis=1) > 0).astype(int)
    csv = tmp_path / "points.csv"
    csv.write_text("".join(f"{x:.4f},{y:.4f},{c}\n" for (x, y), c in zip(points, labels)))
    out = tmp_path / "b.png"
    assert cli.main(["show", "examples/perceptron.nn", "--weights", str(ckpt), "--boundary",
                     str(out), "--data", str(csv), "-q"]) == 0
    assert "60 points" in capsys.readouterr().out
    pixels = png(out)
    light = [color(0.35 * np.array(c) + 0.65) for c in plot.PALETTE[:2]]
    bottom_left = pixels[480 - plot.MARGIN[3] - 5, plot.MARGIN[0] + 5]
    top_right = pixels[plot.MARGIN[2] + 5, 480 - plot.MARGIN[1] - 5]
    assert (bottom_left == light[0]).all() and (top_right == light[1]).all()


def test_show_boundary_refuses_data_without_2_features(tmp_path, capsys):
    """One feature per row (the tutorial's study.csv) is not 2-D points two rows at a time."""
    out = tmp_path / "b.png"
    assert cli.main(["show", "examples/perceptron.nn", "--boundary", str(out),
                     "--data", "docs/tutorial/study.csv", "-q"]) == 1
    assert capsys.readouterr().err == (
        "error: --boundary needs points of 2 features (x1, x2); docs/tutorial/study.csv has "
        "1 per example (shape [48, 1])\n")
    assert not out.exists()


@pytest.mark.parametrize("value", ["inf", "1e300"])         # 1e300 is inf in float32
def test_show_boundary_refuses_points_that_are_not_finite(tmp_path, capsys, value):
    csv, out = tmp_path / "p.csv", tmp_path / "b.png"
    csv.write_text("".join(f"{k},{value if k == 8 else k},{k % 2}\n" for k in range(12)))
    assert cli.main(["show", "examples/perceptron.nn", "--boundary", str(out),
                     "--data", str(csv), "-q"]) == 1
    assert capsys.readouterr().err == f"error: {csv}: point 8 has a coordinate that is inf or nan\n"
    assert not out.exists()


def test_stage_progress_names_the_stage_and_is_silent_when_quiet():
    stream = io.StringIO()                  # not a terminal: plain lines, no redrawing
    bar = present_verbs.Stages(2, "export", quiet=False, stream=stream, interval=0)
    bar("compiling")
    bar("linking")
    assert stream.getvalue() == "export [############............] 1/2 compiling\n"
    silent = io.StringIO()
    present_verbs.Stages(2, "export", quiet=True, stream=silent, interval=0)("compiling")
    assert silent.getvalue() == ""


def test_show_needs_a_mode_and_matching_inputs(tmp_path, capsys):
    assert cli.main(["show", "examples/lenet5.nn"]) == 1
    assert "show needs either --input IMAGE -o MAPS.png" in capsys.readouterr().err
    csv = tmp_path / "p.csv"
    csv.write_text("".join(f"{k},{k},{k % 2}\n" for k in range(12)))
    assert cli.main(["show", "examples/mlp.nn", "--boundary", str(tmp_path / "b.png"),
                     "--data", str(csv)]) == 1
    assert "needs a model whose input has 2 features" in capsys.readouterr().err
    assert cli.main(["show", "examples/perceptron.nn", "--boundary", "b.png"]) == 1
    assert "--boundary needs --data CSV" in capsys.readouterr().err
    image = tmp_path / "img.npy"                # a 28 x 28 image for a two-feature model
    np.save(image, np.ones((28, 28)))
    assert cli.main(["show", "examples/perceptron.nn", "--input", str(image),
                     "-o", str(tmp_path / "m.png")]) == 1
    assert capsys.readouterr().err == (f"error: {image}: data shaped [28, 28] (784 values "
                                       "per example) does not fit model input [2] (2 values)\n")
    assert not (tmp_path / "m.png").exists()


def test_the_runtime_modules_do_not_import_sympy():
    code = "import sys, runtime.plot, runtime.export; assert 'sympy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
