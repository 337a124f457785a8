"""Tests for the runtime verbs of the command line: train, eval, run, compile, cache
(symnet/run_verbs.py). Most run the command line in this process (cli.main); those
about exit statuses, stderr and signals run `python -m symnet` as a user would. The
cache of compiled code lives in a temporary folder."""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest

from compiler.pipeline import load
from runtime import checkpoint
from runtime.data import DEBIAN_DIR, FASHION_CLASSES, load_dataset, save_png
from runtime.files import write_atomically
from symnet import cli, run_verbs
from repository import ROOT

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss [\d.]+  acc [\d.]+%  test loss [\d.]+  "
                        r"test acc ([\d.]+)%  [\d,]+ samples/s", re.M)


@pytest.fixture(scope="module", autouse=True)
def compiled_code_cache(tmp_path_factory):
    """Compiled code goes to a temporary cache, for this process and its children."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYMNET_CACHE", str(folder))
        yield folder


def symnet(*args):
    """`symnet ARGS` in this process (cli.main): status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return SimpleNamespace(returncode=status, stdout=out.getvalue(), stderr=err.getvalue())


def symnet_process(*args):
    """`python -m symnet ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "symnet", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def one_error_line(result):
    """The run failed with status 1 and printed exactly one `error:` line."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """softmax_regression trained for one epoch on 2000 examples of the default data."""
    path = tmp_path_factory.mktemp("train") / "softmax.ckpt"
    result = symnet("train", "examples/softmax_regression.nn", "--epochs", 1,
                    "--limit", 2000, "-o", path)
    return SimpleNamespace(result=result, path=path)


# ---- train ----------------------------------------------------------------------------
def test_train_prints_an_epoch_line_and_writes_a_checkpoint(trained):
    result = trained.result
    assert result.returncode == 0, result.stderr
    assert re.search(r"^data: .+: 2,000 training and [\d,]+ test examples$", result.stdout, re.M)
    assert re.search(r"^compiled softmax_regression for cpu \(f32\) in [\d.]+ s", result.stdout,
                     re.M)
    assert [m.group(1, 2) for m in EPOCH_LINE.finditer(result.stdout)] == [("1", "1")]
    params, meta = checkpoint.load(trained.path)
    assert meta["model"] == "softmax_regression" and meta["extra"]["epoch"] == 1
    assert params["W"].shape == (784, 10) and np.abs(params["W"]).max() > 0  # trained from zeros


def test_eval_reports_the_accuracy_training_printed_and_a_confusion_matrix(trained):
    result = symnet("eval", "examples/softmax_regression.nn", "--weights", trained.path)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"^accuracy ([\d.]+)%$", result.stdout, re.M).group(1))
    assert f"test acc {accuracy:.2f}%" in trained.result.stdout
    rows = [line.split() for line in result.stdout.splitlines()
            if re.match(r"^  \d ", line)]
    assert [row[1] for row in rows[:2]] == ["T-shirt/top", "Trouser"]
    confusion = np.array([[int(n) for n in row[-10:]] for row in rows])
    assert confusion.shape == (10, 10)
    y_test = load_dataset().y_test          # rows are the true classes
    assert confusion.sum(axis=1).tolist() == np.bincount(y_test, minlength=10).tolist()
    assert np.trace(confusion) / len(y_test) == pytest.approx(accuracy / 100, abs=5e-5)


def test_run_classifies_a_png_with_a_probability(trained, tmp_path):
    data = load_dataset("embedded")
    image = tmp_path / "trouser.png"
    save_png(image, data.x_test[data.y_test == 1][0, 0])
    result = symnet("run", "examples/softmax_regression.nn", "--weights", trained.path,
                    "--input", image, "--top", 3)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^predicted class: (\d) (.+), probability ([\d.]+)$", result.stdout, re.M)
    assert match, result.stdout
    assert FASHION_CLASSES[int(match.group(1))] == match.group(2)
    assert 0 <= float(match.group(3)) <= 1
    top = re.findall(r"^  (\d) .*  ([\d.]+)$", result.stdout, re.M)
    assert len(top) == 3 and top[0] == match.group(1, 3)
    assert [float(p) for _, p in top] == sorted((float(p) for _, p in top), reverse=True)


def test_run_takes_a_batch_from_npy(trained, tmp_path):
    batch = tmp_path / "batch.npy"
    np.save(batch, load_dataset("embedded").x_test[:4])
    result = symnet("run", "examples/softmax_regression.nn", "--weights", trained.path,
                    "--input", batch, "--top", 2)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^example \d: \d .+ \([\d.]+\), \d .+ \([\d.]+\)$", result.stdout,
                          re.M)) == 4


LINE = """\
model line
input x[N]
param a = 2
param b = 1
output yhat = a * x + b
"""


def test_run_takes_a_1d_batch_of_scalar_examples(tmp_path):
    model = tmp_path / "line.nn"
    model.write_text(LINE)
    batch = tmp_path / "x.npy"
    np.save(batch, np.array([0.0, 1.0, 2.5]))
    result = symnet("run", model, "--input", batch)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "yhat = [1, 3, 6]\n"


@pytest.mark.parametrize("values, message", [
    (np.full(3, np.nan), "holds inf or nan (first in example 0)"),
    (np.array([1.0, 2.0, -np.inf]), "holds inf or nan (first in example 2)"),
    (np.array([1.0, 1e300]), "holds inf or nan (first in example 1)"),     # inf in float32
    (np.zeros(0), "holds no examples"),
], ids=["nan", "inf", "beyond_float32", "empty"])
def test_run_refuses_an_input_without_finite_examples(tmp_path, values, message):
    """Not 'predicted class: 0, probability nan', nor an empty result with status 0."""
    model, x = tmp_path / "line.nn", tmp_path / "x.npy"
    model.write_text(LINE)
    np.save(x, values)
    result = symnet_process("run", model, "--input", x)
    assert one_error_line(result) == f"error: {x}: {message}"
    assert result.stdout == ""


def test_run_of_a_model_without_output_is_one_error_line(tmp_path):
    """linreg has a loss but no output: there is nothing for run to print."""
    x = tmp_path / "x.npy"
    np.save(x, np.array(2.0))
    line = one_error_line(symnet("run", "examples/linreg.nn", "--input", x))
    assert line == ("error: model linreg has no output for run to print; mark the tensor "
                    "to compute as one: `output NAME = ...`")


def test_train_from_a_checkpoint_continues_from_its_weights(trained, tmp_path):
    """With a learning rate too small to move them, the weights written are the
    checkpoint's, not the file's initial zeros, and the losses measured after the epoch
    are those the first run measured at its end."""
    start, _ = checkpoint.load(trained.path)
    out = tmp_path / "more.ckpt"
    result = symnet("train", "examples/softmax_regression.nn", "--weights", trained.path,
                    "--epochs", 1, "--limit", 2000, "--lr", 1e-12, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    assert f"starting from the weights in {trained.path}\n" in result.stdout
    params, meta = checkpoint.load(out)
    np.testing.assert_allclose(params["W"], start["W"], atol=1e-6)
    assert np.abs(params["W"]).max() > 1e-3 and meta["extra"]["start"] == str(trained.path)
    losses = re.compile(r"epoch 1/1  loss ([\d.]+) .* test loss ([\d.]+)")
    assert losses.search(result.stdout).groups() == losses.search(trained.result.stdout).groups()


def test_train_from_the_checkpoint_of_another_model_fails_before_training(trained, tmp_path):
    line = one_error_line(symnet("train", "examples/mlp.nn", "--weights", trained.path,
                                 "-o", tmp_path / "mlp.ckpt"))
    assert line == f"error: {trained.path}: checkpoint of model 'softmax_regression' has no " \
                   "parameter 'h1.W' (it has W, b)"
    assert not (tmp_path / "mlp.ckpt").exists()


def test_eval_with_the_checkpoint_of_another_model_is_one_error_line(trained):
    line = one_error_line(symnet_process("eval", "examples/mlp.nn", "--weights", trained.path))
    assert "checkpoint of model 'softmax_regression'" in line


def test_a_missing_data_path_is_one_error_line():
    line = one_error_line(symnet("train", "examples/mlp.nn", "--data", "no/such/data.csv"))
    assert "no/such/data.csv" in line


def test_an_empty_split_is_one_error_line_before_any_work(trained, tmp_path):
    """No training examples: refused before the plan (not 'batch 0 (every training
    example; capped from 64)'); eval of an empty split is an error, not '0 examples'."""
    data = tmp_path / "empty.npz"
    x, y = np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    np.savez(data, x_train=x, y_train=y, x_test=np.zeros((3, 28, 28), np.uint8), y_test=[0, 1, 2])
    result = symnet("train", "examples/softmax_regression.nn", "--data", data)
    assert one_error_line(result) == f"error: NPZ ({data}) has no training examples"
    assert "training:" not in result.stdout
    np.savez(data, x_train=np.zeros((3, 28, 28), np.uint8), y_train=[0, 1, 2], x_test=x, y_test=y)
    result = symnet("eval", "examples/softmax_regression.nn", "--weights", trained.path,
                    "--data", data)
    assert one_error_line(result) == (f"error: the test split of NPZ ({data}) is empty: "
                                      "nothing to evaluate")
    assert result.stdout == ""


