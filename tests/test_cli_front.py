"""Tests for the front verbs of the command line: check, grad, gradcheck (symnet/cli.py)."""
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler import reference
from symnet import cli
from repository import EXAMPLES, ROOT


@pytest.fixture(autouse=True)
def in_the_repository(monkeypatch):
    """The tests name files as examples/NAME.nn, as a user in the repository would."""
    monkeypatch.chdir(ROOT)


DENSE_342 = """\
model dense342
input x[N, 3]
input t[N, 2]
h = relu(dense(x, 4))
output o = dense(h, 2)
loss mse(o, t)
"""


def symnet(*args):
    """Run `python -m symnet ARGS` from the repository root."""
    return subprocess.run([sys.executable, "-m", "symnet", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def write(tmp_path, text, name="model.nn"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- check --------------------------------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_check_accepts_every_example(example):
    result = symnet("check", example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("Total learnable parameters: ")


def test_check_counts_the_parameters_of_a_3_4_2_network(tmp_path):
    result = symnet("check", write(tmp_path, DENSE_342))
    assert result.returncode == 0, result.stderr
    assert "Total learnable parameters: 26" in result.stdout
    assert "[N, 4]" in result.stdout and "relu" in result.stdout


def test_summary_is_another_name_for_check(capsys):
    """design.md names the verb check/summary; `summary` was an unknown command."""
    assert cli.main(["check", "examples/mlp.nn"]) == 0
    checked = capsys.readouterr()
    assert cli.main(["summary", "examples/mlp.nn"]) == 0
    assert capsys.readouterr() == checked and "Total learnable parameters: 109,386" in checked.out
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    assert re.search(r"^ +check \(summary\) +check a model", capsys.readouterr().out, re.M)
    with pytest.raises(SystemExit):
        cli.main(["sumary", "x.nn"])
    assert "unknown command 'sumary'; did you mean 'summary'?" in capsys.readouterr().err


# ---- grad ---------------------------------------------------------------------------
def test_grad_prints_linreg_formulas():
    result = symnet("grad", "examples/linreg.nn")
    assert result.returncode == 0, result.stderr
    assert "dJ/da = 2*Sum((a*x[n] + b - y[n])*x[n], (n, 0, N - 1))/N" in result.stdout
    assert "dJ/db = 2*Sum(a*x[n] + b - y[n], (n, 0, N - 1))/N" in result.stdout


def test_grad_at_a_point_evaluates_loss_and_gradients(capsys):
    status = cli.main(["grad", "examples/linreg.nn", "--at", "a=0.4,b=0.1,x=0.15,y=0.3"])
    out = capsys.readouterr().out
    assert status == 0
    assert "J = 0.0196" in out
    assert "dJ/da = -0.042" in out
    assert "dJ/db = -0.28" in out


def test_grad_at_broadcasts_inputs_and_overrides_parameters(capsys):
    """x=0.5 fills x[N, 1] (a batch of one), yhat.b=0.25 replaces the bias's initial 0:
    the loss and gradient printed are those of NumPy's forward pass at that point."""
    status = cli.main(["grad", "examples/neuron.nn", "--at", "x=0.5,y=1,yhat.b=0.25",
                       "--wrt", "yhat.b"])
    out = capsys.readouterr().out
    assert status == 0
    params = compiler.load("examples/neuron.nn").params
    hidden = np.maximum(0.5 * params["hidden.W"] + params["hidden.b"], 0)      # [1, 2]
    yhat = float((hidden @ params["yhat.W"])[0, 0]) + 0.25
    assert out.endswith("at x=0.5, y=1, yhat.b=0.25 (inputs as a batch of one):\n"
                        f"  J = {(yhat - 1) ** 2:.6g}\n  dJ/dyhat.b = [{2 * (yhat - 1):.6g}]\n"), out


def test_grad_lists_deltas_for_layered_models(capsys):
    assert cli.main(["grad", "examples/mlp.nn"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    deltas = [line.split("[")[0].strip() for line in lines if line.lstrip().startswith("δ")]
    assert deltas == ["δlogits", "δh2", "δh1"]


@pytest.mark.parametrize("fmt, marker", [("latex", r"\frac{\partial J}{\partial a}"),
                                         ("unicode", "∂J/∂a")])
def test_grad_formats(capsys, fmt, marker):
    assert cli.main(["grad", "examples/linreg.nn", "--format", fmt]) == 0
    assert marker in capsys.readouterr().out


def test_grad_without_simplification_still_derives(capsys):
    assert cli.main(["grad", "examples/softmax_regression.nn", "--no-simplify"]) == 0
    assert "argmax" in capsys.readouterr().out


def test_grad_unknown_wrt_is_one_line_listing_parameters(capsys):
    assert cli.main(["grad", "examples/linreg.nn", "--wrt", "c"]) == 1
    err = capsys.readouterr().err
    assert err == "error: 'c' is not a parameter of linreg; the parameters are: a, b\n"


@pytest.mark.parametrize("at, message", [
    ("a=0.4", "--at needs a value for every input; missing: x, y"),
    ("x=1,y=2,z=3", "'z' is neither an input nor a parameter"),
    ("x=one,y=2", "'one' is not a number"),
    ("x", "--at expects NAME=VALUE pairs"),
    ("x=1,y=2,x=3", "error: --at gives 'x' twice; give each name one value\n"),
    # float() reads these as inf or nan: J = inf was printed with status 0
    ("x=1e400,y=3", "error: --at: '1e400' is not a finite number (in 'x=1e400')\n"),
    ("x=nan,y=3", "error: --at: 'nan' is not a finite number (in 'x=nan')\n"),
    ("x=1,y=-inf", "error: --at: '-inf' is not a finite number (in 'y=-inf')\n"),
    ("x=1,y=2,a=inf", "error: --at: 'inf' is not a finite number (in 'a=inf')\n"),
])
def test_grad_at_mistakes(capsys, at, message):
    assert cli.main(["grad", "examples/linreg.nn", "--at", at]) == 1
    assert message in capsys.readouterr().err


def test_grad_at_a_point_that_overflows_says_so_without_warnings(capfd):
    """(1e200 * 1e200)^2 is past float64: J = inf is true, and said in words; NumPy's
    RuntimeWarnings (naming lambdify's generated code) were printed on stderr."""
    assert cli.main(["grad", "examples/linreg.nn", "--at", "x=1e200,y=1,a=1e200"]) == 0
    out, err = capfd.readouterr()
    assert "  J = inf\n  dJ/da = inf\n  dJ/db = inf\n" in out
    assert out.endswith("  (inf or nan: the values overflow float64 at this point)\n")
    assert err == ""


def test_grad_at_a_finite_point_has_no_overflow_note(capsys):
    assert cli.main(["grad", "examples/linreg.nn", "--at", "x=1e100,y=1"]) == 0
    out = capsys.readouterr().out
    assert "J = 1.6e+199\n" in out and "overflow" not in out     # (0.4 * 1e100)^2


@pytest.mark.parametrize("label", ["12", "10", "-1"])
def test_grad_at_class_labels_must_be_classes_of_the_model(capsys, label):
    """softmax_regression has 10 classes; another label would drop the loss's target term."""
    status = cli.main(["grad", "examples/softmax_regression.nn", "--at", f"x=1,y={label}",
                       "--wrt", "b"])
    out, err = capsys.readouterr()
    assert status == 1
    assert err == f"error: --at: input 'y' is a class of 0..9, got {label}\n"
    assert out == ""


def test_grad_at_takes_any_whole_count_for_an_i32_input_that_is_not_a_label(capsys, tmp_path):
    """An i32 input multiplied in (a count) has no classes: --at takes any whole value
    there (the class check once compared it with None)."""
    path = tmp_path / "counts.nn"
    path.write_text("model counts\ninput x[N]\ninput k[N] : i32\nparam w = 0.5\n"
                    "loss mean(k * w * x)\n")
    assert cli.main(["grad", str(path), "--at", "x=2,k=3"]) == 0
    out = capsys.readouterr().out
    assert "J = 3\n" in out and "dJ/dw = 6\n" in out


def test_grad_chain_at_prints_the_values_after_the_chains(capsys):
    """--chain with --at: the chain-rule factors, then the loss and the gradients at the
    point, as without --chain (the values were checked, then ignored)."""
    args = ["grad", "examples/neuron.nn", "--wrt", "yhat.b", "--at", "x=1,y=2"]
    assert cli.main(args) == 0
    plain = capsys.readouterr().out
    assert cli.main(args + ["--chain"]) == 0
    chained = capsys.readouterr().out
    values = plain[plain.index("at x=1, y=2"):]
    assert values == "at x=1, y=2 (inputs as a batch of one):\n  J = 4\n  dJ/dyhat.b = [-4]\n"
    assert chained.startswith("the chain rule") and chained.endswith(values)


def test_grad_at_is_checked_before_the_formulas_print(capsys):
    assert cli.main(["grad", "examples/linreg.nn", "--at", "a=0.4"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "missing: x, y" in err


def test_grad_at_class_labels_must_be_integers(capsys):
    assert cli.main(["grad", "examples/mlp.nn", "--at", "x=1,y=2.5"]) == 1
    assert "input 'y' holds class indices (i32), got 2.5" in capsys.readouterr().err


# ---- gradcheck ----------------------------------------------------------------------
def has_loss(path):
    return any(line.startswith("loss") for line in (ROOT / path).read_text().splitlines())


@pytest.mark.parametrize("example", [e for e in EXAMPLES if has_loss(e)], ids=lambda p: p.stem)
def test_gradcheck_passes_on_every_example(capsys, example):
    status = cli.main(["gradcheck", str(example)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "FAIL" not in out and out.splitlines()[-1].startswith("ok: ")


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not has_loss(e)], ids=lambda p: p.stem)
def test_gradcheck_of_a_model_without_loss_is_a_located_error(capsys, example):
    """The location is the `model` statement, past the file's opening comments."""
    status = cli.main(["gradcheck", str(example)])
    err = capsys.readouterr().err
    assert status == 1
    lines = example.read_text().splitlines()
    row = next(k for k, line in enumerate(lines) if line.startswith("model "))
    assert err.startswith(f"{example}:{row + 1}:1: error:") and "no loss" in err
    assert err.splitlines()[1].strip() == lines[row]


def test_gradcheck_fails_on_a_wrong_gradient(capsys, monkeypatch):
    exact = reference.value_and_grad

    def off_by_one_percent(*args, **kwargs):
        loss, grads = exact(*args, **kwargs)
        return loss, {name: 1.01 * g for name, g in grads.items()}

    monkeypatch.setattr(reference, "value_and_grad", off_by_one_percent)
    assert cli.main(["gradcheck", "examples/linreg.nn"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 of 2 parameters: a, b" in out


NOT_FINITE = ("error: the loss is not finite at the random point of seed 0 (inputs outside "
              "the domain of sqrt or log?); try another seed (--seed N)\n")


@pytest.mark.parametrize("loss", ["mean(sqrt(x * w))", "mean(log(x * w))"])
def test_gradcheck_outside_the_domain_says_so_without_numpy_warnings(tmp_path, loss):
    """Random inputs x make x * w negative: the loss is NaN, which is not the gradient's fault."""
    path = write(tmp_path, f"model root\ninput x[N]\nparam w = 0.5\nloss {loss}\n")
    result = symnet("gradcheck", path)
    assert result.returncode == 1
    assert result.stderr == NOT_FINITE and result.stdout == ""


def test_gradcheck_with_a_non_finite_difference_says_so(capsys, monkeypatch):
    monkeypatch.setattr(reference, "finite_difference", lambda *args: np.array([np.nan]))
    assert cli.main(["gradcheck", "examples/linreg.nn"]) == 1
    assert capsys.readouterr().err == NOT_FINITE


def test_gradcheck_says_when_it_compared_only_zeros(capsys):
    """At seed 0 the perceptron classifies every random point right: both gradients are
    0, and a plain "ok" would claim a check that compared nothing."""
    assert cli.main(["gradcheck", "examples/perceptron.nn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["note: the checked gradient entries of w, b are all 0 at this point, "
                          "so nothing was compared there; try another --seed",
                          "ok: all 2 parameters"]
    assert cli.main(["gradcheck", "examples/perceptron.nn", "--seed", "1"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_gradcheck_runs_as_a_command():
    result = symnet("gradcheck", "examples/linreg.nn", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "ok: all 2 parameters" in result.stdout


# ---- errors -------------------------------------------------------------------------
def test_internal_errors_are_one_line_with_status_2(capsys, monkeypatch):
    def broken(model):
        raise RuntimeError("boom")

    monkeypatch.setattr("compiler.model.Model.summary", broken)
    assert cli.main(["check", "examples/linreg.nn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("internal error: RuntimeError: boom") and err.count("\n") == 1
    with pytest.raises(RuntimeError):
        cli.main(["check", "examples/linreg.nn", "--traceback"])


def test_missing_file_is_a_user_error(capsys):
    assert cli.main(["check", "examples/nonexistent.nn"]) == 1
    assert capsys.readouterr().err == "error: no such file: examples/nonexistent.nn\n"


@pytest.mark.parametrize("argv, message", [
    (["trian", "x.nn"], "symnet: error: unknown command 'trian'; did you mean 'train'? (the "
                        "commands are check, grad, gradcheck, train, eval, run, compile,"),
    (["evaluate", "x.nn"], "symnet: error: unknown command 'evaluate'; did you mean 'eval'?"),
    (["check", "a.nn", "b.nn"],
     "symnet check: error: unrecognized arguments: b.nn (see 'symnet check --help')"),
    (["check", "examples/linreg.nn", "--wrt", "a"],
     "symnet check: error: unrecognized arguments: --wrt a (see 'symnet check --help')"),
    ([], "symnet: error: the following arguments are required: command (see 'symnet --help')"),
    (["train", "examples/mlp.nn", "-o", ""],      # it trained, then saved nothing
     "symnet train: error: argument -o/--output: the value is empty (see 'symnet train --help')"),
    (["eval", "examples/mlp.nn", "--weights", "w.ckpt", "--data", ""],    # read Fashion-MNIST
     "symnet eval: error: argument --data: the value is empty"),
    (["check", ""], "symnet check: error: argument file: the value is empty"),
    (["train", "examples/mlp.nn", "--epochs", "0"],
     "symnet train: error: argument --epochs: must be at least 1, got 0 (see 'symnet train --help')"),
    (["compile", "examples/mlp.nn", "--arch", "sm_75"],
     "symnet compile: error: argument --arch: invalid choice: 'sm_75' (choose from 'sm_80', 'sm_90')"),
    (["train", "examples/mlp.nn", "--seed", "-1"],
     "symnet train: error: argument --seed: must be at least 0, got -1"),
    (["gradcheck", "examples/linreg.nn", "--seed", "-1"],
     "symnet gradcheck: error: argument --seed: must be at least 0, got -1"),
    (["gpucheck", "examples/linreg.nn", "--seed", "-1"],
     "symnet gpucheck: error: argument --seed: must be at least 0, got -1"),
    (["train", "examples/mlp.nn", "--batch", "ten"],
     "symnet train: error: argument --batch: expected a whole number, got 'ten'"),
    (["train", "examples/mlp.nn", "--lr", "nan"],
     "symnet train: error: argument --lr: must be a positive finite number, got nan"),
    (["train", "examples/mlp.nn", "--lr", "inf"],
     "symnet train: error: argument --lr: must be a positive finite number, got inf"),
    (["train", "examples/mlp.nn", "--lr", "fast"],
     "symnet train: error: argument --lr: expected a number, got 'fast'"),
    (["train", "examples/mlp.nn", "--lr", "1e400"],
     "symnet train: error: argument --lr: must be a positive finite number, got 1e400"),
])
def test_a_wrong_command_line_is_one_line_with_status_1(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_load_refuses_a_negative_seed_naming_it():
    """NumPy's own error ('expected non-negative integer') would not say which value."""
    with pytest.raises(ValueError, match="seed must be a whole number of at least 0, got -1"):
        compiler.load("examples/mlp.nn", seed=-1)


@pytest.mark.parametrize("option", [{"batch": 0}, {"samples": 0}, {"batch": 2.5}])
def test_gradcheck_refuses_a_batch_or_sample_count_below_one_naming_it(option):
    """NumPy's own error ('cannot reshape array of size 0') would not say which."""
    (name, value), = option.items()
    with pytest.raises(ValueError, match=f"^{name} must be a whole number of at least 1, "
                                         f"got {value}$"):
        compiler.gradcheck(compiler.load("examples/linreg.nn"), **option)


@pytest.mark.parametrize("text", [b"input x[N]\n", None, Path("examples/linreg.nn")])
def test_parse_takes_text_and_says_so(text):
    with pytest.raises(TypeError, match=r"^parse takes the model's text as a str, got "
                                        r"\w+ \(for a file, use compiler.load\(path\)\)$"):
        compiler.parse(text)


def test_version_names_the_release_and_the_code_generator(capsys):
    from compiler.native import VERSION
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == VERSION.replace("symnet-", "symnet ") + "\n"


def test_every_verb_has_help():
    parser = cli.build_parser()
    assert set(cli.VERBS) <= set(parser.format_help().split())
    assert all(verb.help for verb in cli.VERBS.values())


def test_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    """`symnet grad FILE | head -1`: once the reader is gone, no error and no traceback."""
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["grad", "examples/linreg.nn"]) == 1
    assert capsys.readouterr().err == ""


def python_c(script):
    """`python -c script` in a fresh interpreter: what it imports is its own."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)


def test_an_llvmlite_too_old_is_one_line_before_anything_runs():
    """llvmlite before 0.46 cannot parse the IR symnet writes (opaque pointers): the
    command says so in one line, exit status 1, instead of failing in code generation."""
    script = ("import sys, llvmlite; llvmlite.__version__ = '0.44.0'; "
              "from symnet import cli; sys.exit(cli.main(['check', 'examples/linreg.nn']))")
    result = python_c(script)
    assert result.returncode == 1
    assert result.stderr == ("error: symnet needs llvmlite 0.46 or newer; this is 0.44.0 "
                             "(pip install -U llvmlite)\n")
    assert result.stdout == ""


def test_ctrl_c_while_the_compiler_loads_exits_130_without_a_traceback():
    """A KeyboardInterrupt raised by the import of the command line (as a Ctrl-C in the
    first second would) ends the command quietly, as one during training does."""
    script = ("import sys\n"
              "class Interrupt:\n"
              "    def find_spec(name, path=None, target=None):\n"
              "        if name == 'symnet.cli':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Interrupt)\n"
              "from symnet.__main__ import entry\n"
              "sys.exit(entry())\n")
    result = python_c(script)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def test_importing_symnet_loads_the_compiler_only_when_used():
    script = ("import sys, symnet; print('sympy' in sys.modules); "
              "print(sorted(symnet.gradients(symnet.load('examples/linreg.nn'))))")
    result = python_c(script)
    assert result.stdout == "False\n['a', 'b']\n", result.stderr


def test_version_help_and_usage_errors_start_without_the_compiler():
    """`symnet --version`, `--help`, `VERB --help` and a usage error load neither sympy,
    networkx nor LLVM (together about a second); the version is still the compiler's."""
    script = ("import sys\n"
              "from symnet import cli\n"
              "for argv in (['--version'], ['--help'], ['train', '--help'], ['train'], ['trian']):\n"
              "    try:\n"
              "        cli.main(argv)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "print(sorted(m for m in ('sympy', 'networkx', 'llvmlite') if m in sys.modules))\n"
              "from compiler.native import VERSION\n"
              "print(VERSION.replace('symnet-', 'symnet '))\n")
    result = python_c(script)
    lines = result.stdout.splitlines()
    assert lines[-2:] == ["[]", lines[0]], result.stderr
    assert lines[0].startswith("symnet 0.") and "usage: symnet train" in result.stdout
    assert "the following arguments are required: file" in result.stderr
    assert "unknown command 'trian'" in result.stderr
