"""The native boundary: runtime.program.Program given arrays that do not fit.

Program checks every array before its single native call. Whatever it is given
(wrong shapes, ranks or dtypes, bad class labels, non-contiguous or read-only memory,
NaNs, empty or changing batch sizes, wrong names), the call either converts the array
and computes what the NumPy reference computes, or raises a ProgramError whose
message names the problem. The calls that would corrupt memory if a check were
missing also run in a subprocess, which must survive them.
"""
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler import reference
from runtime.program import ProgramError

ROOT = Path(__file__).resolve().parent.parent

CLASSIFIER = """\
model classifier
input x[N, 4]
input y[N] : i32
h = tanh(dense(x, 5))
output logits = dense(h, 3)
loss cross_entropy(logits, y)
"""

IMAGES = """\
model images
input x[N, 1, 6, 6]
input y[N] : i32
c = relu(conv2d(x, filters=2, size=3))
p = maxpool(c, 2)
output logits = dense(flatten(p), 3)
loss cross_entropy(logits, y)
"""


@pytest.fixture(scope="module")
def model():
    return compiler.parse(CLASSIFIER, "classifier.nn")


@pytest.fixture(scope="module")
def program(model):
    return compiler.compile(model, dtype="f64", cache=False)


@pytest.fixture(scope="module")
def images():
    model = compiler.parse(IMAGES, "images.nn")
    return model, compiler.compile(model, dtype="f64", cache=False)


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4)), "y": rng.integers(0, 3, n).astype(np.int32)}


def assert_matches_reference(program, model, inputs, rtol=1e-12):
    """forward and value_and_grad equal the reference on the same (converted) inputs."""
    clean = {k: np.array(v, dtype=np.float64 if k == "x" else np.int64) for k, v in inputs.items()}
    expected = reference.forward(model, clean)
    for name, value in program.forward(inputs).items():
        np.testing.assert_allclose(value, expected[name], rtol=rtol, atol=1e-14)
    loss, grads = program.value_and_grad(inputs)
    expected_loss, expected_grads = reference.value_and_grad(model, clean)
    assert loss == pytest.approx(expected_loss, rel=rtol)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, expected_grads[name], rtol=1e-10, atol=1e-14)


def refused(call, *words):
    """call() raises ProgramError whose one-line message contains every word."""
    with pytest.raises(ProgramError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


# ---- shapes, ranks, names ---------------------------------------------------------------------
def test_wrong_shapes_and_ranks(program):
    good = batch(3)
    refused(lambda: program.forward({"x": np.zeros((3, 5))}), "input 'x'", "[3, 5]", "[N, 4]")
    refused(lambda: program.forward({"x": np.zeros(4)}), "input 'x'", "[4]", "[N, 4]")
    refused(lambda: program.forward({"x": np.zeros((3, 4, 1))}), "[3, 4, 1]", "[N, 4]")
    refused(lambda: program.forward({"x": 1.0}), "input 'x'", "[]")
    refused(lambda: program.forward({"x": None}), "input 'x'")
    refused(lambda: program.evaluate({"x": good["x"], "y": good["y"][:2]}),
            "input 'y' has N=2", "N=3")
    refused(lambda: program.evaluate({"x": good["x"], "y": good["y"][:, None]}),
            "input 'y'", "[3, 1]", "[N]")


def test_missing_and_unknown_inputs(program):
    good = batch(3)
    refused(lambda: program.forward({}), "missing input 'x'", "[N, 4]")
    refused(lambda: program.evaluate({"x": good["x"]}), "missing input 'y'")
    refused(lambda: program.train_step({"y": good["y"]}), "missing input 'x'")
    refused(lambda: program.forward({**good, "z": good["x"]}), "unknown input 'z'", "x, y")
    refused(lambda: program.forward([good["x"]]), "dict")
    refused(lambda: program.forward(None), "dict")


def test_labels_are_not_needed_to_predict(program, model):
    """forward reads only x; a y that would be refused by evaluate is ignored there."""
    good = batch(3)
    out = program.forward({"x": good["x"], "y": np.array([7, 8, 9])})
    np.testing.assert_allclose(out["logits"], reference.forward(model, good)["logits"],
                               rtol=1e-12)


# ---- dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.array([["a"] * 4] * 3), np.zeros((3, 4), dtype=object),
                                 np.zeros((3, 4), dtype=complex),
                                 np.zeros((3, 4), dtype="datetime64[s]")],
                         ids=["strings", "objects", "complex", "datetime"])