def test_linreg_on_image_data_asks_for_matching_columns():
    line = one_error_line(symnet("train", "examples/linreg.nn"))
    assert "linreg" in line and "--data" in line and "CSV" in line


def test_eval_on_data_that_does_not_fit_names_what_the_checkpoint_was_trained_on(tmp_path):
    ckpt = tmp_path / "linreg.ckpt"
    assert symnet("train", "examples/linreg.nn", "--data", "docs/tutorial/study.csv",
                  "--epochs", 1, "-q", "-o", ckpt).returncode == 0
    line = one_error_line(symnet("eval", "examples/linreg.nn", "--weights", ckpt,
                                 "--data", "embedded"))
    assert line.endswith("or an .npz holding x and y; the checkpoint was trained on "
                         "CSV (docs/tutorial/study.csv)")


def test_eval_without_data_reads_what_the_checkpoint_was_trained_on_from_any_folder(
        tmp_path, monkeypatch):
    data = tmp_path / "study.csv"
    shutil.copy(ROOT / "docs/tutorial/study.csv", data)
    ckpt = tmp_path / "linreg.ckpt"
    monkeypatch.chdir(tmp_path)               # train names the data relative to here
    assert symnet("train", ROOT / "examples/linreg.nn",
                  "--data", "study.csv", "--epochs", 1, "-q", "-o", ckpt).returncode == 0
    monkeypatch.chdir(ROOT)
    result = symnet("eval", "examples/linreg.nn", "--weights", ckpt)
    assert result.returncode == 0, result.stderr
    assert f"on the test split of CSV ({data})" in result.stdout
    expected = symnet("eval", "examples/linreg.nn", "--weights", ckpt, "--data", data)
    assert expected.stdout == result.stdout   # the same examples, the same loss

    data.unlink()
    line = one_error_line(symnet("eval", "examples/linreg.nn", "--weights", ckpt))
    assert line == (f"error: {ckpt} was trained on CSV (study.csv), but {data} is not there "
                    "any more; name the data with --data")


