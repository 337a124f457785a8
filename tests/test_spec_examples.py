"""The language spec's example programs, exactly as written there, parse, check and
compile; the spec's surface forms each work."""
import re
from pathlib import Path

import numpy as np
import pytest

from compiler import compile, parse, reference

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "language.md"
# A copy of the spec's three programs, so the test also runs where ../shared is absent.
PROGRAMS = [
    """# linear regression, the first slide of every course
model linreg
input x[N]
input y[N]
param a = 0.4
param b = 0.1
yhat = a * x + b
loss mean((y - yhat) ^ 2)
train sgd(lr=0.5, batch=N, epochs=100)
""",
    """model lenet5
input x[N, 1, 28, 28]
input y[N] : i32
c1 = relu(conv2d(x, filters=6, size=5, pad="same"))
s2 = maxpool(c1, 2)
c3 = relu(conv2d(s2, filters=16, size=5))
s4 = maxpool(c3, 2)
f5 = relu(dense(flatten(s4), 120))
f6 = relu(dense(f5, 84))
output logits = dense(f6, 10)
loss cross_entropy(logits, y)
train sgd(lr=0.05, batch=64, epochs=5)
""",
    """# a custom op and function, with derived gradients
model custom
input x[N, 4]
param W[4, 3] ~ glorot
fn swish(z) = z * sigmoid(z)
op sqdense(A, B)[n, j] = sum(i: A[n, i] * B[i, j] ^ 2)
output h = swish(sqdense(x, W))
loss mean(h)
""",
]


def spec_programs():
    if not SPEC.exists():
        return PROGRAMS
    blocks = re.findall(r"```\n(.*?)```", SPEC.read_text(), re.S)
    return [b for b in blocks if "model " in b]


def test_the_copy_matches_the_spec():
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is not here")
    assert spec_programs() == PROGRAMS


@pytest.mark.parametrize("text", PROGRAMS, ids=["linreg", "lenet5", "custom"])
def test_spec_program_compiles_and_matches_reference(text):
    model = parse(text, "spec.nn")
    program = compile(model, dtype="f64", cache=False)
    inputs = reference.random_inputs(model, batch=3, seed=0)
    loss, grads = program.value_and_grad(inputs)
    ref_loss, ref_grads = reference.value_and_grad(model, inputs)
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12)


def test_spec_train_statement_of_linreg_means_full_batch():
    model = parse(PROGRAMS[0], "spec.nn")
    assert model.train == {"optimizer": "sgd", "lr": 0.5, "batch": "full", "epochs": 100}