def test_non_numeric_features_are_refused(program, bad):
    refused(lambda: program.forward({"x": bad}), "input 'x' must be numeric", str(bad.dtype))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8, np.int64, np.uint16, bool])
def test_numeric_features_are_converted(program, model, dtype):
    good = batch(4)
    x = (good["x"] * 3).astype(dtype)
    assert_matches_reference(program, model, {"x": x, "y": good["y"]})


def test_python_lists_are_converted(program, model):
    good = batch(2)
    assert_matches_reference(program, model, {"x": good["x"].tolist(), "y": good["y"].tolist()})


def test_ragged_lists_are_refused_clearly(program):
    refused(lambda: program.forward({"x": [[1, 2, 3, 4], [1, 2]]}), "input 'x'")


# ---- class labels -----------------------------------------------------------------------------
def test_integer_valued_float_labels_are_accepted(program, model):
    good = batch(5)
    for labels in (good["y"].astype(np.float64), good["y"].astype(np.float32),
                   good["y"].astype(np.uint64), good["y"].astype(np.int8)):
        loss, _ = program.evaluate({"x": good["x"], "y": labels})
        assert loss == pytest.approx(reference.value_and_grad(model, good)[0], rel=1e-12)


@pytest.mark.parametrize("labels, words", [
    (np.array([0, 1.5, 2]), ["input 'y' must hold integers", "float64"]),
    (np.array([0, np.nan, 2]), ["must hold integers"]),
    (np.array([0, np.inf, 2]), ["must hold integers"]),
    (np.array([True, False, True]), ["must hold integers", "bool"]),
    (np.array(["0", "1", "2"]), ["must hold integers"]),
    (np.array([0, -1, 2]), ["holds class -1", "0..2"]),
    (np.array([0, 3, 2]), ["holds class 3", "0..2"]),
    (np.array([0, 2**32, 1]), ["holds class 4294967296"]),     # would wrap to 0 as int32
    (np.array([0, -2**31 - 1, 1]), ["outside 0..2"]),
    (np.array([0, 1, 2] * 10 + [7, 1, -1]), ["holds class 7", "0..2"]),   # past 16: NumPy's way
], ids=["fraction", "nan", "inf", "bool", "strings", "negative", "too_big", "wraps_int32",
        "below_int32", "many"])
def test_bad_labels_are_refused(program, labels, words):
    inputs = {"x": batch(len(labels))["x"], "y": labels}
    for entry in (program.evaluate, program.value_and_grad, program.train_step):
        refused(lambda: entry(inputs), *words)


# ---- memory layout ----------------------------------------------------------------------------
def layouts(x):
    return {
        "step_slice": np.repeat(x, 2, axis=0)[::2],
        "reversed": x[::-1].copy()[::-1],
        "fortran": np.asfortranarray(x),
        "transposed_view": np.ascontiguousarray(x.T).T,
        "column_slice": np.repeat(x, 2, axis=1)[:, ::2],
    }


@pytest.mark.parametrize("layout", sorted(layouts(np.zeros((2, 2)))))
def test_non_contiguous_inputs(program, model, layout):
    good = batch(5, seed=3)
    x = layouts(good["x"])[layout]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(x, good["x"])
    y = np.repeat(good["y"], 2)[::2]
    assert_matches_reference(program, model, {"x": x, "y": y})


def test_inputs_are_read_not_written(program, model):
    """Read-only arrays work (inputs are read in place) and no entry changes its inputs."""
    good = batch(4, seed=5)
    x, y = good["x"].copy(), good["y"].copy()
    x.flags.writeable = False
    y.flags.writeable = False
    assert_matches_reference(program, model, {"x": x, "y": y})
    writable = {"x": good["x"].copy(), "y": good["y"].copy()}
    before = program.get_params()
    try:
        program.train_step(writable)
        program.train_step({"x": x, "y": y})
    finally:
        program.set_params(before)
    np.testing.assert_array_equal(writable["x"], good["x"])
    np.testing.assert_array_equal(x, good["x"])
    np.testing.assert_array_equal(writable["y"], good["y"])