def test_device_cuda_without_a_gpu_is_one_error_line():
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine may have a GPU")
    line = one_error_line(symnet_process("train", "examples/mlp.nn", "--device", "cuda"))
    assert "cuda" in line.lower()


# ---- regression from a CSV: features, then the target ---------------------------------
def write_csv(path, x):
    np.savetxt(path, np.c_[x, 2 * x + 1], delimiter=",", header="x,y", comments="", fmt="%.9g")
    return path


def test_train_of_a_model_without_parameters_is_refused_up_front(tmp_path):
    model = tmp_path / "fixed.nn"
    model.write_text("model fixed\ninput x[N]\ninput y[N]\nloss mean((x - y) ^ 2)\n")
    result = symnet("train", model, "--data", write_csv(tmp_path / "line.csv", np.arange(4.0)))
    assert one_error_line(result) == "error: model fixed has no parameters to train"
    assert result.stdout == ""


@pytest.mark.parametrize("labels, hint", [
    ([1, 2, 3], "; class indices count from 0: subtract 1 from the labels"),
    ([0, 1, 5], ""),
], ids=["numbered from 1", "too many classes"])
def test_labels_outside_the_classes_are_refused_saying_how_to_mend_them(tmp_path, labels, hint):
    model = tmp_path / "three.nn"
    model.write_text("input x[N, 2]\ninput y[N] : i32\noutput logits = dense(x, 3)\n"
                     "loss cross_entropy(logits, y)\n")
    rows = np.c_[np.arange(24.0).reshape(12, 2), np.resize(labels, 12)]
    np.savetxt(tmp_path / "data.csv", rows, delimiter=",", fmt="%g")
    result = symnet("train", model, "--data", tmp_path / "data.csv", "-q")
    low, high = min(labels), max(labels)
    assert one_error_line(result) == (
        f"error: CSV ({tmp_path / 'data.csv'}), training examples: labels range over "
        f"{low}..{high}, but model three's input 'y' takes classes 0..2{hint}")
    assert result.stdout == ""          # refused before the plan is printed


