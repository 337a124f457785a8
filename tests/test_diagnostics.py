"""Every kind of mistake in a .nn file gives one located diagnostic and exit status 1.

Each case is a small file with one mistake, run through `python -m symnet` in a
subprocess, as a user would. The first line of stderr must be exactly
`FILE:LINE:COL: error: MESSAGE`, followed by the source line and a caret under COL,
and no Python traceback.
"""
import subprocess
import sys

import pytest

CASES = {
    "syntax_error": (
        "input x[N]\nparam a = 1\nyhat = a * * x\n",
        3, 12, "expected an expression, found '*'"),
    "python_power": (
        "input x[N]\nparam a = 1\nyhat = a ** x\n",
        3, 10, "`**` is Python's power; write it `a ^ b`"),
    "unknown_name": (
        "input x[N]\nparam a = 1\nyhat = a * z\n",
        3, 12, "unknown name 'z'"),
    "unknown_function": (
        "input x[N, 3]\nh = rleu(x)\n",
        2, 5, "unknown function 'rleu'; did you mean 'relu'?"),
    "unknown_keyword": (
        "input x[N, 3]\nh = dense(x, 4, bais=true)\n",
        2, 17, "dense has no argument 'bais'; did you mean 'bias'?"),
    "wrong_argument_type": (
        'input x[N, 3]\nh = dense(x, "four")\n',
        2, 14, "dense argument 'units' must be an integer"),
    "broadcast_mismatch": (
        "input x[N, 3]\nparam v[4] ~ zeros\nh = x + v\n",
        3, 7, "cannot broadcast [N, 3] and [4] in add"),
    "dense_after_conv_without_flatten": (
        "input x[N, 1, 9, 9]\nc = conv2d(x, filters=16, size=5)\nf = dense(c, 10)\n",
        3, 5, "dense expects [N, 400], got [N, 16, 5, 5]; use flatten(...)"),
    "duplicate_definition": (
        "input x[N, 3]\nh = relu(x)\nh = x\n",
        3, 1, "'h' is already defined at line 2"),
    "class_labels_without_i32": (
        "input x[N, 4]\ninput y[N]\nlogits = dense(x, 3)\nloss cross_entropy(logits, y)\n",
        4, 6, "cross_entropy with one-hot targets expects [N, 3], got [N]; class indices "
              "must be i32: declare the labels input with `: i32`"),
    "tensor_named_like_a_size": (
        "input x[N, 3]\nparam N = 2.0\nloss mean(x * N)\n",
        2, 1, "'N' is a symbolic size (line 1); give the tensor another name"),
    "size_named_like_a_tensor": (
        "input N[N]\n",
        1, 9, "'N' is the tensor defined at line 1; give the size another name"),
    "loss_pairing_every_prediction_with_every_target": (
        "input x[N, 2]\ninput y[N]\noutput p = dense(x, 1)\nloss mse(p, y)\n",
        4, 6, "mse of [N, 1] and [N] would pair every prediction with every target ([N, N]); "
              "give both the same shape (e.g. declare the target input with the prediction's shape)"),
    "conv_window_too_large": (
        "input x[N, 1, 3, 3]\nc = conv2d(x, filters=2, size=5)\n",
        2, 5, "conv2d window 5x5 does not fit input [N, 1, 3, 3]"),
}

NO_LOSS = "model noloss\ninput x[N, 3]\noutput h = dense(x, 2)\n"


def symnet(*args):
    return subprocess.run([sys.executable, "-m", "symnet", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_located(result, path, line, col, message):
    """Exit 1; stderr is the located error line, the source line and a caret."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    first, source, caret = result.stderr.rstrip("\n").split("\n")
    assert first == f"{path}:{line}:{col}: error: {message}"
    assert source.strip() == path.read_text().split("\n")[line - 1].strip()
    assert caret.index("^") - 4 == col - 1          # the printer indents both by 4


@pytest.mark.parametrize("case", CASES)
def test_check_reports_a_located_diagnostic(tmp_path, case):
    text, line, col, message = CASES[case]
    path = tmp_path / f"{case}.nn"
    path.write_text(text)
    assert_located(symnet("check", path), path, line, col, message)


@pytest.mark.parametrize("verb", ["grad", "gradcheck"])
def test_missing_loss_is_located_at_the_top_of_the_file(tmp_path, verb):
    path = tmp_path / "noloss.nn"
    path.write_text(NO_LOSS)
    message = ("model 'noloss' has no loss statement, so it has no gradient; "
               "add one such as `loss mse(prediction, target)`")
    assert_located(symnet(verb, path), path, 1, 1, message)


def test_a_file_that_is_not_utf8_is_located_at_its_first_bad_byte(tmp_path):
    """A Latin-1 comment (é as the one byte 0xe9), after a line of UTF-8 é: the column
    counts characters."""
    path = tmp_path / "latin1.nn"
    path.write_bytes("input x[N]  # é\nloss mean(x)  # caf".encode() + b"\xe9\n")
    result = symnet("check", path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"{path}:2:20: error: this file is not UTF-8 text (byte 0xe9); "
                             "save it as UTF-8\n    loss mean(x)  # caf\ufffd\n" + " " * 23 + "^\n")


def test_a_folder_given_as_the_model_is_one_error_line():
    result = symnet("check", "examples")
    assert (result.returncode, result.stderr) == (1, "error: examples is a folder; give a .nn file\n")


def test_unknown_wrt_lists_the_parameters():
    result = symnet("grad", "examples/linreg.nn", "--wrt", "c")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == "error: 'c' is not a parameter of linreg; the parameters are: a, b\n"