# ---- NaN and infinity -----------------------------------------------------------------------
@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_stay_in_their_example(images, fill):
    """One bad image: its logits are NaN (conv, relu, maxpool, dense), the others equal
    the reference; the loss is NaN; backward (maxpool's argmax route) does not crash."""
    model, program = images
    inputs = reference.random_inputs(model, batch=4, seed=2)
    inputs["x"][1] = fill
    logits = program.forward(inputs)["logits"]
    assert np.isnan(logits[1]).all()
    others = {k: v[[0, 2, 3]] for k, v in inputs.items()}
    np.testing.assert_allclose(logits[[0, 2, 3]], reference.forward(model, others)["logits"],
                               rtol=1e-10)
    loss, grads = program.value_and_grad(inputs)
    assert np.isnan(loss)
    assert all(not np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_nan_anywhere_in_a_pooling_window_is_its_maximum(dtype):
    """NumPy's max and argmax: a NaN wins wherever it lies in the window, and the first
    NaN is the one the gradient goes to. A NaN first in a window used to be replaced by
    the next value (only `v > max or unordered` decided)."""
    model = compiler.parse("model p\ninput x[N, 1, 4, 36]\noutput s = maxpool(x, 2)\n"
                  "loss sum(s * s)\n", "p.nn")
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 36))
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x[0, 0, dy, 2 * k + dx] = np.nan                    # one NaN at each position
    x[1, 0, 2:4, 30:32] = [[1.0, np.nan], [np.nan, 2.0]]    # two: the first one counts
    program = compiler.compile(model, dtype=dtype, cache=False)
    pooled = program.forward({"x": x})["s"]
    expected = reference.forward(model, {"x": x})["s"]
    np.testing.assert_array_equal(np.isnan(pooled), np.isnan(expected))
    assert np.isnan(pooled[0, 0, 0, :4]).all() and np.isnan(pooled[1, 0, 1, 15])
    np.testing.assert_allclose(pooled[~np.isnan(expected)], expected[~np.isnan(expected)],
                               rtol=1e-6)


def test_one_nan_feature_gives_nan_loss(program):
    inputs = batch(3)
    inputs["x"][2, 1] = np.nan
    loss, outputs = program.evaluate(inputs)
    assert np.isnan(loss)
    assert np.isnan(outputs["logits"][2]).all() and np.isfinite(outputs["logits"][:2]).all()


# ---- batch sizes ------------------------------------------------------------------------------
def test_empty_batch(program, images):
    logits = program.forward({"x": np.zeros((0, 4))})["logits"]
    assert logits.shape == (0, 3)
    assert images[1].forward({"x": np.zeros((0, 1, 6, 6))})["logits"].shape == (0, 3)
    empty = {"x": np.zeros((0, 4)), "y": np.zeros(0, np.int32)}
    for entry in (program.evaluate, program.value_and_grad, program.train_step):
        refused(lambda: entry(empty), "empty batch", "N=0")
    assert np.isfinite(program.evaluate(batch(2))[0])          # still usable afterwards


def test_changing_batch_sizes_match_the_reference(program, model):
    """New sizes after old ones, more sizes than the program keeps plans for (4), sizes
    on both sides of the threading threshold, and a size seen before coming back."""
    for n in (5, 1, 16, 33, 2, 7, 5, 1):
        assert_matches_reference(program, model, batch(n, seed=n))


# ---- parameters --------------------------------------------------------------------------------
def test_set_params_refuses_wrong_names_and_shapes(program):
    before = program.get_params()
    refused(lambda: program.set_params({"nope": 1.0}), "unknown parameter 'nope'", "h.W")
    refused(lambda: program.set_params({"h.W": np.zeros((5, 4))}), "parameter 'h.W'",
            "[5, 4]", "[4, 5]")
    refused(lambda: program.set_params({"h.b": np.zeros((1, 5))}), "[1, 5]", "[5]")
    for name, value in program.get_params().items():
        np.testing.assert_array_equal(value, before[name])


def test_set_params_round_trip_and_effect(program, model):
    params = {k: v + 0.25 for k, v in program.get_params().items()}
    program.set_params({k: v.tolist() for k, v in params.items()})
    try:
        inputs = batch(3)
        expected = reference.forward(model, inputs, params)["logits"]
        np.testing.assert_allclose(program.forward(inputs)["logits"], expected, rtol=1e-12)
    finally:
        program.set_params({k: v - 0.25 for k, v in params.items()})


def test_refused_set_params_changes_nothing(program):
    before = program.get_params()
    with pytest.raises(ProgramError):
        program.set_params({"h.W": before["h.W"] + 1, "nope": 0.0})
    after = program.get_params()
    program.set_params(before)
    np.testing.assert_array_equal(after["h.W"], before["h.W"])


@pytest.mark.filterwarnings("ignore:Casting complex values")
@pytest.mark.parametrize("value", [np.array(["a"] * 5), np.ones(5) * 1j,
                                   np.array([None] * 5)], ids=["strings", "complex", "none"])
def test_set_params_refuses_non_numbers(program, value):
    before = program.get_params()
    try:
        refused(lambda: program.set_params({"h.b": value}), "parameter 'h.b'")
    finally:
        program.set_params(before)


