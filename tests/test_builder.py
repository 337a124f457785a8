"""The Python builder makes the same models as the text."""
import linecache
import sys

import numpy as np
import pytest

import compiler
from compiler import SymnetError, load, parse, reference
from compiler.builder import Builder, F
from compiler.index_ir import format_comp


def same_model(built, parsed):
    assert list(built.tensors) == list(parsed.tensors)
    for name, info in parsed.tensors.items():
        assert built.tensors[name].shape == info.shape and built.tensors[name].kind == info.kind
    for name, value in parsed.params.items():
        assert np.array_equal(built.params[name], value)
    assert [format_comp(c) for c in built.forward] == [format_comp(c) for c in parsed.forward]
    assert sorted(built.graph.edges) == sorted(parsed.graph.edges)
    assert built.train == parsed.train


def test_mlp_built_in_python_equals_mlp_nn():
    b = Builder("mlp")
    x = b.input("x", ["N", 784])
    y = b.input("y", ["N"], dtype="i32")
    h1 = b.let("h1", F.relu(F.dense(x, 128)))
    h2 = b.let("h2", F.relu(F.dense(h1, 64)))
    logits = b.output("logits", F.dense(h2, 10))
    b.loss(F.cross_entropy(logits, y))
    b.train("sgd", lr=0.1, batch=64, epochs=3)
    same_model(b.build(), load("examples/mlp.nn"))


def test_custom_fn_and_op_built_in_python_equal_custom_nn():
    b = Builder("custom")
    x = b.input("x", ["N", 4])
    W = b.param("W", [4, 3], init="glorot")
    b.fn("swish", ["z"], lambda z: z * F.sigmoid(z))
    b.op("sqdense", ["A", "B"], ["n", "j"],
         lambda A, B, n, j: F.sum_over("i", A[n, "i"] * B["i", j] ** 2))
    h = b.output("h", F.swish(F.sqdense(x, W)))
    b.loss(F.mean(h))
    built, parsed = b.build(), load("examples/custom.nn")
    same_model(built, parsed)
    inputs = reference.random_inputs(parsed, batch=3)
    assert reference.value_and_grad(built, inputs)[0] == reference.value_and_grad(parsed, inputs)[0]


def test_linreg_and_lenet_built_in_python():
    b = Builder("linreg")
    x, y = b.input("x", ["N"]), b.input("y", ["N"])
    a, c = b.param("a", value=0.4), b.param("b", value=0.1)
    yhat = b.let("yhat", a * x + c)
    b.loss(F.mean((y - yhat) ** 2))
    b.train("sgd", lr=0.5, batch="N", epochs=100)       # the text's batch=N: full batch
    linreg = b.build()
    same_model(linreg, load("examples/linreg.nn"))
    assert linreg.train["batch"] == "full"
    loss, grads = reference.value_and_grad(linreg, {"x": np.array([0.15]), "y": np.array([0.3])})
    assert loss == pytest.approx(0.0196) and grads["a"] == pytest.approx(-0.042)

    b = Builder("lenet5")
    x = b.input("x", ["N", 1, 28, 28])
    y = b.input("y", ["N"], dtype="i32")
    c1 = b.let("c1", F.relu(F.conv2d(x, filters=6, size=5, pad="same")))
    s2 = b.let("s2", F.maxpool(c1, 2))
    c3 = b.let("c3", F.relu(F.conv2d(s2, filters=16, size=5)))
    s4 = b.let("s4", F.maxpool(c3, 2))
    f5 = b.let("f5", F.relu(F.dense(F.flatten(s4), 120)))
    f6 = b.let("f6", F.relu(F.dense(f5, 84)))
    logits = b.output("logits", F.dense(f6, 10))
    b.loss(F.cross_entropy(logits, y))
    b.train("adam", lr=0.001, batch=64, epochs=5)
    same_model(b.build(), load("examples/lenet5.nn"))


def test_builder_errors_point_at_the_python_line():
    b = Builder("bad")
    x = b.input("x", ["N", 3])
    b.let("h", F.dense(F.conv2d(x, filters=2, size=2), 4))   # the line of the mistake
    with pytest.raises(SymnetError) as err:
        b.build()
    assert err.value.loc.filename == __file__
    assert "conv2d expects [N, C, H, W]" in err.value.message
    assert "F.dense(F.conv2d" in err.value.format()