def test_labels_outside_the_classes_are_refused_without_an_output(tmp_path):
    """Without an output the classes come from the loss (cross_entropy's 3): labels up to
    11 were caught only by the first training step, naming no file."""
    model = tmp_path / "cls.nn"
    model.write_text("model cls\ninput x[N, 4]\ninput y[N] : i32\n"
                     "loss cross_entropy(dense(x, 3), y)\n")
    rows = np.c_[np.ones((12, 4)), np.arange(12)]
    np.savetxt(tmp_path / "data.csv", rows, delimiter=",", fmt="%g")
    result = symnet("train", model, "--data", tmp_path / "data.csv", "-q")
    assert one_error_line(result) == (
        f"error: CSV ({tmp_path / 'data.csv'}), training examples: labels range over 0..9, "
        "but model cls's input 'y' takes classes 0..2")
    assert result.stdout == ""          # refused before compiling and training


def test_a_model_without_labels_trains_on_data_without_labels(tmp_path):
    """The spec's custom model has one input: an .npz holding only x, or a CSV whose
    every column is a feature, trains it (both were refused as missing labels)."""
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "c4.npz", x=x)
    np.savetxt(tmp_path / "c4.csv", x, delimiter=",", fmt="%.9g")
    weights = {}
    for name in ("c4.npz", "c4.csv"):
        out = tmp_path / f"{name}.ckpt"
        result = symnet("train", ROOT / "examples/custom.nn", "--data", tmp_path / name,
                        "--epochs", "2", "-q", "-o", out)
        assert result.returncode == 0, result.stderr
        assert "50 training and 10 test examples" in result.stdout
        weights[name] = np.load(out)["W"]
    np.testing.assert_array_equal(weights["c4.npz"], weights["c4.csv"])  # the same 4 features
    result = symnet("eval", ROOT / "examples/custom.nn", "--weights", tmp_path / "c4.csv.ckpt")
    assert result.returncode == 0, result.stderr
    assert re.search(r"on the test split of CSV \(.*c4.csv\): 10 examples\nloss [\d.]+\n$",
                     result.stdout), result.stdout
    np.savetxt(tmp_path / "c3.csv", x[:, :3], delimiter=",")
    result = symnet("train", ROOT / "examples/custom.nn", "--data", tmp_path / "c3.csv")
    assert one_error_line(result).endswith(
        "has 3 ([3]); this model needs --data naming matching columns: a CSV of 4 column(s), "
        "or an .npz holding x")


@pytest.mark.parametrize("command, victim", [
    (["train", "{model}", "--data", "{data}", "-o", "{model}"], "model"),
    (["train", "{model}", "--data", "{data}", "-o", "{data}"], "data"),
    (["compile", "{model}", "-o", "{model}"], "model"),
], ids=["train_over_model", "train_over_data", "compile_over_model"])
def test_output_over_a_file_the_command_reads_is_refused(tmp_path, command, victim):
    """`-o mlp.nn` for `-o mlp.npz` replaced the model's source with a checkpoint."""
    files = {"model": tmp_path / "line.nn", "data": write_csv(tmp_path / "line.csv",
                                                               np.arange(12.0))}
    files["model"].write_text((ROOT / "examples" / "linreg.nn").read_text())
    before = {k: p.read_bytes() for k, p in files.items()}
    result = symnet(*[word.format(**files) for word in command])
    assert one_error_line(result) == (f"error: cannot write '{files[victim]}': the command "
                                      "reads that file, and -o would replace it; give "
                                      "another name")
    assert {k: p.read_bytes() for k, p in files.items()} == before


def test_run_of_a_model_without_a_float_input_does_not_speak_of_training(tmp_path):
    model = tmp_path / "oh.nn"
    model.write_text("input y[N] : i32\noutput o = onehot(y, 3)\n")
    np.save(tmp_path / "y.npy", np.array([0, 2]))
    result = symnet("run", model, "--input", tmp_path / "y.npy")
    assert one_error_line(result) == (
        "error: model oh has inputs y; data is fed to one floating-point input (the "
        "features) and at most one more (the labels)")


