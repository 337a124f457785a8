"""Random valid models (tests/model_generator.py) through the whole compiler, in float64
and in float32.

Each model is written as .nn text, parsed, compiled to native code and run on several
batch sizes; forward outputs, the loss and every gradient must equal the NumPy
reference (compiler.reference) to 1e-9 of each tensor's magnitude, and one SGD
train_step must move the parameters by exactly -lr * gradient. Models built from
smooth ops only (odd seeds) also have their derived gradients checked against finite
differences (compiler.gradcheck).

float32 takes other code paths (16 lanes with AVX-512, register tiles of 6 rows, row
tails under masks, rows split between threads from batch 16): wide models (rows of
1..40, not multiples of a vector or a tile) are run in float32 on three threads and
checked against the reference to 1e-4 (see test_float32_native_equals_reference).

Rich models (random_model(rich=True): the rest of the language, and a `train` statement
whose optimizer, sgd, momentum or adam, train_step must follow for two steps) are run
the same ways, in float64 on three threads (rows split from batch 16).

CI runs a fixed set of seeds. For a bigger run by hand:
    SYMNET_RANDOM_MODELS=300 python -m pytest tests/test_random_models.py
    SYMNET_RANDOM_MODELS_F32=300 python -m pytest tests/test_random_models.py -k float32
    SYMNET_RICH_MODELS=300 python -m pytest tests/test_random_models.py -k rich
A failure prints the model's text: save it as a .nn file to reproduce it with the CLI.
A float32 failure may still be rounding, which the floor cannot tell from wrong code in
two cases: a gradient that is 0 in exact arithmetic (wide seed 118: p2 drops out of
h3 - mean(h3, axis=0)), and a relu whose input rounds across 0 (1e-8 in a 67 x 832
product flips its step). The same model in float64 then errs about 5e8 times less.
Rich float32 models add three (rich seeds of fuzz2's generator, wide, batch 7; float64
errs 1e9..1e12 times less): binary_cross_entropy((1 + tanh(z)) / 2, t) where p rounds to
1 and log(1 - p) keeps no digits (seed 36, 4e-3); a softmax saturated by z = -(h @ W)^2
(seed 77, every gradient 2e-4); h - sum(h, axis=0) then minus its mean (seed 88, 3e-4).
float64 has one too: a network whose loss and gradients are all 0 in exact arithmetic
(relu of a negative value everywhere, rich seed 110) keeps the noise of 0.1 - 12 * 0.1 / 12
(4e-17), beyond the 1e-8 floor of the relative test.
"""
import os

import numpy as np
import pytest

import compiler
from compiler import reference
from model_generator import random_model

COUNT = int(os.environ.get("SYMNET_RANDOM_MODELS", "30"))
BATCHES = (3, 1, 17)          # a new batch size after another exercises the workspaces
RELATIVE = 1e-9
GRADCHECK_TOLERANCE = 1e-6
LEARNING_RATE = 0.1


def largest(array):
    return float(np.max(np.abs(array), initial=0.0))