def test_a_comparison_of_tensors_is_refused_for_what_it_is():
    """`x == y` on two tensors is Python comparing objects (False): it must not become the
    model's name `false` ("unknown name 'false'")."""
    b = Builder("cmp")
    x, y = b.input("x", ["N", 2]), b.input("y", ["N", 2])
    for make in (lambda: b.let("h", x == y), lambda: b.output("o", x != y),
                 lambda: b.loss(np.bool_(True))):
        with pytest.raises(SymnetError, match="is not a model expression: comparisons") as err:
            make()
        assert err.value.loc.filename == __file__


def test_a_layers_parameter_is_read_by_name_as_in_the_text():
    text = parse("input x[N, 3]\ninput y[N] : i32\nh = dense(x, 4)\n"
                 "loss cross_entropy(h, y) + 0.001 * sum(h.W ^ 2)\n", "decay.nn")
    b = Builder("decay")
    x, y = b.input("x", ["N", 3]), b.input("y", ["N"], "i32")
    h = b.let("h", F.dense(x, 4))
    b.loss(F.cross_entropy(h, y) + 0.001 * F.sum(b.tensor("h.W") ** 2))
    built = b.build()
    inputs = reference.random_inputs(text, batch=5, seed=1)
    assert reference.value_and_grad(built, inputs)[0] == reference.value_and_grad(text, inputs)[0]
    with pytest.raises(SymnetError, match="'h.W!' is not a tensor name"):
        b.tensor("h.W!")

def test_builder_errors_put_the_caret_under_the_call():
    b = Builder("bad")
    x = b.input("x", ["N", 3])
    b.let("h", F.rleu(x)); number = sys._getframe().f_lineno
    with pytest.raises(SymnetError) as err:
        b.build()
    line = linecache.getline(__file__, number).rstrip("\n")
    assert (err.value.loc.line, err.value.loc.line_text) == (number, line)
    # Python 3.11 says where in the line the call is; before, the statement's start.
    where = "F.rleu" if sys.version_info >= (3, 11) else "b.let"
    assert err.value.loc.col == line.index(where) + 1


@pytest.mark.parametrize("statement, message", [
    (lambda b, x: b.let("h 1", x), "'h 1' is not a name"),
    (lambda b, x: b.output("1h", x), "'1h' is not a name"),
    (lambda b, x: b.let("", x), "'' is not a name"),
    (lambda b, x: b.let("input", x), "cannot assign to keyword 'input'"),
    (lambda b, x: b.fn("my fn", ["z"], lambda z: z), "'my fn' is not a name"),
    (lambda b, x: b.input("t", ["N"], dtype="int32"),
     "unknown element type 'int32' (expected f32 or i32)"),
    (lambda b, x: b.input("t", ["N", 2.5]),
     "expected a dimension (integer or name), found 2.5"),
    (lambda b, x: b.input("t", "NB"), "dims must be a list of dimensions, got 'NB'"),
    (lambda b, x: b.param("W", [2], value=[1, 2], init="zeros"),
     "param W takes a value or an initializer, not both"),
])
def test_builder_refuses_at_the_call_what_the_grammar_refuses(statement, message):
    """The parser's grammar allows only names, f32/i32 and integer or named dimensions;
    the builder skipped those checks (an input of dtype "int32" became f32)."""
    b = Builder("bad")
    x = b.input("x", ["N", 3])
    with pytest.raises(SymnetError) as err:
        statement(b, x)
    assert err.value.message.startswith(message)
    assert err.value.loc.filename == __file__


def test_numpy_values_and_sizes_in_lists_build_as_in_the_text():
    b = Builder("m")
    x = b.input("x", ["N", np.int64(4)])
    k = b.const("k", [2, 2], np.eye(2))
    w = b.param("w", [4], value=np.arange(4.0))
    h = b.let("h", F.dense(x * w * np.float32(0.5), np.int64(4)))
    b.output("r", F.reshape(h, ["N", 2, 2]) * k)
    parsed = parse("model m\ninput x[N, 4]\nconst k[2, 2] = [[1, 0], [0, 1]]\n"
                   "param w[4] = [0, 1, 2, 3]\nh = dense(x * w * 0.5, 4)\n"
                   "output r = reshape(h, [N, 2, 2]) * k\n")
    same_model(b.build(), parsed)


