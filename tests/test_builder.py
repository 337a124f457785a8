"""The Python builder makes the same models as the text."""
import numpy as np
import pytest

from compiler import SymnetError, load, reference
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
    loss, grads = reference.value_and_grad(b.build(), {"x": np.array([0.15]), "y": np.array([0.3])})
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