def test_run_of_a_model_whose_outputs_read_two_inputs_says_which_is_not_fed(tmp_path):
    """It said only "missing input 'b' [N, 2]", as if the user had left something out."""
    model = tmp_path / "two.nn"
    model.write_text("model two\ninput a[N, 2]\ninput b[N, 2]\noutput o = a + b\n")
    np.save(tmp_path / "a.npy", np.ones(2))
    assert one_error_line(symnet("run", model, "--input", tmp_path / "a.npy")) == (
        "error: model two's outputs read input 'b' as well as 'a', and predictions are fed "
        "only the features ('a'); call Program.forward with every input instead")


def test_fractional_labels_for_a_classifier_are_refused_naming_the_data(tmp_path):
    """They passed the range check and failed at the first step, after the plan was
    printed and without saying which data held them."""
    model = tmp_path / "three.nn"
    model.write_text("input x[N, 2]\ninput y[N] : i32\noutput logits = dense(x, 3)\n"
                     "loss cross_entropy(logits, y)\n")
    rows = np.c_[np.arange(24.0).reshape(12, 2), np.resize([0, 1, 1.5], 12)]
    np.savetxt(tmp_path / "data.csv", rows, delimiter=",", fmt="%g")
    result = symnet("train", model, "--data", tmp_path / "data.csv", "-q")
    assert one_error_line(result) == (
        f"error: CSV ({tmp_path / 'data.csv'}), training examples: input 'y' must hold "
        "integers (class indices), got float32 values such as 1.5")
    assert result.stdout == ""


@pytest.mark.parametrize("command, consequence", [("train", "nothing to train"),
                                                  ("eval", "nothing to evaluate")])
def test_train_and_eval_without_a_loss_say_what_it_means_for_them(tmp_path, command,
                                                                  consequence):
    model = tmp_path / "noloss.nn"
    model.write_text("model noloss\ninput x[N, 2]\noutput y = dense(x, 1)\n")
    weights = ["--weights", tmp_path / "w.npz"] if command == "eval" else []
    result = symnet(command, model, *weights)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"{model}:1:1: error: model 'noloss' has no loss "
                                    f"statement, so there is {consequence}; add one such as")


def test_train_shows_the_capped_batch_and_eval_its_loss_format(tmp_path):
    """A batch beyond the data is every example; eval's loss reads as train's (0.0000)."""
    data, ckpt = write_csv(tmp_path / "line.csv", np.linspace(-1, 1, 120)), tmp_path / "l.npz"
    trained = symnet("train", "examples/linreg.nn", "--data", data, "--batch", 100000,
                     "--lr", 0.5, "--epochs", 300, "-o", ckpt, "-q")
    assert trained.returncode == 0, trained.stderr
    count = int(re.search(r"^data: .*: (\d+) training", trained.stdout, re.M).group(1))
    assert f", batch {count} (every training example; capped from 100000), " in trained.stdout
    result = symnet("eval", "examples/linreg.nn", "--weights", ckpt, "--data", data)
    assert result.returncode == 0, result.stderr
    loss = re.search(r"^loss (.+)$", result.stdout, re.M).group(1)
    assert loss == "0.0000" and f"test loss {loss}" in trained.stdout.splitlines()[-2]


def test_train_checks_its_output_paths_before_any_work(tmp_path):
    """Refused before the data loads, not after an epoch (-o) or the last one (--plot)."""
    folder, file = tmp_path / "adir", tmp_path / "file"
    folder.mkdir()
    file.write_text("")
    for flags, message in [
            (["-o", folder], f"cannot write '{folder}': it is a folder; -o needs a file name"),
            (["--plot", folder], f"cannot write '{folder}': --plot draws a PNG image; the name "
                                 "must end in .png"),
            (["--plot", tmp_path / "curves.pdf"], "the name must end in .png"),
            (["--plot", file / "sub" / "c.png"], f"'{file / 'sub' / 'c.png'}': '{file}' is a "
                                                 "file, not a folder"),
            # os.access says yes to root for /proc; writing a file there fails
            (["-o", "/proc/m.ckpt"], "cannot write '/proc/m.ckpt': its folder /proc is not writable")]:
        result = symnet("train", "examples/linreg.nn", "--epochs", 1, *flags)
        assert message in one_error_line(result)
        assert result.stdout == ""


