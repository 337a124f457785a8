"""Tests for runtime/train.py and runtime/progress.py: optimizers against NumPy, the loop,
metrics, the NaN guard, interrupts, and accuracy on real Fashion-MNIST."""
import io
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from compiler import reference
from compiler.native import compile
from compiler.pipeline import load
from runtime import data
from runtime.progress import Progress, format_epoch
from runtime.train import (History, TrainingError, evaluate, input_roles, num_classes,
                           predict, settings_from_train, train)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example(name):
    return load(os.path.join(ROOT, "examples", f"{name}.nn"))


def line_data(n=200, seed=0):
    """y = 2x + 1 on x ~ U(-1, 1); the same points serve as train and test set."""
    x = np.random.default_rng(seed).uniform(-1, 1, n)
    y = 2 * x + 1
    return SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)


@pytest.fixture(scope="module")
def small():
    """600 train / 200 test real Fashion-MNIST images from the embedded subset."""
    ds = data.load_dataset("embedded")
    return SimpleNamespace(x_train=ds.x_train[:600], y_train=ds.y_train[:600],
                           x_test=ds.x_test[:200], y_test=ds.y_test[:200])


@pytest.fixture(scope="module")
def fashion():
    if not data.DEBIAN_DIR.is_dir():
        pytest.skip(f"full Fashion-MNIST not installed at {data.DEBIAN_DIR} "
                    "(Debian package dataset-fashion-mnist)")
    return data.load_dataset(str(data.DEBIAN_DIR))


# ---- the loop on known problems --------------------------------------------------------------
def test_linreg_recovers_line():
    """Full-batch GD on mean((y - ax - b)^2) with x ~ U(-1, 1) contracts the error by
    |1 - lr*2/3| = 2/3 per epoch at lr=0.5, so the file's 100 epochs reach ~1e-17."""
    model = example("linreg")
    program = compile(model, dtype="f64")
    settings = settings_from_train(model.train)
    assert settings == {"epochs": 100, "batch": "full", "lr": 0.5}
    assert isinstance(settings["epochs"], int)
    assert settings_from_train(model.train, epochs=3, lr=None)["epochs"] == 3
    history = train(program, line_data(), quiet=True, **settings)
    params = program.get_params()
    assert abs(params["a"] - 2) < 1e-3 and abs(params["b"] - 1) < 1e-3
    assert len(history) == 100 and history[-1]["steps"] == 100
    assert history[-1]["train_loss"] < 1e-10
    assert history[-1]["train_accuracy"] is None and history[-1]["test_accuracy"] is None


def adam_reference(eps=1e-3, lr=0.01, beta1=0.8, beta2=0.9):
    def step(p, g, s, t):
        s["m"] = beta1 * s.get("m", 0) + (1 - beta1) * g
        s["v"] = beta2 * s.get("v", 0) + (1 - beta2) * g * g
        m_hat, v_hat = s["m"] / (1 - beta1 ** t), s["v"] / (1 - beta2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}, step


def momentum_reference(lr=0.05, beta=0.8):
    def step(p, g, s, t):
        s["v"] = beta * s.get("v", 0) + g
        return p - lr * s["v"]
    return {"lr": lr, "beta": beta}, step


def sgd_reference(lr=0.1):
    return {"lr": lr}, lambda p, g, s, t: p - lr * g


@pytest.mark.parametrize("optimizer, make", [("sgd", sgd_reference),
                                             ("momentum", momentum_reference),
                                             ("adam", adam_reference)])