def relative_error(actual, expected, floor=1e-8):
    """max |actual - expected| over the tensor, relative to the tensor's largest entry.

    The scale is floored so that a tensor that should be exactly zero (a gradient
    cancelled by a batch mean) may carry the rounding noise of the terms it sums."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(largest(expected), floor)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def build(seed, smooth, rich=False):
    generated = random_model(seed, smooth=smooth, rich=rich)
    try:
        model = compiler.parse(generated.text, f"random{seed}.nn")
    except compiler.SymnetError as error:
        pytest.fail(f"generated model refused:\n{error.format()}\n\n{generated.text}")
    return generated, model


@pytest.mark.parametrize("seed", range(COUNT))
def test_native_equals_reference(seed):
    generated, model = build(seed, smooth=seed % 2 == 1)
    program = compiler.compile(model, dtype="f64", cache=False)
    context = f"\nmodel:\n{generated.text}"
    check_native(program, model, generated, seed, context)
    check_one_sgd_step(program, model, generated.inputs(BATCHES[0], seed=seed), context)


def check_native(program, model, generated, seed, context):
    """Forward outputs, the loss and every gradient against the reference, per batch."""
    for batch in BATCHES:
        inputs = generated.inputs(batch, seed=seed + batch)
        outputs, expected = program.forward(inputs), reference.forward(model, inputs)
        assert sorted(outputs) == sorted(expected)
        # An output that is 0 in exact arithmetic (h - mean(h) of a constant row) carries
        # the rounding noise of the values it was computed from.
        floor = max(1e-3 * max(largest(v) for v in [*inputs.values(), *expected.values()]), 1e-8)
        for name in expected:
            assert relative_error(outputs[name], expected[name], floor) < RELATIVE, \
                f"output {name}, batch {batch}{context}"
        loss, grads = program.value_and_grad(inputs)
        expected_loss, expected_grads = reference.value_and_grad(model, inputs)
        assert np.isfinite(expected_loss)
        assert relative_error(loss, expected_loss) < RELATIVE, f"loss, batch {batch}{context}"
        assert sorted(grads) == sorted(expected_grads) == sorted(model.params)
        floor = max(1e-3 * max(largest(g) for g in expected_grads.values()), 1e-8)
        for name in expected_grads:
            assert relative_error(grads[name], expected_grads[name], floor) < RELATIVE, \
                f"gradient of {name}, batch {batch}{context}"


def check_one_sgd_step(program, model, inputs, context):
    """train_step with plain SGD: params - lr * (reference gradient at the old params)."""
    if program.spec["optimizer"] != "sgd":
        return
    before = program.get_params()
    loss, grads = reference.value_and_grad(model, inputs, before)
    program.configure(lr=LEARNING_RATE)
    assert relative_error(program.train_step(inputs), loss) < RELATIVE, context
    after = program.get_params()
    floor = max(1e-3 * max(largest(v) for v in before.values()), 1e-8)
    for name, value in before.items():
        expected = value - LEARNING_RATE * grads[name]
        assert relative_error(after[name], expected, floor) < RELATIVE, \
            f"sgd step of {name}{context}"


def check_optimizer_steps(program, model, inputs, context, steps=2):
    """train_step with the model's optimizer (sgd, momentum or adam), step after step,
    against the update written out here from the reference gradient."""
    kind, hypers = program.spec["optimizer"], dict(program.optimizer)
    program.reset_optimizer()
    state = {}
    for step in range(1, steps + 1):
        before = program.get_params()
        loss, grads = reference.value_and_grad(model, inputs, before)
        if kind == "adam" and step == 1:
            # lr * m / (sqrt(v) + eps) divides by the gradient: an entry that is 0 in
            # exact arithmetic would move by lr times its rounding noise's sign.
            hypers["eps"] = 1e-6 + 1e-4 * max(largest(g) for g in grads.values())
            program.configure(eps=hypers["eps"])
        assert relative_error(program.train_step(inputs), loss) < RELATIVE, \
            f"{kind} step {step} loss{context}"
        after = program.get_params()
        floor = max(1e-3 * max(largest(v) for v in before.values()), 1e-8)
        for name, value in before.items():
            g = grads[name]
            if kind == "sgd":
                expected = value - hypers["lr"] * g
            elif kind == "momentum":
                state[name] = hypers["beta"] * state.get(name, 0.0) + g
                expected = value - hypers["lr"] * state[name]
            else:
                m, v = state.get(name, (0.0, 0.0))
                m = hypers["beta1"] * m + (1 - hypers["beta1"]) * g
                v = hypers["beta2"] * v + (1 - hypers["beta2"]) * g ** 2
                state[name] = m, v
                m_hat, v_hat = m / (1 - hypers["beta1"] ** step), v / (1 - hypers["beta2"] ** step)
                expected = value - hypers["lr"] * m_hat / (np.sqrt(v_hat) + hypers["eps"])
            assert relative_error(after[name], expected, floor) < RELATIVE, \
                f"{kind} step {step} of {name}{context}"


RICH_COUNT = int(os.environ.get("SYMNET_RICH_MODELS", "12"))


@pytest.mark.parametrize("seed", range(RICH_COUNT))
def test_rich_native_equals_reference(seed, monkeypatch):
    """Rich models in float64 on three threads, and two steps of their optimizer."""
    monkeypatch.setenv("SYMNET_THREADS", "3")
    generated, model = build(seed, smooth=seed % 2 == 1, rich=True)
    program = compiler.compile(model, dtype="f64", cache=False)
    context = f"\nrich model:\n{generated.text}"
    check_native(program, model, generated, seed, context)
    check_optimizer_steps(program, model, generated.inputs(BATCHES[-1], seed=seed), context)


@pytest.mark.parametrize("seed", [s for s in range(RICH_COUNT) if s % 2 == 1])
def test_rich_smooth_model_gradients_match_finite_differences(seed):
    check_finite_differences(*build(seed, smooth=True, rich=True), seed)


@pytest.mark.parametrize("seed", [s for s in range(COUNT) if s % 2 == 1])
def test_smooth_model_gradients_match_finite_differences(seed):
    check_finite_differences(*build(seed, smooth=True), seed)


def check_finite_differences(generated, model, seed):
    checks, _ = compiler.gradcheck(model, seed=seed)
    assert {c.name for c in checks} == set(model.params)
    for check in checks:
        assert check.rel_error < GRADCHECK_TOLERANCE, \
            f"{check.name}: relative error {check.rel_error:.2e}\nmodel:\n{generated.text}"


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("body", [
    "h = sqrt(2 + conv2d(x, filters=1, size=1) ^ 2)",             # rich seed 175, reduced
    "h = log(1.5 + tanh(dense(flatten(sqrt(1 + conv2d(x, filters=2, size=2) ^ 2)), 3)))",
    "z = tanh(x)\nh = sqrt(1 + conv2d(z, filters=2, size=3, pad=\"same\") ^ 2) ^ 0.5",
])
def test_masked_lanes_of_a_fused_division_add_nothing(body, dtype):
    """A bias gradient summed with vector lanes along a row (5 or 6 wide) and fused with
    sqrt's derivative, grad * (b + conv) / h: the lanes past the row loaded h = 0, and
    0 * (x / 0) = NaN entered the sum (float64: h.b's gradient was NaN)."""
    model = compiler.parse(f"input x[N, 1, 5, 6]\n{body}\nloss mean(h)\n", "masked.nn")
    program = compiler.compile(model, dtype=dtype, cache=False)
    tolerance = RELATIVE if dtype == "f64" else F32_RELATIVE
    for batch in (1, 3, 17):
        inputs = reference.random_inputs(model, batch, seed=batch)
        loss, grads = program.value_and_grad(inputs)
        expected_loss, expected_grads = reference.value_and_grad(model, inputs)
        assert relative_error(loss, expected_loss) < tolerance
        for name in expected_grads:
            assert relative_error(grads[name], expected_grads[name]) < tolerance, f"{name}, batch {batch}"


def test_generator_is_deterministic_and_varied():
    """The same seed gives the same text; different seeds reach many different ops."""
    assert random_model(7).text == random_model(7).text
    texts = "\n".join(random_model(seed).text for seed in range(COUNT))
    for op in ["dense(", "conv2d(", "pool(", "softmax(", "transpose(", "reshape(", "flatten(",
               " @ ", "cross_entropy(", "mse(", "binary_cross_entropy(sigmoid(", "op op",
               "swish(", "gate(", "axis=0"]:
        assert op in texts, f"no generated model uses {op!r}"


def test_rich_generator_reaches_the_language():
    """Rich models reach the forms the plain ones never write, and the shapes the
    generator tracks are the compiler's (a wrong rule would misdirect later steps)."""
    import re
    from model_generator import _Generator, RICH_FUNCTIONS, USER_FUNCTIONS
    texts, params = [], set()
    for seed in range(80):
        gen = _Generator(seed, seed % 2 == 1, wide=seed % 3 == 0, rich=True)
        gen.lines += ["model r"] + (USER_FUNCTIONS + RICH_FUNCTIONS).strip().split("\n")
        name, shape = gen.body(gen.rng.randint(2, 6))
        gen.loss(name, shape)
        gen.train()
        model = compiler.parse("\n".join(gen.lines) + "\n", "rich.nn")
        for tensor, tracked in gen.pool:      # named sizes ("N", "D3") as strings
            actual = tuple(int(d) if str(d).isdigit() else str(d) for d in model.tensors[tensor].shape)
            assert actual == tracked, f"{tensor}: tracked {tracked}, compiled {actual}\n" + \
                "\n".join(gen.lines)
        for param, tracked in gen.layer_params:     # h_2.W: what the loss may read by name
            actual = tuple(int(d) for d in model.params[param].shape)
            assert actual == tracked, f"{param}: tracked {tracked}, compiled {actual}\n" + \
                "\n".join(gen.lines)
        texts.append("\n".join(gen.lines))
        params |= set(model.params)
    assert random_model(5, rich=True).text == random_model(5, rich=True).text
    texts = "\n".join(texts)
    for form in ["maxout(", "init=", "bias=false", "stride=2", 'pad="same"', "pad=1", "onehot(",
                 "axis=-1", "mean(h", "@ p", "transpose(", "[-1]", "op op", "max(j:", "[i, n]",
                 "i + k -", "param a", "] = [", "input u", "output o", "softplus(", "step(",
                 "sign(", "log(", "sqrt(", "train sgd", "train momentum", "train adam",
                 "softmax(t)", "logits.W", "loss (dense", "mse(pred, t)"]:
        assert form in texts, f"no rich model uses {form!r}"
    for what, pattern in [
            ("a named size", r"input v\d+\[N, D\d+\]"),
            ("a named size as a number", r"/ \(?D\d+"),
            ("an i32 input in arithmetic", r"\n(h|output)[^\n]*([-+*/(] ?c\d+\b|\bc\d+ [-+*/^])"),
            ("a tensor exponent", r"\) \^ [pa]\d+|\d \^ tanh\("),
            ("layers in one statement", r"dense\((\w+\()?dense\(|conv2d\((\w+\()?conv2d\("),
            ("a layer's parameter read by name", r"h\d+_2\.[Wb]"),
            ("a reduction of a reduction", r"(sum|mean)\((sum|mean)\("),
            ("a sum inside a max", r"max\((sum|mean)\(|max\(\w: [^\n]*sum\(\w:"),
            ("nested reductions in an op", r"(sum|max)\(\w: [^\n]*(sum|max)\(\w:"),
            ("an input as an output", r"output (x|v\d+|c\d+)\n")]:
        assert re.search(pattern, texts), f"no rich model has {what}"
    assert any(re.fullmatch(r"h\d+_3\.W", p) for p in params), "no statement with three layers"


F32_COUNT = int(os.environ.get("SYMNET_RANDOM_MODELS_F32", "6"))
F32_BATCHES = (7, 1, 17, 67)  # a row tail; one row; a tile and a tail per thread; more rows
F32_RELATIVE = 1e-4
# float32 rounds every operation to 6e-8 of its result, so an entry that nearly cancels
# (x - mean(x, axis=0), a bias gradient summed over the batch) keeps an absolute error of
# a few ulps of the values it came from: each tensor is judged relative to at least 1%
# of the largest value around (1e-6 of it absolute, about 8 ulps).
F32_FLOOR = 1e-2


def beyond_float32(model, inputs, params):
    """Whether the exact forward pass reaches values float32 cannot hold (with room for
    the backward pass): an exp of a large sum overflows, rightly (wide seed 56 from batch 2 on)."""
    values = reference.run_forward(model, inputs, params).values()
    return max(largest(v) for v in values) > 1e30


@pytest.mark.parametrize("seed", range(F32_COUNT))
def test_float32_native_equals_reference(seed, monkeypatch):
    """float32 code on 3 threads (the team reads $SYMNET_THREADS when the Program is
    made) against the float64 reference fed the same float32-rounded inputs and params."""
    check_float32(random_model(seed, smooth=seed % 2 == 1, wide=True), seed, monkeypatch)


RICH_F32_COUNT = int(os.environ.get("SYMNET_RICH_MODELS_F32", "4"))


@pytest.mark.parametrize("seed", range(RICH_F32_COUNT))
def test_rich_float32_native_equals_reference(seed, monkeypatch):
    check_float32(random_model(seed, smooth=seed % 2 == 1, wide=True, rich=True), seed, monkeypatch)


def check_float32(generated, seed, monkeypatch):
    monkeypatch.setenv("SYMNET_THREADS", "3")
    model = compiler.parse(generated.text, f"random{seed}.nn")
    program = compiler.compile(model, dtype="f32", optimizer="sgd", cache=False)  # steps by -lr * g
    context = f"\nfloat32, model:\n{generated.text}"
    params = {k: v.astype(np.float64) for k, v in program.get_params().items()}
    for batch in F32_BATCHES:
        inputs = {k: v if v.dtype == np.int32 else v.astype(np.float32)
                  for k, v in generated.inputs(batch, seed=seed + batch).items()}
        if beyond_float32(model, inputs, params):
            continue
        outputs, expected = program.forward(inputs), reference.forward(model, inputs, params)
        floor = max(F32_FLOOR * max(largest(v) for v in [*inputs.values(), *expected.values()]), 1e-8)
        for name in expected:
            assert relative_error(outputs[name], expected[name], floor) < F32_RELATIVE, \
                f"output {name}, batch {batch}{context}"
        loss, grads = program.value_and_grad(inputs)
        expected_loss, expected_grads = reference.value_and_grad(model, inputs, params)
        assert relative_error(loss, expected_loss, F32_FLOOR) < F32_RELATIVE, f"loss, batch {batch}{context}"
        floor = max(F32_FLOOR * max(largest(g) for g in expected_grads.values()), 1e-8)
        for name in expected_grads:
            assert relative_error(grads[name], expected_grads[name], floor) < F32_RELATIVE, \
                f"gradient of {name}, batch {batch}{context}"
        # One SGD step: each parameter moves by -lr * its gradient, to within the
        # parameter's own rounding (floored by the largest parameter, as above).
        program.configure(lr=LEARNING_RATE)
        program.train_step(inputs)
        floor = max(F32_FLOOR * max(largest(v) for v in params.values()), 1e-8)
        for name, value in program.get_params().items():
            step = value.astype(np.float64) - params[name]
            assert relative_error(step, -LEARNING_RATE * expected_grads[name], floor) < F32_RELATIVE, \
                f"sgd step of {name}, batch {batch}{context}"
        program.set_params(params)


GPU_RELATIVE = 1e-4          # float32, against the float64 reference
GPU_SEEDS = range(0, COUNT, 3)


@pytest.fixture(params=["default", "tile", "tile-split", "block", "split"])
def gpu_policy(request, monkeypatch):
    """The GPU schedule as chosen, or with every contraction tiled (16x16; split over the
    reduction into 3 parts, the scratch growing with N where the outputs do), or with
    every sum reduced by a block (split into 3 where the outputs are a fixed number):
    each strategy meets every kind of loop nest."""
    from compiler import gpu_schedule
    if request.param in ("tile", "tile-split"):
        monkeypatch.setattr(gpu_schedule, "worth_tiling", lambda rows, cols, terms: True)
        monkeypatch.setattr(gpu_schedule, "tile_shape", lambda rows, cols: (16, 16, 1, 1))
        split = 3 if request.param == "tile-split" else 1
        monkeypatch.setattr(gpu_schedule, "tile_split_count", lambda c, tile, tensors: split)
    elif request.param in ("block", "split"):
        choose = gpu_schedule.choose_strategy
        monkeypatch.setattr(gpu_schedule, "choose_strategy", lambda c, tensors: (
            ("block", None) if c.reduce == "sum" else choose(c, tensors)))
        split = 3 if request.param == "split" else 1
        monkeypatch.setattr(gpu_schedule, "split_count", lambda c, tensors: (
            split if gpu_schedule._elements(c, tensors).is_Integer else 1))
    return request.param


@pytest.mark.parametrize("seed", GPU_SEEDS)
def test_gpu_kernels_emulated_equal_reference(seed, gpu_policy):
    """The PTX target's kernels, run on the CPU block by block (target "gpu-emulation"),
    with no shared-memory race."""
    from compiler.codegen.gpu_emulation import sanitizer_report
    generated, model = build(seed, smooth=seed % 2 == 1)
    program = compiler.compile(model, target="gpu-emulation", cache=False)
    context = f"\npolicy {gpu_policy}, model:\n{generated.text}"
    inputs = generated.inputs(17, seed=seed)
    outputs, expected = program.forward(inputs), reference.forward(model, inputs)
    for name in expected:
        assert relative_error(outputs[name], expected[name], 1e-4) < GPU_RELATIVE, f"output {name}{context}"
    loss, grads = program.value_and_grad(inputs)
    expected_loss, expected_grads = reference.value_and_grad(model, inputs)
    assert relative_error(loss, expected_loss, 1e-4) < GPU_RELATIVE, f"loss{context}"
    floor = max(1e-3 * max(largest(g) for g in expected_grads.values()), 1e-4)
    for name in expected_grads:
        assert relative_error(grads[name], expected_grads[name], floor) < GPU_RELATIVE, \
            f"gradient of {name}{context}"
    assert sanitizer_report(program) is None, context
