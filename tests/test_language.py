"""The language's rules that reviewers found unenforced or wrong: each mistake is one
located diagnostic with exit status 1, and the forms that must work compute the right
values (checked against NumPy written here)."""
import pytest

from symnet.cli import main


def check_error(tmp_path, capsys, case, text, line, col, message):
    """`symnet check` exits 1 and prints the located error, the line and a caret."""
    path = tmp_path / f"{case}.nn"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    first, source, caret = capsys.readouterr().err.rstrip("\n").split("\n")
    assert first == f"{path}:{line}:{col}: error: {message}"
    assert source == "    " + text.split("\n")[line - 1]
    assert caret == "    " + " " * (col - 1) + "^"


# ---- fn definitions and initializers ----------------------------------------------------
DEFINITIONS = {  # file, line, col, message
    "recursive_fn": ("fn f(a) = f(a) + 1\ninput x[N, 3]\noutput o = f(x)\n",
                     1, 11, "fn 'f' calls itself; a fn cannot be recursive"),
    "recursive_fn_alone": ("fn f(z) = f(z)\n", 1, 11, "fn 'f' calls itself; a fn cannot be recursive"),
    "normal_negative_std": ("param w[3] ~ normal(0, -1)\n",
                            1, 24, "normal(mean, std) needs a positive std, got -1"),
    "normal_zero_std": ("param w[3] ~ normal(1, 0)\n",
                        1, 24, "normal(mean, std) needs a positive std, got 0"),
    "uniform_reversed": ("param w[3] ~ uniform(1, -1)\n",
                         1, 14, "uniform(lo, hi) needs lo below hi, got uniform(1, -1)"),
    "uniform_in_a_layer": ("input x[N, 3]\nh = dense(x, 2, init=uniform(1, 0))\n",
                           2, 22, "uniform(lo, hi) needs lo below hi, got uniform(1, 0)"),
}


@pytest.mark.parametrize("case", DEFINITIONS)
def test_definition_mistakes_are_located(tmp_path, capsys, case):
    check_error(tmp_path, capsys, case, *DEFINITIONS[case])