def test_an_output_inside_a_file_names_the_file(tmp_path):
    """`-o some.nn/c.o` said only "cannot create its folder: File exists"."""
    (tmp_path / "some.nn").write_text("")
    out = tmp_path / "some.nn" / "c.o"
    result = symnet("compile", "examples/linreg.nn", "--emit", "obj", "-o", out)
    assert one_error_line(result) == (f"error: cannot write '{out}': '{tmp_path / 'some.nn'}' "
                                      "is a file, not a folder")
    assert result.stdout == "" and (tmp_path / "some.nn").read_text() == ""



@pytest.mark.parametrize("verb", [["compile"], ["train", "--data", "docs/tutorial/study.csv"]])
def test_an_output_ending_in_a_slash_never_replaces_the_file_before_it(tmp_path, verb):
    """`-o linreg.nn/`: the slash was dropped and the model's source replaced (status 0)."""
    model = tmp_path / "linreg.nn"
    shutil.copy("examples/linreg.nn", model)
    source = model.read_text()
    result = symnet(verb[0], model, *verb[1:], "-o", f"{model}/")
    assert one_error_line(result) == (f"error: cannot write '{model}/': a name ending in '/' "
                                      "is a folder's; -o needs a file name")
    assert model.read_text() == source
    with pytest.raises(IsADirectoryError):
        write_atomically(f"{model}/", b"checkpoint")
    assert model.read_text() == source

def test_an_output_named_dash_is_refused_not_written(tmp_path):
    """`-o -` would make a file called '-' in the current folder."""
    result = symnet_process("train", "examples/linreg.nn", "--data", "docs/tutorial/study.csv",
                            "-o", "-")
    assert one_error_line(result) == ("error: cannot write '-': -o names a file to write, and "
                                      "'-' would make one called '-'; give a file name")
    assert result.stdout == ""


@pytest.mark.parametrize("x", [np.random.default_rng(1).integers(0, 2, 120), np.linspace(-1, 1, 120)],
                         ids=["whole numbers", "real numbers"])
def test_linreg_recovers_a_line_from_a_csv(tmp_path, x):
    ckpt = tmp_path / "linreg.ckpt"                              # y = 2x + 1
    result = symnet("train", "examples/linreg.nn", "--data", write_csv(tmp_path / "line.csv", x),
                    "-o", ckpt, "-q")
    assert result.returncode == 0, result.stderr
    params, _ = checkpoint.load(ckpt)
    assert params["a"] == pytest.approx(2, abs=1e-2) and params["b"] == pytest.approx(1, abs=1e-2)


def test_a_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "linreg.ckpt"
    x = np.random.default_rng(1).integers(0, 2, 120)
    result = symnet("train", "examples/linreg.nn", "--data", write_csv(tmp_path / "line.csv", x),
                    "--lr", 5, "-o", ckpt, "-q")
    line = one_error_line(result)
    epoch = int(re.search(r"loss became (?:inf|nan) at epoch (\d+)", line).group(1))
    assert f"{ckpt} keeps epoch {epoch - 1}" in line
    params, meta = checkpoint.load(ckpt)
    assert meta["extra"]["epoch"] == epoch - 1
    assert all(np.isfinite(value).all() for value in params.values())


def test_ctrl_c_saves_the_weights_and_exits_130(tmp_path):
    ckpt = tmp_path / "mlp.ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "symnet", "train", "examples/mlp.nn", "--epochs", "100",
         "--limit", "3000", "-o", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:                     # wait for the first epoch
        if line.startswith("epoch 1/"):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert f"saved the weights to {ckpt}" in err and "Traceback" not in err
    _, meta = checkpoint.load(ckpt)
    assert meta["extra"]["interrupted"] is True and 1 <= meta["extra"]["epoch"] < 100


# ---- settings: the file's train statement, then the flags ------------------------------
def settings(**flags):
    args = SimpleNamespace(**{"optimizer": None, "epochs": None, "batch": None, "lr": None,
                              "seed": None, **flags})
    return run_verbs.training_settings(load("examples/mlp.nn"), args)


