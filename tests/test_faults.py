"""Faults during training, checkpointing and caching: what survives, what is reported.

- a loss that overflows stops training with a TrainingError naming the epoch and step,
  and the parameters (and optimizer state) are put back;
- Ctrl-C (from a callback, or a real SIGINT to `symnet train`) ends training cleanly
  with a checkpoint; SIGKILL at any moment leaves the last checkpoint loadable;
- a checkpoint write that fails at any stage leaves the previous file intact and no
  temporary behind; a damaged checkpoint is refused with one clear line;
- the compiled-code cache survives concurrent writers, corrupt entries and an
  unusable directory, and `clear_cache` / `symnet cache clear` empty it.
"""
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import compiler
from runtime import checkpoint, files, jit
from runtime.checkpoint import CheckpointError
from runtime.train import TrainingError, train

ROOT = Path(__file__).resolve().parent.parent

LINREG = """\
model linreg
input x[N]
input y[N]
param a = 0.4
param b = 0.1
yhat = a * x + b
loss mean((y - yhat) ^ 2)
"""

SMALL = """\
model small
input x[N, 3]
output o = tanh(dense(x, 2))
"""


def line(n=40, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, n)
    return SimpleNamespace(x_train=x, y_train=2 * x + 1, x_test=None, y_test=None)


def symnet(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "symnet", *map(str, args)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


# ---- non-finite loss ----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_overflowing_loss_names_epoch_and_step_and_restores(optimizer):
    """A finite but huge feature (1e20) overflows float32 in the loss at the step that
    holds it: step 3 of 4 without shuffling. Nothing was completed, so the parameters go
    back to their initial values and the optimizer state is zeroed."""
    program = compiler.compile(compiler.parse(LINREG, "linreg.nn"), optimizer=optimizer,
                               cache=False)
    start = program.get_params()
    data = line()
    data.x_train[25] = 1e20
    with pytest.raises(TrainingError) as info:
        train(program, data, epochs=3, batch=10, shuffle=False, lr=0.01, quiet=True)
    error = info.value
    assert (error.epoch, error.step, len(error.history)) == (1, 3, 0)
    assert "loss became inf at epoch 1, step 3 of 4" in str(error)
    assert "restored to their values before training" in str(error)
    assert program.get_params() == start
    assert all((program.persistent[s] == 0).all() for s in program.spec["states"])
    history = train(program, line(), epochs=2, batch=10, lr=0.01, quiet=True)
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])


def test_divergence_in_a_later_epoch_restores_that_epochs_start():
    """The learning rate is raised after epoch 2 (from the callback): epoch 3 blows up,
    and the parameters return to those at the end of epoch 2."""
    program = compiler.compile(compiler.parse(LINREG, "linreg.nn"), dtype="f64", cache=False)
    saved = []

    def after_epoch(program, history):
        saved.append(program.get_params())
        if len(history) == 2:
            program.configure(lr=1e200)
    with pytest.raises(TrainingError, match=r"at epoch 3, step \d+ of 4.*end of epoch 2") as info:
        train(program, line(), epochs=10, batch=10, lr=0.1, quiet=True, callback=after_epoch)
    assert info.value.epoch == 3 and len(info.value.history) == 2
    assert program.get_params() == saved[1]


def test_the_first_nonfinite_tensor_is_one_the_last_call_wrote():
    """A parameter is named first; after a clean train step nothing is named, although
    value_and_grad left NaN in h1.W's gradient buffer, which the train step never writes
    (its update runs on the gradient in registers)."""
    model = compiler.load(ROOT / "examples" / "mlp.nn")
    program = compiler.compile(model, cache=False)
    inputs = compiler.reference.random_inputs(model, batch=4)
    good = program.get_params()
    program.set_params({**good, "h1.W": np.full_like(good["h1.W"], np.inf)})
    program.value_and_grad(inputs)
    assert program.first_nonfinite() == "h1.W"
    assert not np.isfinite(program._last["arrays"]["grad:h1.W"]).all()
    program.set_params(good)
    program.train_step(inputs)
    assert program.first_nonfinite() is None
    assert "grad:h1.W" not in program.spec["written"]["train_step"]


# ---- interrupts ---------------------------------------------------------------------------------
def test_keyboard_interrupt_then_checkpoint_round_trip(tmp_path):
    """Ctrl-C from the callback ends training between steps; what train() returns
    saves and restores exactly."""
    model = compiler.parse(LINREG, "linreg.nn")
    program = compiler.compile(model, dtype="f64", cache=False)

    def stop(program, history):
        if len(history) == 3:
            raise KeyboardInterrupt
    history = train(program, line(), epochs=50, batch=10, lr=0.1, quiet=True, callback=stop)
    assert history.interrupted and len(history) == 3
    path = tmp_path / "linreg.npz"
    checkpoint.save_program(path, program, extra={"epoch": 3, "interrupted": True})
    fresh = compiler.compile(model, dtype="f64", cache=False)
    meta = checkpoint.restore(path, fresh)
    assert meta["extra"] == {"epoch": 3, "interrupted": True}
    assert fresh.get_params() == program.get_params()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One compiled-code cache for this module's subprocesses (the second one is warm)."""
    return str(tmp_path_factory.mktemp("cache"))


