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


# ---- values sympy folds to infinity, nan or an imaginary number -------------------------
NOT_FINITE = {  # no code computes them
    "divide_by_zero_output": ("input x[N, 3]\nh = x / 0\noutput h\n", 2, 7, "division by zero"),
    "divide_by_zero_loss": ("input x[N, 3]\nh = 1 / 0\nloss mean(x * h)\n",
                            2, 7, "division by zero"),
    "divide_by_a_zero_difference": ("input x[N]\nh = x / (N - N)\n", 2, 7, "division by zero"),
    "zero_to_a_negative_power": ("input x[N]\nh = x * 0 ^ -1\n", 2, 11, "division by zero"),
    "log_of_zero": ("input x[N]\nh = x * log(0)\n", 2, 9, "log(...) is infinite or undefined here"),
    "sqrt_of_negative": ("input x[N]\nh = x * sqrt(-1)\n", 2, 9, "sqrt(...) is not a real number"),
    "divide_by_zero_in_fn": ("fn g(z) = z / 0\n", 1, 13, "division by zero"),
    "fn_of_a_pole": ("fn f(z) = 1 / z\ninput x[N]\nh = f(0) * x\n",
                     3, 5, "f(...) is infinite or undefined here"),
}


@pytest.mark.parametrize("case", NOT_FINITE)
def test_non_finite_constants_are_located(tmp_path, capsys, case):
    check_error(tmp_path, capsys, case, *NOT_FINITE[case])
