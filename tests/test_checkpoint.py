"""Tests for runtime/checkpoint.py: round trip, atomic writes, damaged files, wrong model."""
import json
import os

import numpy as np
import pytest

from compiler.native import compile
from compiler.pipeline import load as load_model
from runtime import checkpoint
from runtime.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program_for(name):
    return compile(load_model(os.path.join(ROOT, "examples", f"{name}.nn")))


@pytest.fixture(scope="module")
def mlp():
    return program_for("mlp")


def shapes(program):
    return {name: value.shape for name, value in program.get_params().items()}


def save_mlp(path, program, **extra):
    checkpoint.save(path, program.get_params(), model_name="mlp",
                    model_hash=program.model_hash, extra=extra or None)


def test_round_trip(tmp_path, mlp):
    path = tmp_path / "mlp.ckpt.npz"
    params = {k: v + 0.5 for k, v in mlp.get_params().items()}
    history = [{"epoch": 1, "train_loss": np.float64(0.5), "test_accuracy": None}]
    checkpoint.save(path, params, model_name="mlp", model_hash=mlp.model_hash,
                    extra={"history": history, "epoch": 1})
    loaded, meta = checkpoint.load(path, expect_hash=mlp.model_hash, expect_params=shapes(mlp))
    assert set(loaded) == {"h1.W", "h1.b", "h2.W", "h2.b", "logits.W", "logits.b"}
    for name in params:
        assert loaded[name].dtype == params[name].dtype
        np.testing.assert_array_equal(loaded[name], params[name])
    assert meta["model"] == "mlp" and meta["model_hash"] == mlp.model_hash
    assert meta["format"] == checkpoint.FORMAT and meta["params"]["h1.W"] == [784, 128]
    assert meta["extra"] == {"history": [{"epoch": 1, "train_loss": 0.5,
                                          "test_accuracy": None}], "epoch": 1}
    assert np.load(path)["h1.W"].shape == (784, 128)       # a plain .npz for other tools
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.ckpt.npz"]


def test_program_helpers(tmp_path, mlp):
    other = program_for("mlp")
    other.set_params({k: np.ones_like(v) for k, v in other.get_params().items()})
    checkpoint.save_program(tmp_path / "c.npz", other, extra={"epoch": 2})
    meta = checkpoint.restore(tmp_path / "c.npz", mlp)
    assert meta["extra"] == {"epoch": 2}
    assert all((v == 1).all() for v in mlp.get_params().values())