def test_train_step_matches_numpy_update(optimizer, make):
    """Three native train_steps (f64) against the PyTorch-convention update computed in
    NumPy from the reference interpreter's gradients. Non-default hyperparameters (a
    large Adam eps) make a convention mismatch visible."""
    model = example("mlp")
    program = compile(model, dtype="f64", optimizer=optimizer)
    hypers, update = make()
    program.configure(**hypers)
    params = program.get_params()
    states = {name: {} for name in params}
    for t in range(1, 4):
        inputs = reference.random_inputs(model, batch=8, seed=t)
        ref_loss, grads = reference.value_and_grad(model, inputs, params)
        loss = program.train_step(inputs)
        assert loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)
        params = {n: update(params[n], grads[n], states[n], t) for n in params}
        got = program.get_params()
        for name in params:
            np.testing.assert_allclose(got[name], params[name], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{optimizer} step {t}, parameter {name}")


@pytest.mark.parametrize("batch", [1, 37, "full"])
def test_softmax_regression_loss_decreases(small, batch):
    """Stochastic, mini-batch (with a ragged last batch: 600 = 16*37 + 8) and full-batch."""
    model = example("softmax_regression")
    program = compile(model)
    before = evaluate(program, small.x_train, small.y_train)["loss"]
    epochs = 5 if batch == "full" else 1
    history = train(program, small, epochs=epochs, batch=batch, lr=0.05, quiet=True)
    assert history[-1]["train_loss"] < before - 0.1
    assert history[-1]["steps"] == epochs * {1: 600, 37: 17, "full": 1}[batch]


def test_shuffle_is_seeded(small):
    runs = []
    for seed in (3, 3, 4):
        program = compile(example("softmax_regression"))
        train(program, small, epochs=1, batch=50, seed=seed, lr=0.1, quiet=True)
        runs.append(program.get_params()["W"])
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


# ---- real data ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, floor", [("mlp", 0.85), ("softmax_regression", 0.80)])
def test_fashion_mnist_accuracy(fashion, name, floor):
    """The files' own settings (sgd, batch 64, 3 epochs); ~3 s each on one core."""
    model = example(name)
    program = compile(model)
    history = train(program, fashion, quiet=True, **settings_from_train(model.train))
    assert len(history) == 3 and not history.interrupted
    assert history[-1]["test_accuracy"] >= floor, history[-1]
    assert history[-1]["samples_per_s"] > 0


# ---- evaluate / predict ---------------------------------------------------------------------
def test_evaluate_and_predict(small):
    program = compile(example("mlp"))
    result = evaluate(program, small.x_test, small.y_test, batch=64)   # ragged chunks
    whole_loss, outputs = program.evaluate({"x": small.x_test.reshape(200, 784),
                                            "y": small.y_test})
    assert result["count"] == 200 and result["loss"] == pytest.approx(whole_loss, rel=1e-5)
    predicted = outputs["logits"].argmax(axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == small.y_test))
    confusion = result["confusion"]
    assert confusion.shape == (10, 10) and confusion.sum() == 200
    assert confusion[small.y_test[0], predicted[0]] >= 1
    logits = predict(program, small.x_test, batch=64)["logits"]
    np.testing.assert_allclose(logits, outputs["logits"], rtol=1e-5, atol=1e-6)


def test_input_roles():
    assert input_roles(compile(example("mlp")).spec) == ("x", "y")
    assert input_roles(compile(example("linreg")).spec) == ("x", "y")
    assert input_roles(compile(example("custom")).spec) == ("x", None)
    assert num_classes(compile(example("mlp")).spec) == 10
    assert num_classes(compile(example("linreg")).spec) is None


def test_labels_out_of_range_are_refused(small):
    program = compile(example("mlp"))
    with pytest.raises(TrainingError, match=r"^labels range over 10\.\.10, but model mlp's "
                                            r"input 'y' takes classes 0\.\.9$"):
        train(program, SimpleNamespace(x_train=small.x_train[:10], y_train=np.full(10, 10),
                                       x_test=None, y_test=None), epochs=1, quiet=True)


def test_data_that_is_not_a_dataset_is_refused_in_one_line():
    program = compile(example("linreg"))
    x = np.linspace(-1, 1, 20)
    with pytest.raises(TrainingError, match=r"^data must have x_train, y_train, x_test and "
                                            r"y_test \(a runtime.data.Dataset\); this tuple has no x_train$"):
        train(program, (x, 2 * x + 1), epochs=1, quiet=True)


def test_inputs_may_be_any_mapping():
    from types import MappingProxyType
    program = compile(example("linreg"))
    x = np.linspace(-1, 1, 5)
    a, b = (float(program.get_params()[p]) for p in ("a", "b"))
    loss, _ = program.evaluate(MappingProxyType({"x": x, "y": 2 * x}))
    assert loss == pytest.approx(np.mean((2 * x - a * x - b) ** 2), rel=1e-6)


def test_model_without_labels_trains():
    program = compile(example("custom"))
    x = np.random.default_rng(0).normal(size=(40, 4))
    history = train(program, SimpleNamespace(x_train=x, y_train=None, x_test=None,
                                             y_test=None), epochs=2, batch=16, lr=0.1,
                    quiet=True)
    assert history[-1]["train_loss"] < history[0]["step_loss"]
    assert history[-1]["test_loss"] is None