def test_tensors_of_another_builder_are_refused_where_they_are_used():
    """Before, the graph found only an unknown name and pointed at its declaration in
    the other model's code."""
    a, b = Builder("a"), Builder("b")
    xa = a.input("xa", ["N", 3])
    x = b.input("x", ["N", 3])
    with pytest.raises(SymnetError) as err:
        number = sys._getframe().f_lineno; b.let("h", xa * 2)
    assert err.value.loc.line == number
    assert err.value.message == ("this expression reads tensors of Builder('a'), not of "
                                 "Builder('b'); build each model from its own tensors")
    with pytest.raises(SymnetError) as err:
        F.mse(F.dense(xa, 1), x)
    assert err.value.message.startswith(
        "this expression mixes tensors of two Builders (Builder('a') and Builder('b'))")
    with pytest.raises(SymnetError, match="mixes tensors of two Builders"):
        xa + x


def test_a_size_is_a_value():
    """`sum(e) / N` of the text, in Python: the loss is the batch mean of x @ w."""
    b = Builder("mean")
    x = b.input("x", ["N", 3])
    w = b.param("w", [3], value=[1.0, -2.0, 0.5])
    b.loss(F.sum(x @ w) / b.size("N"))
    program = compiler.compile(b.build(), dtype="f64", cache=False)
    data = np.arange(12.0).reshape(4, 3)
    loss, grads = program.value_and_grad({"x": data})
    assert loss == pytest.approx(np.mean(data @ [1.0, -2.0, 0.5]))
    np.testing.assert_allclose(grads["w"], data.mean(axis=0))
    with pytest.raises(SymnetError, match="'N 1' is not a size"):
        b.size("N 1")


def test_an_array_in_arithmetic_asks_for_a_named_constant():
    """NumPy used to loop `np.ones(4) * x` over its elements, and the model then failed
    on a list literal; scalars (NumPy's included) stay numbers."""
    b = Builder("arrays")
    x = b.input("x", ["N", 4])
    for make in (lambda: np.ones(4) * x, lambda: x + [1, 2, 3, 4], lambda: x @ (1, 2, 3, 4)):
        with pytest.raises(SymnetError, match=r"must be a named constant: b\.const\(name, dims"):
            make()
    with pytest.raises(SymnetError, match=r"error: True is not a number here; write 1 or 0"):
        x * True            # it was "unknown name 'true'" at build time
    scale = b.const("scale", [4], [1.0, 2.0, 3.0, 4.0])
    b.output("y", x * scale * np.float32(0.5) + np.array(1.0))
    program = compiler.compile(b.build(), dtype="f64", cache=False)
    data = np.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(program.forward({"x": data})["y"],
                               data * [1.0, 2.0, 3.0, 4.0] * 0.5 + 1.0)


def test_abs_and_dot_T_are_the_texts_abs_and_transpose():
    """Python's abs(x) and NumPy's x.T build the text's abs(x) and transpose(x)."""
    b = Builder("t")
    x = b.input("x", ["N", 3])
    W = b.param("W", [4, 3], init="glorot")
    y = b.output("y", abs(x @ W.T))
    b.loss(F.mean(y))
    built = b.build()
    same_model(built, parse("model t\ninput x[N, 3]\nparam W[4, 3] ~ glorot\n"
                            "output y = abs(x @ transpose(W))\nloss mean(y)\n"))
    program = compiler.compile(built, dtype="f64", cache=False)
    data = np.array([[1.0, -2.0, 0.5], [-3.0, 0.25, 2.0]])
    z = data @ built.params["W"].T
    np.testing.assert_allclose(program.forward({"x": data})["y"], np.abs(z))
    loss, grads = program.value_and_grad({"x": data})
    assert loss == pytest.approx(np.abs(z).mean())
    np.testing.assert_allclose(grads["W"], np.sign(z).T @ data / z.size)