def start_training(tmp_path, cache_dir, *extra):
    """`symnet train mlp -q -o CKPT` for (nearly) ever, on 300 embedded examples."""
    ckpt = tmp_path / "mlp.npz"
    process = symnet("train", "examples/mlp.nn", "--data", "embedded", "--limit", "300",
                     "--epochs", "100000", "-q", "-o", ckpt, *extra,
                     env={"SYMNET_CACHE": cache_dir})
    return process, ckpt


def wait_for_epoch(process, epoch, timeout=120):
    """Read stdout until the line of `epoch` is printed; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = process.stdout.readline()
        if not text:
            break
        lines.append(text)
        if text.startswith(f"epoch {epoch}/"):
            return lines
    process.kill()
    pytest.fail(f"no epoch {epoch} line; stdout {lines}, stderr {process.stderr.read()}")


@pytest.mark.parametrize("signals", [1, 2], ids=["sigint", "two_sigints"])
def test_sigint_to_symnet_train_saves_and_exits_130(tmp_path, cache_dir, signals):
    process, ckpt = start_training(tmp_path, cache_dir)
    try:
        wait_for_epoch(process, 2)
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"complete epoch(s): saved the weights to {ckpt}" in stderr
    params, meta = checkpoint.load(ckpt)
    assert meta["extra"]["interrupted"] is True and meta["extra"]["epoch"] >= 2
    assert set(params) == {"h1.W", "h1.b", "h2.W", "h2.b", "logits.W", "logits.b"}
    assert all(np.isfinite(v).all() for v in params.values())
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_sigkill_during_training_leaves_a_loadable_checkpoint(tmp_path, cache_dir):
    """Killed right after an epoch line, i.e. while that epoch's checkpoint is written:
    the file holds one whole epoch, this one or the one before."""
    process, ckpt = start_training(tmp_path, cache_dir)
    try:
        wait_for_epoch(process, 3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    params, meta = checkpoint.load(ckpt)
    assert meta["extra"]["epoch"] in (2, 3)
    assert all(np.isfinite(v).all() for v in params.values())


KEEP_SAVING = """
import sys
import numpy as np
from runtime import checkpoint
versions = [{"W": np.full((1000, 1000), float(k)), "b": np.full(7, float(k))} for k in (1, 2)]
for k in range(10**9):
    checkpoint.save(sys.argv[1], versions[k % 2], model_name="m", model_hash="h", extra={"k": k})
    if k == 0:
        print("saved", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.13, 0.31])
def test_sigkill_while_saving_in_a_loop(tmp_path, delay):
    """A process saving 8 MB checkpoints back to back is killed at an arbitrary moment:
    the file is always one complete version, never a mixture or a partial archive."""
    path = tmp_path / "c.npz"
    process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(path)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "saved\n"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    params, meta = checkpoint.load(path)
    version = 1.0 if meta["extra"]["k"] % 2 == 0 else 2.0
    assert (params["W"] == version).all() and (params["b"] == version).all()


# ---- checkpoint writes that fail ----------------------------------------------------------------
OLD = {"W": np.arange(6.0).reshape(2, 3), "b": np.array([0.5])}
NEW = {"W": -np.arange(6.0).reshape(2, 3), "b": np.array([-0.5])}


def save(path, params):
    checkpoint.save(path, params, model_name="m", model_hash="h", extra={"which": params is NEW})


REAL_SAVEZ = np.savez


def half_written_savez(file, **arrays):
    """np.savez that gets half way and then finds the disk full."""
    buffer = io.BytesIO()
    REAL_SAVEZ(buffer, **arrays)
    file.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    raise OSError(28, "No space left on device")


# Where a save can fail: creating the temporary, writing it, fsyncing it, renaming it.
STAGES = {"open": (os, "open"), "write": (np, "savez"), "fsync": (os, "fsync"),
          "replace": (os, "replace")}
IO_ERROR = OSError(5, "Input/output error")


def failing(module, name, failure):
    """`module.name` raising `failure` for the checkpoint's temporary file; os.open of
    the folder (to fsync the rename) still works."""
    real = getattr(module, name)

    def call(*args, **kwargs):
        if name in ("savez", "fsync") or ".tmp" in str(args[0]):
            raise failure
        return real(*args, **kwargs)
    return call