# ---- failures and interrupts ----------------------------------------------------------------
def test_divergence_stops_with_step_and_restores_last_epoch():
    program = compile(example("linreg"))
    snapshots = []
    with pytest.raises(TrainingError, match=r"epoch (\d+)") as info:
        train(program, line_data(), epochs=100, batch="full", lr=1e6, quiet=True,
              callback=lambda prog, history: snapshots.append(prog.get_params()))
    err = info.value
    # Caught at the step (loss) or at the epoch's evaluation, whichever sees it first,
    # naming the first tensor that went non-finite.
    assert err.epoch == len(err.history) + 1 > 1
    assert "first non-finite tensor" in str(err)
    restored = program.get_params()
    assert all(np.isfinite(v).all() for v in restored.values())
    assert restored == snapshots[-1]


def test_inf_in_data_is_refused_up_front(small):
    x = small.x_train.copy()
    x[70, 0, 3, 3] = np.inf
    with pytest.raises(TrainingError, match="features contain inf or nan.*example 70"):
        train(compile(example("mlp")), SimpleNamespace(x_train=x, y_train=small.y_train,
                                                       x_test=None, y_test=None),
              epochs=1, quiet=True)


def test_nonfinite_parameters_with_finite_loss_are_caught(small):
    """relu(nan) can be 0, so a poisoned weight need not show in the loss: the guard
    also checks the parameters at each epoch's end."""
    program = compile(example("mlp"))
    start = program.get_params()
    original_step = program.train_step

    def poisoning_step(inputs):
        loss = original_step(inputs)
        if program.steps == 19:                    # the last step of epoch 1
            program.set_params({"h1.W": np.full((784, 128), np.nan)})
        return loss
    program.train_step = poisoning_step
    with pytest.raises(TrainingError, match="'h1.W' became inf or nan during epoch 1") as info:
        train(program, small, epochs=2, batch=32, quiet=True)
    assert info.value.epoch == 1 and info.value.step is None and len(info.value.history) == 0
    assert all(np.array_equal(start[k], v) for k, v in program.get_params().items())


def test_keyboard_interrupt_from_callback_returns_history(small):
    def stop_after_two(program, history):
        if len(history) == 2:
            raise KeyboardInterrupt
    history = train(compile(example("softmax_regression")), small, epochs=5, batch=100,
                    quiet=True, callback=stop_after_two)
    assert isinstance(history, History) and history.interrupted and len(history) == 2


def test_ctrl_c_is_deferred_to_the_step_boundary(small):
    """A real SIGINT during epoch 1's callback: training stops at the next step, and the
    interpreter's own handler is back afterwards."""
    program = compile(example("softmax_regression"))
    steps = []
    original_step = program.train_step
    program.train_step = lambda inputs: steps.append(1) or original_step(inputs)
    history = train(program, small, epochs=3, batch=100, quiet=True,
                    callback=lambda prog, h: os.kill(os.getpid(), signal.SIGINT))
    assert history.interrupted and len(history) == 1 and len(steps) == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- progress ---------------------------------------------------------------------------------
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_only_on_a_tty(small):
    tty, pipe = FakeTTY(), io.StringIO()
    for stream in (tty, pipe):
        train(compile(example("softmax_regression")), small, epochs=1, batch=100,
              stream=stream)
    assert "\r" in tty.getvalue() and "steps/s" in tty.getvalue()
    assert "\r" not in pipe.getvalue() and "steps/s" not in pipe.getvalue()
    assert pipe.getvalue().startswith("epoch 1/1  loss ") and "test acc" in pipe.getvalue()
    quiet = io.StringIO()
    train(compile(example("softmax_regression")), small, epochs=1, stream=quiet, quiet=True)
    assert quiet.getvalue() == ""


def test_progress_line_on_a_pipe_every_interval():
    stream = io.StringIO()
    bar = Progress(4, "epoch 1/1", stream=stream, interval=0)
    for loss in (4.0, 2.0, 3.0, 1.0):
        bar.update(loss, samples=2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/1 [")
    assert "75%" in lines[-1] and "loss 3.0000" in lines[-1]     # mean of 4, 2, 3


def test_epoch_line_keeps_a_diverging_loss_short():
    record = {"epoch": 17, "train_loss": 2.1455866e37, "test_loss": 0.25, "samples_per_s": 1234.0,
              "seconds": 0.01}
    assert format_epoch(record, 100) == ("epoch 17/100  loss 2.1456e+37  test loss 0.2500  "
                                         "1,234 samples/s  0.0 s")
