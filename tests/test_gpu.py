"""The PTX target on a real NVIDIA GPU: every example against the CPU backend, training
against the CPU's, errors and threads. Skipped, with the precise reason (no
cuda-bindings, no driver, no device), where there is no GPU; tests/test_ptx.py and
tests/test_gpu_emulation.py check everything that can be checked without one.
"""
import functools
import glob
import os
import threading

import numpy as np
import pytest

from compiler import compile, gpu_schedule, load, parse, reference
from runtime import cuda
from runtime.cuda import CudaError, CudaProgram, GPUUnavailable
from runtime.data import load_dataset
from runtime.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "examples", "*.nn")))


@pytest.fixture(scope="module", autouse=True)
def device():
    try:
        return cuda.open_device()
    except GPUUnavailable as exc:
        pytest.skip(str(exc))


@functools.lru_cache(maxsize=None)
def model(name):
    return load(os.path.join(ROOT, "examples", f"{name}.nn"))


def assert_close(actual, expected, rtol=1e-4):
    """Equal to `rtol` relative to the largest magnitude in `expected` (float32 sums of
    many terms keep that accuracy over the whole array, not on each tiny element)."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * scale)


def test_the_device_describes_itself(device):
    assert device.capability >= (8, 0)
    assert device.max_blocks >= device.multiprocessors >= 1
    assert device.name in repr(device)


@pytest.mark.parametrize("batch", [3, 64])      # one block; [64, 10] spans three
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_gradients_match_the_cpu(name, batch):
    m = model(name)
    gpu, cpu = compile(m, target="ptx"), compile(m, cache=False)
    assert isinstance(gpu, CudaProgram)
    inputs = reference.random_inputs(m, batch=batch, seed=batch)
    outputs, expected = gpu.forward(inputs), cpu.forward(inputs)
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key])
    if "value_and_grad" not in gpu.spec["entries"]:
        return
    loss, grads = gpu.value_and_grad(inputs)
    expected_loss, expected_grads = cpu.value_and_grad(inputs)
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    for key in expected_grads:
        assert_close(grads[key], expected_grads[key])
    assert gpu.evaluate(inputs)[0] == pytest.approx(cpu.evaluate(inputs)[0], rel=1e-4)


@pytest.mark.parametrize("policy", ["tile 64x64", "tile 32x32", "tile 64x16", "tile 16x16", "block"])
def test_every_tile_shape_and_block_reductions_match_the_cpu(policy, monkeypatch):
    """The shared-memory kernels on real hardware, each shape forced on every contraction
    of LeNet-5 and MLP (tests/test_gpu_emulation.py runs the same through the emulation)."""
    if policy == "block":
        choose = gpu_schedule.choose_strategy
        monkeypatch.setattr(gpu_schedule, "choose_strategy", lambda c, tensors: (
            ("block", None) if c.reduce == "sum" else choose(c, tensors)))
    else:
        shape = next(s for s in gpu_schedule.TILES if f"{s[0]}x{s[1]}" == policy.split()[1])
        monkeypatch.setattr(gpu_schedule, "worth_tiling", lambda rows, cols, terms: True)
        monkeypatch.setattr(gpu_schedule, "tile_shape", lambda rows, cols: shape)
    for name in ("mlp", "lenet5"):
        m = model(name)
        gpu, cpu = compile(m, target="ptx", cache=False), compile(m, cache=False)
        inputs = reference.random_inputs(m, batch=37, seed=37)
        loss, grads = gpu.value_and_grad(inputs)
        expected_loss, expected_grads = cpu.value_and_grad(inputs)
        assert loss == pytest.approx(expected_loss, rel=1e-4)
        for key in expected_grads:
            assert_close(grads[key], expected_grads[key])


@pytest.mark.parametrize("optimizer, settings", [
    ("sgd", {"lr": 0.05}), ("momentum", {"lr": 0.02}), ("adam", {"lr": 0.001, "eps": 1e-3})])
def test_train_steps_follow_the_cpu(optimizer, settings):
    """Hyperparameters (Adam's bias corrections change every step) and optimizer state
    are uploaded and kept on the device. The settings keep the comparison well posed:
    the loss stays far from zero, and Adam's eps is well above the rounding noise of
    near-zero gradients (which its default 1e-8 turns into steps of +-lr either way)."""
    m = model("softmax_regression")
    gpu = compile(m, target="ptx", optimizer=optimizer)
    cpu = compile(m, optimizer=optimizer, cache=False)
    inputs = reference.random_inputs(m, batch=50, seed=4)
    for program in (gpu, cpu):
        program.configure(**settings)
    for _ in range(5):
        assert gpu.train_step(inputs) == pytest.approx(cpu.train_step(inputs), rel=1e-4)
    expected = cpu.get_params()
    for key, value in gpu.get_params().items():
        assert_close(value, expected[key])


def test_first_lenet5_steps_on_real_images_follow_the_cpu():
    """Ten steps agree closely; later a near-tie in a max-pool or a ReLU can go the other
    way on one side (float32 rounding), and from then on the two runs are different
    trajectories (measured on the CPU against the emulated GPU kernels: equal to 1e-7
    for 20 steps, then 1e-2 apart)."""
    data = load_dataset("embedded")
    m = model("lenet5")
    gpu = compile(m, target="ptx", optimizer="sgd")
    cpu = compile(m, optimizer="sgd", cache=False)
    for program in (gpu, cpu):
        program.configure(lr=0.05)
    for step in range(10):
        batch = {"x": data.x_train[64 * step:64 * (step + 1)],
                 "y": data.y_train[64 * step:64 * (step + 1)]}
        assert gpu.train_step(batch) == pytest.approx(cpu.train_step(batch), rel=1e-3)


def test_lenet5_three_epochs_reach_the_cpu_accuracy():
    """The two runs part ways after a few dozen steps (see above), so their accuracies
    differ by what float32 rounding alone does to this training run. Measured on the
    CPU (embedded data, 3 epochs, SGD with lr 0.05): initial weights one rounding apart
    end between 71.6% and 73.2% test accuracy; one thread or two, 73.3% and 71.6%; the
    emulated GPU kernels 71.6%. Hence 3 points, not less; a wrong kernel is off by far
    more."""
    data = load_dataset("embedded")
    m = model("lenet5")
    accuracy = {}
    for target in ("ptx", "cpu"):
        program = compile(m, target=target, optimizer="sgd")
        history = train(program, data, epochs=3, batch=64, lr=0.05, seed=0, quiet=True)
        accuracy[target] = history[-1]["test_accuracy"]
    assert accuracy["cpu"] > 0.65
    assert abs(accuracy["ptx"] - accuracy["cpu"]) <= 0.03, accuracy


def test_a_program_may_be_called_from_another_thread():
    m = model("mlp")
    gpu = compile(m, target="ptx")
    inputs = reference.random_inputs(m, batch=8)
    expected = gpu.forward(inputs)["logits"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(gpu.forward(inputs)))
    worker.start()
    worker.join()
    assert np.array_equal(result["logits"], expected)


def test_ptx_the_driver_refuses_is_a_cuda_error_not_a_missing_gpu():
    m = model("linreg")
    spec = compile(m, target="ptx").spec
    with pytest.raises(CudaError, match="^cuModuleLoadData failed: CUDA_ERROR_") as caught:
        CudaProgram(spec, ".version 8.0\n.target sm_80\n.address_size 64\nnot ptx", m.params)
    assert not isinstance(caught.value, GPUUnavailable)
    assert "; the driver's PTX compiler says: " in str(caught.value)     # its log, asked again


def test_powers_of_negative_bases_follow_c_pow():
    """x ^ e from ex2.approx and lg2.approx, with C's rules for a negative base put back."""
    m = parse("model powers\ninput x[N, 8]\ninput e[N, 8]\noutput general = x ^ e\n"
              "output integer = x ^ 9 + x ^ 3.0 - x ^ -11\n", filename="powers.nn")
    x = np.array([[-2, -2, -2, -2, 0, 0, 3, -0.5]] * 3, np.float32)
    e = np.array([[3, 2, 0.5, 0, 0, -1, 2.5, -3]] * 3, np.float32)
    outputs = compile(m, target="ptx").forward({"x": x, "e": e})
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(outputs["general"], np.power(x, e), rtol=1e-5)
        np.testing.assert_allclose(outputs["integer"], x ** 9 + x ** 3 - x ** -11.0, rtol=1e-6)


def test_graphs_and_the_profile_on_the_device():
    """An entry run as one CUDA graph computes what its separate launches compute, bit
    for bit (the same kernels in the same order); the profile times every kernel."""
    m = model("lenet5")
    plain, graphed = compile(m, target="ptx", optimizer="sgd"), compile(m, target="ptx", optimizer="sgd")
    plain.use_graphs, graphed.use_graphs = False, True   # (gpu_check.sh: CUDA_LAUNCH_BLOCKING=1)
    for batch in (64, 37, 64):
        inputs = reference.random_inputs(m, batch=batch, seed=batch)
        assert plain.train_step(inputs) == graphed.train_step(inputs)
        np.testing.assert_array_equal(graphed.forward(inputs)["logits"], plain.forward(inputs)["logits"])
    for name, value in plain.get_params().items():
        np.testing.assert_array_equal(graphed.get_params()[name], value)
    profile = plain.profile("train_step", reference.random_inputs(m, batch=64), repeats=3)
    assert [p[0] for p in profile] == [launch["kernel"] for launch in plain.spec["launches"]["train_step"]]
    assert all(ms > 0 for *_, ms in profile)