@pytest.mark.parametrize("stage, failure", [
    *[(stage, IO_ERROR) for stage in sorted(STAGES)],
    *[(stage, KeyboardInterrupt()) for stage in sorted(STAGES)],
    ("partial_write", OSError(28, "No space left on device")),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, stage, failure):
    path = tmp_path / "c.npz"
    save(path, OLD)
    before = path.read_bytes()
    if stage == "partial_write":
        monkeypatch.setattr(np, "savez", half_written_savez)
    else:
        module, name = STAGES[stage]
        monkeypatch.setattr(module, name, failing(module, name, failure))
    expected = CheckpointError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        save(path, NEW)
    monkeypatch.undo()
    if expected is CheckpointError:
        message = str(info.value)
        assert message.startswith(f"{path}: cannot write") and "\n" not in message
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]               # no temporary left behind
    params, meta = checkpoint.load(path)
    assert meta["extra"] == {"which": False} and (params["W"] == OLD["W"]).all()


def test_failure_after_the_rename_keeps_the_new_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C while the folder is fsynced: the rename happened, the new file is whole."""
    path = tmp_path / "c.npz"
    save(path, OLD)

    def interrupted(directory):
        raise KeyboardInterrupt
    monkeypatch.setattr(files, "_fsync_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(path, NEW)
    monkeypatch.undo()
    params, meta = checkpoint.load(path)
    assert meta["extra"] == {"which": True} and (params["W"] == NEW["W"]).all()
    assert os.listdir(tmp_path) == ["c.npz"]


# ---- damaged checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.npz"
    params = {"h.W": np.random.default_rng(0).normal(size=(40, 30)), "h.b": np.zeros(30)}
    checkpoint.save(path, params, model_name="m", model_hash="h", extra={"epoch": 4})
    return path.read_bytes(), params


def load_damaged(tmp_path, data, params):
    """Load damaged bytes: a one-line CheckpointError naming the file, or (when the
    damage missed everything checked) exactly the original arrays."""
    path = tmp_path / "damaged.npz"
    path.write_bytes(data)
    try:
        loaded, _ = checkpoint.load(path, expect_params={k: v.shape for k, v in params.items()})
    except CheckpointError as error:
        message = str(error)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return message
    for name, value in params.items():
        np.testing.assert_array_equal(loaded[name], value)
    return None


@pytest.mark.parametrize("fraction", [0, 0.001, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, good_checkpoint, fraction):
    data, params = good_checkpoint
    message = load_damaged(tmp_path, data[:int(len(data) * fraction)], params)
    assert message is not None and "corrupt or truncated" in message, message


def test_flipped_bytes_anywhere_are_refused_or_harmless(tmp_path, good_checkpoint):
    """Every 97th byte flipped in turn (about 200 positions): never wrong values, never
    an exception other than CheckpointError."""
    data, params = good_checkpoint
    refused = 0
    for position in range(0, len(data), 97):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        refused += load_damaged(tmp_path, bytes(damaged), params) is not None
    assert refused > len(data) // 97 * 0.9          # nearly all flips are caught by CRCs


def test_refused_restore_leaves_the_program_alone(tmp_path):
    program = compiler.compile(compiler.parse(SMALL, "small.nn"), cache=False)
    before = program.get_params()
    path = tmp_path / "small.npz"
    checkpoint.save_program(path, program)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 40])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.restore(path, program)
    assert all((program.get_params()[k] == v).all() for k, v in before.items())


# ---- the compiled-code cache --------------------------------------------------------------------
COMPILE_AND_RUN = """
import sys
import numpy as np
import compiler
model = compiler.parse(open(sys.argv[1]).read(), "model.nn")
program = compiler.compile(model, dtype="f64")
x = np.linspace(-1, 1, 12).reshape(4, 3)
np.save(sys.argv[2], program.forward({"x": x})["o"])
print("from cache" if program.library.from_cache else "compiled")
"""


def compile_in_subprocess(tmp_path, cache, tag):
    model = tmp_path / "model.nn"
    model.write_text(SMALL)
    return subprocess.Popen([sys.executable, "-c", COMPILE_AND_RUN, str(model),
                             str(tmp_path / f"{tag}.npy")], cwd=ROOT,
                            env={**os.environ, "SYMNET_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_compile_the_same_model_at_once(tmp_path):
    cache = tmp_path / "cache"
    processes = [compile_in_subprocess(tmp_path, cache, tag) for tag in ("a", "b")]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    np.testing.assert_array_equal(a, b)
    assert jit.cache_stats(str(cache))["entries"] == 1
    assert not [f for f in os.listdir(cache) if "tmp" in f]
    third = compile_in_subprocess(tmp_path, cache, "c")
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0 and stdout.strip() == "from cache", stderr
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), a)


@pytest.fixture
def warm_cache(tmp_path, monkeypatch):
    """A cache dir (via $SYMNET_CACHE) holding the compiled SMALL model; returns
    (model, expected outputs, cache dir)."""
    monkeypatch.setenv("SYMNET_CACHE", str(tmp_path))
    model = compiler.parse(SMALL, "small.nn")
    program = compiler.compile(model, dtype="f64")
    assert not program.library.from_cache
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    return model, program.forward({"x": x})["o"], tmp_path


def recompiled(model):
    program = compiler.compile(model, dtype="f64")
    return program, program.forward({"x": np.linspace(-1, 1, 12).reshape(4, 3)})["o"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_object_entry_is_rebuilt(warm_cache, damage):
    model, expected, cache = warm_cache
    [entry] = glob.glob(os.path.join(cache, "*.symobj"))
    data = bytearray(open(entry, "rb").read())
    data = {"truncate": data[:len(data) // 2], "empty": b"", "garbage": os.urandom(len(data)),
            "flip": data[:-10] + bytes(b ^ 0xFF for b in data[-10:])}[damage]
    with open(entry, "wb") as f:
        f.write(data)
    program, outputs = recompiled(model)
    assert not program.library.from_cache
    np.testing.assert_array_equal(outputs, expected)
    program, outputs = recompiled(model)              # the rebuilt entry is good again
    assert program.library.from_cache
    np.testing.assert_array_equal(outputs, expected)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"spec": 1}', "\x00\x01", "0" * 64 + "\n{}"])
def test_unreadable_front_cache_entry_is_rebuilt(warm_cache, content):
    model, expected, cache = warm_cache
    [entry] = glob.glob(os.path.join(cache, "*.spec"))
    with open(entry, "w") as f:
        f.write(content)
    np.testing.assert_array_equal(recompiled(model)[1], expected)


@pytest.mark.parametrize("spec", [None, {}], ids=["null", "empty"])
def test_front_cache_entry_with_a_wrong_spec_is_rebuilt(warm_cache, spec):
    model, expected, cache = warm_cache
    [entry] = glob.glob(os.path.join(cache, "*.spec"))
    with open(entry, "rb") as f:
        digest, body = f.read().split(b"\n", 1)
    with open(entry, "wb") as f:                      # the checksum left as it was
        f.write(digest + b"\n" + json.dumps({**json.loads(body), "spec": spec}).encode())
    np.testing.assert_array_equal(recompiled(model)[1], expected)


def test_unusable_cache_directory_is_not_fatal(tmp_path, monkeypatch):
    """$SYMNET_CACHE names something below a regular file: nothing can be cached, but
    compiling works, and the cache tools report an empty cache."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SYMNET_CACHE", str(blocker / "cache"))
    _, outputs = recompiled(compiler.parse(SMALL, "small.nn"))
    assert outputs.shape == (4, 2) and np.isfinite(outputs).all()
    assert jit.clear_cache() == 0 and jit.cache_stats()["entries"] == 0