def test_entries_a_model_lacks(model):
    no_loss = compiler.compile(compiler.parse("input x[N, 2]\noutput o = dense(x, 3)\n",
                                              "noloss.nn"), dtype="f64", cache=False)
    refused(lambda: no_loss.evaluate({"x": np.zeros((2, 2))}), "evaluate", "no loss")
    refused(lambda: no_loss.train_step({"x": np.zeros((2, 2))}), "train_step", "no loss")
    no_params = compiler.compile(compiler.parse("input x[N, 2]\nloss mean(x ^ 2)\n",
                                                "noparams.nn"), dtype="f64", cache=False)
    refused(lambda: no_params.value_and_grad({"x": np.zeros((2, 2))}), "no parameters")
    assert no_params.evaluate({"x": np.ones((2, 2))})[0] == pytest.approx(1.0)


def test_unused_const_compiles():
    model = compiler.parse("const k[2] = [1, 2]\ninput x[N]\noutput y = x * 2\n", "c.nn")
    program = compiler.compile(model, dtype="f64", cache=False)
    np.testing.assert_array_equal(program.forward({"x": np.array([1.0, 2.0])})["y"], [2, 4])


def test_an_input_marked_as_output_is_returned():
    """`output x` on an input: forward and evaluate return it as given (it has no
    buffer of its own in the workspace)."""
    model = compiler.parse("input x[N, 3]\noutput x\noutput y = relu(x)\nloss mean(y)\n",
                           "echo.nn")
    program = compiler.compile(model, dtype="f64", cache=False)
    x = np.arange(-3.0, 3.0).reshape(2, 3)
    outputs = program.forward({"x": x})
    np.testing.assert_array_equal(outputs["x"], x)
    np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))
    loss, outputs = program.evaluate({"x": x.astype(np.float32)})
    assert loss == pytest.approx(0.5)
    np.testing.assert_array_equal(outputs["x"], x)


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_an_input_only_marked_as_output_is_returned(dtype):
    """`output x`, `output c` (i32) and `output v` (a named size) where no computed
    output reads them: predict and evaluate read no input, so the inputs were not
    taken and forward raised KeyError."""
    model = compiler.parse("input x[N, 3]\ninput c[N] : i32\ninput v[N, D]\nparam w[3] = 1\n"
                           "output x\noutput c\noutput v\nloss mean(x * w)\n", "echo.nn")
    program = compiler.compile(model, dtype=dtype, cache=False)
    x, c, v = np.arange(-3.0, 3.0).reshape(2, 3), np.array([4, 1], np.int32), np.ones((2, 5))
    outputs = program.forward({"x": x, "c": c, "v": v})
    np.testing.assert_array_equal(outputs["x"], x)
    np.testing.assert_array_equal(outputs["c"], c)
    np.testing.assert_array_equal(outputs["v"], v)
    loss, outputs = program.evaluate({"x": x, "c": c, "v": v[:, :2]})
    assert loss == pytest.approx(-0.5)
    np.testing.assert_array_equal(outputs["v"], v[:, :2])


def test_configure_refuses_unknown_settings(program):
    refused(lambda: program.configure(momentum=0.9), "has no setting 'momentum'", "lr")


@pytest.mark.parametrize("value", ["fast", None, [0.1], np.nan, np.inf, "0.1", b"0.1", True,
                                   np.True_, np.array("0.1"), np.array(True), np.str_("0.1")])
def test_configure_refuses_values_that_are_not_finite_numbers(program, value):
    """float() took the string "0.1" as 0.1 and True as 1.0."""
    before = dict(program.optimizer)
    refused(lambda: program.configure(lr=value), "'lr' must be a finite number")
    assert program.optimizer == before


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.float64(0.25), np.int64(1),
                                   np.array(0.25)])
def test_configure_takes_python_and_numpy_numbers(program, value):
    before = program.optimizer["lr"]
    program.configure(lr=value)
    assert program.optimizer["lr"] == float(value)
    program.configure(lr=before)        # the program is shared by the module's tests


@pytest.mark.parametrize("setting, message", [
    ({"lr": -0.1}, "optimizer setting 'lr' must be positive, got -0.1"),
    ({"lr": 0}, "optimizer setting 'lr' must be positive, got 0"),
])
def test_configure_refuses_what_a_train_statement_refuses(program, setting, message):
    """The ranges of `train sgd(lr=...)` and --lr hold from Python too: a negative rate
    would climb the loss."""
    before = dict(program.optimizer)
    refused(lambda: program.configure(**setting), message)
    assert program.optimizer == before