@pytest.mark.parametrize("target", ["savez", "replace"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, mlp, monkeypatch, target):
    path = tmp_path / "mlp.npz"
    save_mlp(path, mlp, epoch=1)
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")          # something written, then a crash
        raise OSError(28, "No space left on device")

    def broken_replace(src, dst):
        raise RuntimeError("crash during rename")

    if target == "savez":
        monkeypatch.setattr(np, "savez", broken_savez)
        with pytest.raises(CheckpointError, match=r"mlp\.npz: cannot write .*No space left"):
            save_mlp(path, mlp, epoch=2)
    else:
        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(RuntimeError, match="crash during rename"):
            save_mlp(path, mlp, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mlp.npz"]              # no temporary left behind
    assert checkpoint.load(path)[1]["extra"] == {"epoch": 1}


def test_unwritable_directory(tmp_path, mlp):
    with pytest.raises(CheckpointError, match="missing/c.npz: cannot write"):
        save_mlp(tmp_path / "missing" / "c.npz", mlp)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.npz: no such checkpoint file"):
        checkpoint.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("damage", ["truncated", "random", "flipped", "plain npz", "model file"])
def test_damaged_file_names_the_file(tmp_path, mlp, damage):
    path = tmp_path / "bad.npz"
    save_mlp(path, mlp)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "flipped":                                 # corrupt one weight's bytes
        middle = len(good) // 2
        path.write_bytes(good[:middle] + bytes(b ^ 0xFF for b in good[middle:middle + 64])
                         + good[middle + 64:])
    elif damage == "model file":                              # --weights mlp.nn
        path.write_text("model mlp\ninput x[N, 784]\n")
    else:
        np.savez(path, W=np.zeros(3))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if damage in ("truncated", "flipped"):
        assert "corrupt" in message
    elif damage == "plain npz":
        assert message.endswith("not a symnet checkpoint (no metadata entry)")
    else:
        assert message.endswith("not a symnet checkpoint (those are the .npz archives "
                                "`symnet train -o` writes)")


def test_checkpoint_of_another_model(tmp_path, mlp):
    lenet = program_for("lenet5")
    path = tmp_path / "lenet.npz"
    checkpoint.save(path, lenet.get_params(), model_name="lenet5", model_hash=lenet.model_hash)
    with pytest.raises(CheckpointError, match=r"lenet\.npz: checkpoint of model 'lenet5' has "
                                              r"no parameter 'h1\.W'"):
        checkpoint.load(path, expect_hash=mlp.model_hash, expect_params=shapes(mlp))
    with pytest.raises(CheckpointError, match=r"lenet\.npz: .*'lenet5' \(hash "
                                              f"{lenet.model_hash}\\).*hash {mlp.model_hash}"):
        checkpoint.load(path, expect_hash=mlp.model_hash)
    with pytest.raises(CheckpointError, match="lenet5"):
        checkpoint.restore(path, mlp)


def test_shape_mismatch_names_the_parameter(tmp_path, mlp):
    params = mlp.get_params()
    params["h2.W"] = np.zeros((128, 32), np.float32)
    path = tmp_path / "narrow.npz"
    checkpoint.save(path, params, model_name="mlp", model_hash="0" * 16)
    with pytest.raises(CheckpointError, match=r"parameter 'h2\.W' has shape \[128, 32\] in the "
                                              r"checkpoint of model 'mlp', but the model "
                                              r"expects \[128, 64\]"):
        checkpoint.load(path, expect_params=shapes(mlp))
    extra = dict(mlp.get_params(), **{"h3.W": np.zeros(2)})
    checkpoint.save(path, extra, model_name="mlp", model_hash="0" * 16)
    with pytest.raises(CheckpointError, match="has parameter 'h3.W', which this model lacks"):
        checkpoint.load(path, expect_params=shapes(mlp))


@pytest.mark.parametrize("value, kind", [(np.array(["a"] * 10), "<U1"),
                                         (np.zeros(10, complex), "complex128")],
                         ids=["strings", "complex"])
def test_weights_that_are_not_real_numbers(tmp_path, mlp, value, kind):
    """Refused by load itself: export and show take its arrays without a Program to check
    them (strings were an internal error there, complex lost its imaginary part)."""
    params = dict(mlp.get_params(), **{"logits.b": value})
    path = tmp_path / "odd.npz"
    checkpoint.save(path, params, model_name="mlp", model_hash=mlp.model_hash)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path, expect_params=shapes(mlp))
    assert str(info.value) == (f"{path}: parameter 'logits.b' holds {kind} values, "
                               "not real numbers")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weights_that_are_not_finite(tmp_path, mlp, capsys, bad):
    """eval printed `loss nan` and `accuracy 10.00%`, run printed nan probabilities, and
    train --weights stopped at its first step blaming the learning rate; now each says
    what is wrong with the checkpoint, in one line, before anything runs."""
    from symnet import cli
    params = mlp.get_params()
    params["h2.b"][[3, 7]] = bad
    path = tmp_path / "bad.npz"
    checkpoint.save(path, params, model_name="mlp", model_hash=mlp.model_hash)
    message = (f"{path}: parameter 'h2.b' holds nan or inf (2 of 64 values); a checkpoint's "
               "weights must be finite")
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, mlp)
    assert str(info.value) == message
    assert np.isfinite(mlp.get_params()["h2.b"]).all()          # left as it was
    model = os.path.join(ROOT, "examples", "mlp.nn")
    for argv in (["eval", model, "--data", "embedded"],
                 ["run", model, "--input", os.path.join(ROOT, "docs", "tutorial", "shirt.png")],
                 ["train", model, "--data", "embedded", "--epochs", "1", "-q"]):
        assert cli.main([*argv, "--weights", str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.err == f"error: {message}\n" and captured.out == ""


def test_metadata_extra_that_is_not_a_mapping(tmp_path, mlp):
    """`extra` must be a dict (or None): anything else would break every reader of
    meta["extra"] (eval and run look up the class names there)."""
    path = tmp_path / "c.npz"
    with pytest.raises(CheckpointError, match="c.npz: extra metadata must be a dict, got list"):
        checkpoint.save(path, mlp.get_params(), model_name="mlp", model_hash=mlp.model_hash,
                        extra=[1, 2])
    assert not path.exists()
    save_mlp(path, mlp, epoch=1)                     # then edited by hand
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays[checkpoint.META_KEY]))
    arrays[checkpoint.META_KEY] = np.array(json.dumps({**meta, "extra": 5}))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(info.value) == f"{path}: corrupt checkpoint (its extra metadata is not a dict)"