def test_flags_override_the_train_statement():
    assert settings() == ("sgd", {"lr": 0.1, "epochs": 3, "batch": 64, "seed": 0})
    assert settings(lr=0.3, epochs=1, seed=7) == \
        ("sgd", {"lr": 0.3, "epochs": 1, "batch": 64, "seed": 7})


def test_another_optimizer_gets_its_own_defaults_not_the_files():
    optimizer, chosen = settings(optimizer="adam")
    assert optimizer == "adam"
    assert chosen == {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "epochs": 3,
                      "batch": 64, "seed": 0}
    assert settings(optimizer="momentum", lr=0.05)[1]["lr"] == 0.05


# ---- compile ----------------------------------------------------------------------------
def test_compile_emits_llvm_ir():
    result = symnet("compile", "examples/mlp.nn", "--emit", "llvm")
    assert result.returncode == 0, result.stderr
    assert re.search(r'^define void @"?train_step"?\(', result.stdout, re.M)


def test_compile_emits_assembly():
    result = symnet("compile", "examples/mlp.nn", "--emit", "asm")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^train_step:", result.stdout, re.M)


def test_compile_writes_an_elf_object(tmp_path):
    out = tmp_path / "mlp.o"
    result = symnet("compile", "examples/mlp.nn", "--emit", "obj", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert "--emit obj" in one_error_line(symnet("compile", "examples/mlp.nn", "--emit", "obj"))


@pytest.mark.parametrize("options, message", [
    (["--target", "ptx", "--emit", "asm"], "error: --emit asm is host code; with --target ptx use"),
    (["--emit", "ptx", "--dtype", "f64"], "error: --target ptx computes in float32; drop --dtype f64"),
    (["--target", "ptx", "--emit", "llvm", "-O", "3"], "error: -O with --emit llvm optimizes for the host"),
    (["--target", "cpu", "--emit", "ptx"], "error: --emit ptx needs --target ptx"),
    (["--arch", "sm_90"], "error: --arch sm_90 is a GPU architecture; it needs --target ptx"),
    (["--target", "cpu", "--arch", "sm_80"], "error: --arch sm_80 is a GPU architecture"),
])
def test_compile_refuses_options_that_do_not_go_together(options, message):
    assert one_error_line(symnet("compile", "examples/mlp.nn", *options)).startswith(message)


def test_compile_emits_ptx_that_ptxas_accepts(tmp_path):
    out = tmp_path / "mlp.ptx"
    result = symnet("compile", "examples/mlp.nn", "--target", "ptx", "--arch", "sm_90",
                    "--emit", "ptx", "-o", out)
    assert result.returncode == 0, result.stderr
    assert ".entry" in out.read_text()
    if shutil.which("ptxas") is None:
        pytest.skip("ptxas is not installed")
    check = subprocess.run(["ptxas", "-arch=sm_90", str(out), "-o", str(tmp_path / "mlp.cubin")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_gpucheck_compares_every_value_and_finds_no_race():
    """The PTX kernels run on this CPU against the CPU backend: outputs, loss, each
    gradient and each parameter's step, at each batch size."""
    result = symnet("gpucheck", "examples/softmax_regression.nn", "--batch", "4", "70")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("gpucheck of softmax_regression: the PTX kernels run on this CPU "
                        "(3 blocks of 256 threads a launch)")
    assert re.fullmatch(r"  value\s+batch 4\s+batch 70", lines[2])
    rows = {" ".join(line.split()[:-3]): line.split()[-3:] for line in lines[3:9]}
    assert sorted(rows) == ["grad W", "grad b", "loss", "probs", "step of W", "step of b"]
    for errors in rows.values():
        assert errors[2] == "ok" and all(float(e) < 1e-4 for e in errors[:2])
    assert lines[-2:] == ["  no races in shared or global memory, no out-of-bounds accesses",
                          "ok: all 6 values agree"]


def test_gpucheck_says_when_adam_steps_are_compared_at_a_raised_eps():
    plain = symnet("gpucheck", "examples/softmax_regression.nn", "--batch", "4")
    adam = symnet("gpucheck", "examples/softmax_regression.nn", "--batch", "4", "--optimizer", "adam")
    assert plain.returncode == adam.returncode == 0, plain.stdout + adam.stdout
    remark = "  (Adam's steps with eps at 10% of the largest gradient: with a tiny"
    assert remark not in plain.stdout.splitlines()
    assert remark in adam.stdout.splitlines()


def test_gpucheck_fails_on_a_wrongly_fused_kernel(tmp_path, monkeypatch):
    """A fusion rule reduced to "same shape" fuses a map that reads another thread's
    element: the values differ and the race is named; exit status 1."""
    from compiler import gpu_schedule
    from test_gpu_emulation import FLIPPED
    path = tmp_path / "flipped.nn"
    path.write_text(FLIPPED)
    monkeypatch.setattr(gpu_schedule, "_elementwise_fusible", lambda kernel, c, tensors: (
        tensors[c.out].shape == tensors[kernel.head.out].shape))
    result = symnet("gpucheck", path, "--batch", "300")
    assert result.returncode == 1, result.stdout
    assert re.search(r"^  y\s+\S+\s+FAIL$", result.stdout, re.M)
    assert re.search(r"^FAIL: \d+ of \d+ values differ: y, .*; \d+ races in global memory "
                     r"\(the first in kernel k0_h_matmul\)$", result.stdout, re.M), result.stdout


def test_gpucheck_of_a_missing_file_is_one_error_line(tmp_path):
    assert "no-such.nn" in one_error_line(symnet("gpucheck", tmp_path / "no-such.nn"))


def test_compile_to_dash_writes_standard_output_not_a_file(tmp_path):
    """`-o -` is standard output: text as without -o, an object file's bytes into a pipe."""
    def compile_in_tmp(emit):
        return subprocess.run([sys.executable, "-m", "symnet", "compile",
                               ROOT / "examples/linreg.nn", "--emit", emit, "-o", "-"],
                              cwd=tmp_path, capture_output=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = compile_in_tmp("schedule")
    assert text.returncode == 0, text.stderr
    assert text.stdout.decode() == symnet("compile", "examples/linreg.nn", "--emit", "schedule").stdout
    obj = compile_in_tmp("obj")
    assert obj.returncode == 0, obj.stderr
    assert obj.stdout[:4] == b"\x7fELF"
    assert list(tmp_path.iterdir()) == []


def test_compile_prints_the_loop_nests():
    result = symnet("compile", "examples/linreg.nn", "--emit", "schedule")
    assert result.returncode == 0, result.stderr
    assert "entry train_step:" in result.stdout
    assert re.search(r"a\[\] = a\[\] - grad:a\[\]\*hyper:lr\[\]", result.stdout)


# ---- cache ------------------------------------------------------------------------------
def test_cache_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMNET_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache"
    assert symnet("cache", "info").stdout == f"{cache}: 0 compiled model(s), 0 bytes\n"
    np.save(tmp_path / "zeros.npy", np.zeros(784))            # compiling mlp fills the cache
    assert symnet("run", "examples/mlp.nn", "--input", tmp_path / "zeros.npy").returncode == 0
    info = symnet("cache", "info").stdout
    assert re.match(rf"{re.escape(str(cache))}: 1 compiled model\(s\), [1-9][\d,]* bytes$", info)
    assert symnet("cache", "clear").stdout == f"removed 1 compiled model(s) from {cache}\n"
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".symobj")]
    assert symnet("cache", "info").stdout == f"{cache}: 0 compiled model(s), 0 bytes\n"

    monkeypatch.setenv("SYMNET_CACHE", str(tmp_path / "zeros.npy"))    # a file: no cache
    for action in ("info", "clear"):
        assert one_error_line(symnet_process("cache", action)) == (
            f"error: {tmp_path / 'zeros.npy'} is not a folder, so no compiled code is cached; "
            "point $SYMNET_CACHE at a folder")


# ---- the README's demo ------------------------------------------------------------------
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs the Debian package "
                    "dataset-fashion-mnist (the embedded subset is too small for 85%)")
def test_readme_demo_mlp_reaches_85_percent_on_fashion_mnist(tmp_path, monkeypatch):
    """`make demo`: three epochs of examples/mlp.nn on the full Fashion-MNIST (a few s)."""
    monkeypatch.delenv("SYMNET_DATA", raising=False)
    result = symnet("train", "examples/mlp.nn", "-o", tmp_path / "mlp.ckpt")
    assert result.returncode == 0, result.stderr
    epochs = EPOCH_LINE.findall(result.stdout)
    assert [e[:2] for e in epochs] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert float(epochs[-1][2]) >= 85.0