def test_configure_refuses_betas_and_eps_out_of_range():
    model = compiler.parse("input x[N, 3]\nloss mean(dense(x, 1))\n", "adam.nn")
    program = compiler.compile(model, optimizer="adam", cache=False)
    refused(lambda: program.configure(beta1=1.0), "optimizer setting 'beta1' must be in [0, 1), got 1.0")
    refused(lambda: program.configure(beta2=-0.5), "'beta2' must be in [0, 1)")
    refused(lambda: program.configure(eps=0.0), "optimizer setting 'eps' must be positive")
    program.configure(beta1=0.0, lr=1e-4)
    assert program.optimizer["beta1"] == 0.0 and program.optimizer["lr"] == 1e-4


@pytest.mark.parametrize("params", [None, [("h.b", np.zeros(5))], np.zeros(5)],
                         ids=["none", "pairs", "array"])
def test_set_params_refuses_what_is_not_a_dict(program, params):
    refused(lambda: program.set_params(params), "parameters must be a dict of name -> array")


# ---- threads ----------------------------------------------------------------------------------
def test_calls_from_two_threads_do_not_mix_results(program, monkeypatch):
    """Thread A is held just after its native call, thread B runs a whole forward on other
    inputs meanwhile; each must get its own results. (With a per-call lock, B waits and
    A's hold times out after a second.)"""
    a_computed, b_finished = threading.Event(), threading.Event()
    real_call = program._call

    def call_then_pause(entry, arrays, sizes):
        real_call(entry, arrays, sizes)
        if threading.current_thread().name == "A":
            a_computed.set()
            b_finished.wait(timeout=1.0)
    monkeypatch.setattr(program, "_call", call_then_pause)
    first, second = batch(4, seed=11)["x"], batch(4, seed=12)["x"]
    results = {}

    def run_a():
        results["A"] = program.forward({"x": first})["logits"]

    def run_b():
        a_computed.wait(timeout=10)
        results["B"] = program.forward({"x": second})["logits"]
        b_finished.set()
    threads = [threading.Thread(target=run_a, name="A"), threading.Thread(target=run_b, name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    monkeypatch.undo()
    np.testing.assert_array_equal(results["A"], program.forward({"x": first})["logits"])
    np.testing.assert_array_equal(results["B"], program.forward({"x": second})["logits"])


# ---- the process survives -----------------------------------------------------------------------
SURVIVAL_SCRIPT = """
import numpy as np, compiler
from runtime.program import ProgramError
model = compiler.parse(open({path!r}).read(), "images.nn")
program = compiler.compile(model, dtype={dtype!r}, cache=False)
rng = np.random.default_rng(0)
x = rng.normal(size=(6, 1, 6, 6)); y = np.array([0, 1, 2, 0, 1, 2], np.int32)
attempts = [
    {{"x": x[::2], "y": y[::2]}},                                  # strided
    {{"x": np.asfortranarray(x), "y": y}},
    {{"x": np.full_like(x, np.nan), "y": y}},                      # maxpool argmax of NaN
    {{"x": np.full_like(x, -np.inf), "y": y}},
    {{"x": x, "y": np.array([0, 1, 2, 3, 1, 2])}},                 # out of range
    {{"x": x, "y": np.array([0, 1, 2, 2**40, 1, 2])}},
    {{"x": x, "y": np.array([0, 1, 2, -7, 1, 2])}},
    {{"x": x[:0], "y": y[:0]}},                                    # empty
    {{"x": x[:, :, :5], "y": y}},                                  # wrong shape
    {{"x": x, "y": y[:4]}},
    {{"x": x.astype(np.float32)[:1], "y": y[:1]}},
    {{"x": np.repeat(x, 5, axis=0), "y": np.repeat(y, 5)}},        # threaded size
]
refusals = 0
for inputs in attempts:
    for entry in (program.forward, program.evaluate, program.value_and_grad, program.train_step):
        try:
            entry(inputs)
        except ProgramError:
            refusals += 1
print("survived", refusals)
"""


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_process_survives_hostile_calls(tmp_path, dtype):
    path = tmp_path / "images.nn"
    path.write_text(IMAGES)
    script = SURVIVAL_SCRIPT.format(path=str(path), dtype=dtype)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # refused: 3 bad label sets and the empty batch by the 3 entries that need labels (12),
    # the wrong image shape by all 4 entries, the short y by the 3 that read it
    assert result.stdout.split() == ["survived", str(12 + 4 + 3)]