def test_clear_cache_removes_compiled_code(warm_cache):
    model, expected, cache = warm_cache
    assert jit.cache_stats()["entries"] == 1
    assert jit.clear_cache() == 1
    assert jit.cache_stats() == {"dir": str(cache), "entries": 0, "bytes": 0}
    assert not glob.glob(os.path.join(cache, "*.symobj"))
    program, outputs = recompiled(model)               # rebuilt from scratch
    assert not program.library.from_cache
    np.testing.assert_array_equal(outputs, expected)


def test_clear_cache_empties_the_directory(warm_cache):
    """Object entries, the front cache's spec entries pointing at them, temporaries."""
    _, _, cache = warm_cache
    jit.clear_cache()
    assert os.listdir(cache) == []


def test_symnet_cache_clear(warm_cache):
    _, _, cache = warm_cache
    info = subprocess.run([sys.executable, "-m", "symnet", "cache", "info"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and f"{cache}: 1 compiled model(s)" in info.stdout
    cleared = subprocess.run([sys.executable, "-m", "symnet", "cache", "clear"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == f"removed 1 compiled model(s) from {cache}"
    assert not glob.glob(os.path.join(cache, "*.symobj"))


def test_atomic_write_takes_the_umask_and_leaves_nothing_on_failure(tmp_path):
    """runtime/files.write_atomically, which every file symnet keeps goes through."""
    old = os.umask(0o022)
    try:
        files.write_atomically(tmp_path / "a.txt", b"one")
        files.write_atomically(tmp_path / "b.so", lambda f: f.write(b"two"), mode=0o777)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.so").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "b.so").read_bytes() == b"two"

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        files.write_atomically(tmp_path / "a.txt", half_then_fail)
    assert (tmp_path / "a.txt").read_bytes() == b"one"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.so"]
