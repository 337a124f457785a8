"""Fuzzing the parser and checker: every input ends in a Model or a located SymnetError.

compiler.parse(text, filename) is fed random token streams, mutated example files,
deep nesting, huge numbers and unicode. Whatever the input, the outcome must be a
Model or a SymnetError whose format() starts with `FILE:LINE:COL: error:` (or plain
`error:` when it has no location) and whose location is a real position in the text.
Any other exception is a bug: Python would print a traceback. (No time bound per case:
speed is measured by benchmarks, not by timed assertions that fail on a loaded machine.)

The runs are derandomized, so CI sees the same ~2,800 cases every time. For a bigger
run by hand: SYMNET_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py
(each test then runs that many cases; without derandomize, so new ones each time).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import reference
from compiler.errors import SymnetError
from compiler.model import MAX_RANK, Model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.stem: p.read_text() for p in sorted((ROOT / "examples").glob("*.nn"))}
FILENAME = "fuzz.nn"
LOCATED = re.compile(r"^fuzz\.nn:(\d+):(\d+): error: \S")

_BIG_RUN = int(os.environ.get("SYMNET_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples):
    """`examples` cases in CI (reproducible); SYMNET_FUZZ_EXAMPLES cases, fresh ones, by hand."""
    return settings(max_examples=_BIG_RUN or examples, derandomize=not _BIG_RUN,
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(text):
    """Parse `text`; return the Model or the SymnetError after checking its form.

    Any exception other than SymnetError propagates and fails the test."""
    try:
        model = compiler.parse(text, FILENAME)
    except SymnetError as error:
        check_diagnostic(error, text)
        return error
    assert isinstance(model, Model)
    return model


def check_diagnostic(error, text):
    formatted = error.format()
    assert "\n" not in error.message, f"multi-line message: {error.message!r}"
    if error.loc is None:
        assert formatted.startswith("error: "), formatted
        return
    match = LOCATED.match(formatted)
    assert match, f"not FILE:LINE:COL: error: ... : {formatted!r}"
    line, col = int(match[1]), int(match[2])
    lines = text.removeprefix("\ufeff").split("\n")      # a byte-order mark is skipped
    assert 1 <= line <= len(lines), f"line {line} outside a {len(lines)}-line text"
    source_line = lines[line - 1].rstrip("\r")
    assert 1 <= col <= len(source_line) + 1, f"column {col} outside line {source_line!r}"
    assert error.loc.line_text == source_line


# ---- random token streams ------------------------------------------------------------------
KEYWORDS = "model input param const output loss fn op train".split()
BUILTINS = ("relu sigmoid tanh leaky_relu elu step sign exp log sqrt abs max min softmax "
            "log_softmax onehot dense conv2d maxout maxpool avgpool flatten reshape transpose "
            "sum mean mse cross_entropy binary_cross_entropy").split()
NAMES = "x y N W b h z k i j n A B f32 i32 glorot he zeros normal sgd adam h.W".split()
KEYWORD_ARGS = "axis filters size stride pad bias units alpha init lr epochs batch".split()
NUMBERS = ["0", "1", "2", "3", "4", "16", "0.5", "-1", "1e-3", ".5", "1e308", "1e400",
           "99999999999999999999", "2x", "1.2.3", "1e"]
STRINGS = ['"same"', '"valid"', '""', '"unterminated']
PUNCTUATION = list("+-*/^@=~:,()[]") + ["#", "\n", "\n", "\t"]
TOKENS = KEYWORDS + BUILTINS + NAMES + KEYWORD_ARGS + NUMBERS + STRINGS + PUNCTUATION

token_streams = st.lists(st.sampled_from(TOKENS), max_size=60).flatmap(
    lambda toks: st.lists(st.sampled_from([" ", "", "\n"]), min_size=len(toks),
                          max_size=len(toks)).map(
        lambda seps: "".join(t + s for t, s in zip(toks, seps))))

HEADERS = ["", "input x[N, 4]\n", "input x[N, 1, 8, 8]\ninput y[N] : i32\n",
           "input x[N, 3]\nparam W[3, 2] ~ glorot\nparam b = 0.5\n",
           "input x[N]\nconst k[2, 2] = [[1, 0], [0, 1]]\n"]


@fuzz_settings(600)
@given(token_streams)
def test_random_token_streams(text):
    outcome(text)


@fuzz_settings(450)
@given(st.sampled_from(HEADERS), st.sampled_from(["h = ", "output o = ", "loss ", ""]),
       token_streams)
def test_statements_after_valid_declarations(header, start, tokens):
    """Random right-hand sides after real declarations reach the checker, not only the parser."""
    outcome(header + start + tokens.replace("\n", " "))


# ---- mutated example files ---------------------------------------------------------------------
TOKEN_RE = re.compile(r'\s+|[A-Za-z_][\w.]*|\d+(?:\.\d*)?(?:e[+-]?\d+)?|"[^"\n]*"|.')


def mutate(pieces, mutations, vocabulary):
    """Apply (kind, where, choice) mutations to a list of pieces (tokens or characters)."""
    pieces = list(pieces)
    for kind, where, choice in mutations:
        if not pieces:
            pieces = [vocabulary[choice % len(vocabulary)]]
            continue
        k = int(where * len(pieces)) % len(pieces)
        if kind == "delete":
            del pieces[k]
        elif kind == "insert":
            pieces.insert(k, vocabulary[choice % len(vocabulary)])
        elif kind == "duplicate":
            pieces.insert(k, pieces[choice % len(pieces)])
        elif kind == "swap":
            j = choice % len(pieces)
            pieces[k], pieces[j] = pieces[j], pieces[k]
        else:
            pieces[k] = vocabulary[choice % len(vocabulary)]
    return "".join(pieces)


mutations = st.lists(st.tuples(st.sampled_from(["delete", "insert", "duplicate", "swap",
                                                "replace"]),
                               st.floats(0, 1, exclude_max=True), st.integers(0, 10**6)),
                     min_size=1, max_size=6)


@fuzz_settings(600)
@given(st.sampled_from(sorted(EXAMPLES)), mutations)
def test_mutated_examples_by_token(name, changes):
    pieces = TOKEN_RE.findall(EXAMPLES[name])
    assert "".join(pieces) == EXAMPLES[name]
    outcome(mutate(pieces, changes, TOKENS))


@fuzz_settings(350)
@given(st.sampled_from(sorted(EXAMPLES)), mutations,
       st.lists(st.characters(codec="utf-8"), min_size=1, max_size=8))
def test_mutated_examples_by_character(name, changes, alphabet):
    outcome(mutate(EXAMPLES[name], changes, alphabet + list("()[],=\n#\"0")))


# ---- deep nesting -----------------------------------------------------------------------------
NESTERS = {
    "parentheses": ("input x[N]\nh = ", "(", "x", ")"),
    "calls": ("input x[N]\nh = ", "relu(", "x", ")"),
    "softmaxes": ("input x[N, 3]\nh = ", "softmax(", "x", ")"),
    "negations": ("input x[N]\nh = ", "-", "x", ""),
    "powers": ("input x[N]\nh = ", "x ^ ", "x", ""),
    "list_literal": ("param w[1] = ", "[", "1", "]"),     # a rank mismatch beyond depth 1
    "keyword_values": ("input x[N, 3]\nh = ", "softmax(x, axis=", "-1", ")"),
    "op_body": ("op f(A)[i] = ", "sum(k: A[k] * ", "A[i]", ")"),
    "unclosed": ("input x[N]\nh = ", "(", "x", ""),
}


@fuzz_settings(120)
@given(st.sampled_from(sorted(NESTERS)), st.integers(1, 20000))
def test_deep_nesting(kind, depth):
    head, opener, core, closer = NESTERS[kind]
    outcome(head + opener * depth + core + closer * depth + "\n")


@pytest.mark.parametrize("kind", ["parentheses", "calls", "negations", "powers", "list_literal"])
def test_moderate_nesting_is_accepted(kind):
    """The depth limit only stops absurd inputs: 40 levels is a valid model (a literal of
    as many dimensions as NumPy holds: 64, or 32 before NumPy 2)."""
    head, opener, core, closer = NESTERS[kind]
    depth = 40
    if kind == "list_literal":
        depth = min(depth, MAX_RANK)
        head = f"param w[{', '.join(['1'] * depth)}] = "
    assert isinstance(outcome(head + opener * depth + core + closer * depth + "\n"), Model)


@pytest.mark.parametrize("statement, column", [
    ("input x[{dims}]", 1), ("param w[{dims}] = 0", 1), ("const c = {literal}", 11),
    ("input x[1]\nh = reshape(x, [{dims}])", 5)])
def test_more_dimensions_than_numpy_holds_is_a_located_error(statement, column):
    """Every tensor becomes an ndarray: one dimension more than NumPy's limit is a
    message at the statement (or the literal), not an internal error later."""
    rank = MAX_RANK + 1
    text = statement.format(dims=", ".join(["1"] * rank), literal="[" * rank + "1" + "]" * rank)
    error = outcome("model deep\n" + text + "\n")
    assert isinstance(error, SymnetError)
    assert re.search(rf"has {rank} dimensions; NumPy \S+ holds at most {MAX_RANK}$",
                     str(error).splitlines()[0]), str(error)
    assert (error.loc.line, error.loc.col) == (text.count("\n") + 2, column), error.loc


@fuzz_settings(25)
@given(st.integers(1, 20000))
def test_long_flat_expressions(terms):
    """`x + x + ... + x` is flat to the parser but a deep tree: refused or built, no crash."""
    outcome("input x[N]\nh = x" + " + x" * terms + "\n")


# ---- huge and odd numbers -----------------------------------------------------------------------
HUGE = ["1e308", "1e400", "99999999999999999999", "999999999999", "1" + "0" * 400,
        "0." + "0" * 500 + "1", "1e-400", "4294967296", "9223372036854775808"]
# Sizes that name at most a few elements each way (no memory is allocated for them).
DIMS = HUGE + ["0", "1", "-1", "1.5", "N", "M"]


@fuzz_settings(120)
@given(st.lists(st.sampled_from(DIMS), min_size=1, max_size=4))
def test_huge_numbers_as_input_dims(dims):
    error = outcome(f"input x[{', '.join(dims)}]\noutput o = x\n")
    if isinstance(error, SymnetError) and any(d in HUGE[2:3] for d in dims):
        assert "too large" in error.message or "expected a dimension" in error.message


@fuzz_settings(120)
@given(st.sampled_from(HUGE + ["-" + h for h in HUGE]),
       st.sampled_from(["param w = {}\nloss w * w\n", "param w[2] = [{}, 1]\nloss sum(w)\n",
                        "input x[N]\nh = x * {}\n", "input x[N]\nh = x ^ {}\n",
                        "train sgd(lr={})\n", "input x[N, 3]\nh = leaky_relu(x, alpha={})\n"]))
def test_huge_numbers_as_values(number, template):
    """Values (not sizes) that overflow are refused as 'too large'; the rest are accepted."""
    result = outcome(template.format(number))
    if number.lstrip("-") in ("1e400", "1" + "0" * 400):
        assert isinstance(result, SymnetError) and "too large" in result.message


# ---- unicode ---------------------------------------------------------------------------------
ODD_CHARACTERS = ["\x00", "\u202e", "\u200f", "\ufeff", "\u2028", "\u00e9", "\u03b1", "\u4e2d",
                  "\U0001f600", "\r", "\x0c", "\x1b", "\ud800"]


@fuzz_settings(150)
@given(st.sampled_from(sorted(EXAMPLES)), st.text(min_size=1, max_size=20))
def test_any_text_in_comments_is_ignored(name, comment):
    """A comment may hold anything but a newline; the model is the same without it."""
    comment = comment.replace("\n", " ")
    lines = EXAMPLES[name].split("\n")
    commented = "\n".join(line + "  # " + comment if line else line for line in lines)
    model = outcome(commented)
    assert isinstance(model, Model), model
    assert sorted(model.params) == sorted(compiler.parse(EXAMPLES[name], FILENAME).params)


@fuzz_settings(250)
@given(st.sampled_from(sorted(EXAMPLES)),
       st.lists(st.one_of(st.sampled_from(ODD_CHARACTERS), st.characters()), min_size=1,
                max_size=4),
       st.floats(0, 1, exclude_max=True))
def test_unicode_anywhere(name, inserted, where):
    """Non-ASCII letters, NULs, BOMs, RTL marks, lone surrogates in identifiers or strings."""
    text = EXAMPLES[name]
    k = int(where * len(text))
    outcome(text[:k] + "".join(inserted) + text[k:])


@pytest.mark.parametrize("text", [
    "input \u00e9t\u00e9[N]\n", "input x\x00[N]\n", "input x[N]\n\ufeffh = x\n",  # BOM: only first
    "input x[N]\nh = x\u202e + x\n", "input x[N]\u2028h = x\n", "input x[N, \U0001f600]\n",
])
def test_unicode_outside_comments_is_a_located_error(text):
    error = outcome(text)
    assert isinstance(error, SymnetError) and error.loc is not None
    assert "unexpected character" in error.message


@pytest.mark.parametrize("text", [
    'input x[N, 1, 6, 6]\nh = conv2d(x, filters=1, size=3, pad="a\u202eb")\n',
    'input x[N]\nh = x "\x1b[31mred\x00"\n',
])
def test_diagnostics_escape_control_characters(text):
    error = outcome(text)
    assert isinstance(error, SymnetError)
    assert error.message.isprintable(), repr(error.message)


# ---- the command line ----------------------------------------------------------------------------
def cli_cases():
    """A few mutated files, each a different kind of error, fixed for reproducibility."""
    lenet, mlp = EXAMPLES["lenet5"], EXAMPLES["mlp"]
    return {
        "deleted_paren": lenet.replace("flatten(s4)", "flatten(s4"),
        "swapped_tokens": mlp.replace("dense(x, 128)", "dense(128, x)"),
        "inserted_operator": mlp.replace("relu(dense(h1", "relu(* dense(h1"),
        "huge_dimension": mlp.replace("784", "99999999999999999999"),
        "unicode_name": mlp.replace("h2 =", "h\u00b2 ="),
        "deep_nesting": "input x[N]\nh = " + "(" * 500 + "x" + ")" * 500 + "\n",
        "nul_byte": lenet.replace("c3", "c\x003", 1),
    }


@pytest.mark.parametrize("case", sorted(cli_cases()))
def test_cli_check_on_fuzzed_files(tmp_path, case):
    path = tmp_path / f"{case}.nn"
    path.write_text(cli_cases()[case], encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "symnet", "check", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert re.match(re.escape(str(path)) + r":\d+:\d+: error: \S", first), first


def test_cli_check_on_invalid_utf8(tmp_path):
    path = tmp_path / "binary.nn"
    path.write_bytes(b"input x[N]\n\xff\xfe\x00garbage\n")
    result = subprocess.run([sys.executable, "-m", "symnet", "check", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:2:1: error: this file is not UTF-8 text (byte 0xff)")


# ---- crashes found by fuzzing, reduced to one line each ------------------------------------------
def bug(name, text, reason, refused=None):
    """A fixed crash; `reason` says what used to fail. `refused`: what the located error
    says now, or None where the model is valid (then it must run)."""
    return pytest.param(text, refused, id=name)


@pytest.mark.parametrize("text, refused", [
    bug("dense_1e308", "input x[N, 4]\nh = dense(x, 1e308)\n",
        "huge layer width: numpy ValueError 'Maximum allowed dimension exceeded' from "
        "model.initial_values; bound units/filters/pieces in ops (e.g. < 2**31 and total "
        "parameter size) and raise SymnetError",
        refused="dense argument 'units' is too large"),
    bug("dense_20_digits", "input x[N, 4]\nh = dense(x, 99999999999999999999)\n",
        "as above, integer literal",
        refused="dense argument 'units' is too large"),
    bug("conv2d_filters_1e308", "input x[N, 1, 6, 6]\nh = conv2d(x, filters=1e308, size=1)\n",
        "as above, conv2d",
        refused="conv2d argument 'filters' is too large"),
    bug("maxout_20_digits", "input x[N, 4]\nh = maxout(x, 99999999999999999999)\n",
        "as above, maxout",
        refused="maxout argument 'units' is too large"),
    bug("param_745_GiB", "param w[99999999999] ~ zeros\n",
        "MemoryError allocating a 745 GiB parameter in model.initial_values: refuse "
        "parameters/consts above a size limit with a located SymnetError",
        refused="dimension must be between 1 and 2147483647, got 99999999999"),
    bug("dense_weights_14_TiB", "input x[N, 999999999999]\nh = dense(x, 2)\n",
        "MemoryError, as above (dense weights)",
        refused="dimension must be between 1 and 2147483647, got 999999999999"),
    bug("maxout_pieces_negative", "input x[N, 4]\nh = maxout(x, 2, pieces=-1)\n",
        "negative pieces: numpy ValueError 'negative dimensions'; ops.maxout checks nothing",
        refused="maxout argument 'pieces' must be at least 1, got -1"),
    bug("maxout_units_negative", "input x[N, 4]\nh = maxout(x, -3)\n",
        "negative units: OverflowError in glorot init",
        refused="maxout argument 'units' must be at least 1, got -3"),
    bug("conv2d_filters_negative", "input x[N, 1, 6, 6]\nh = conv2d(x, filters=-1, size=1)\n",
        "negative filters: numpy ValueError; ops.conv2d should require filters >= 1",
        refused="conv2d argument 'filters' must be at least 1, got -1"),
    bug("conv2d_size_0", "input x[N, 1, 6, 6]\nh = conv2d(x, filters=2, size=0)\n",
        "size=0: ZeroDivisionError in the he initializer (fan_in 0); require size >= 1",
        refused="conv2d argument 'size' must be at least 1, got 0"),
    bug("conv2d_size_negative", "input x[N, 1, 6, 6]\nh = conv2d(x, filters=2, size=-1)\n",
        "negative size: ValueError",
        refused="conv2d argument 'size' must be at least 1, got -1"),
    bug("mean_of_scalar", "param a = 1.0\nloss mean(a)\n",
        "sum/mean of a scalar: IRError 'reduction variables and kind disagree' from "
        "index_ir.verify; ops.reduction_op should return a rank-0 input unchanged (sum) when "
        "there are no axes to reduce"),
    bug("mean_of_vector_dot", "input x[N]\ninput y[N]\nloss mean((x @ y) ^ 2)\n",
        "as above, via [N] @ [N]"),
    bug("sum_of_axis_sum", "param a[3] = 1\nb = sum(a, axis=0)\nc = sum(b)\n",
        "as above, after an axis sum"),
    bug("flatten_zero_filters", "input x[N, 1, 6, 6]\nh = flatten(conv2d(x, filters=0, size=1))\n",
        "filters=0 is accepted (a [N, 0, 6, 6] tensor) and flatten then raises sympy's "
        "ZeroDivisionError 'Modulo by zero' in ops._relayout; require filters >= 1",
        refused="conv2d argument 'filters' must be at least 1, got 0"),
    bug("flatten_onehot_0", "input x[N, 4]\nh = flatten(onehot(x, 0))\n",
        "as above, onehot with k=0",
        refused="onehot argument 'k' must be at least 1, got 0"),
    bug("dense_symbolic_features", "input x[N, M]\nh = dense(x, 3)\n",
        "dense on a symbolic feature size: TypeError in model.initial_values (np.sqrt of a "
        "sympy expression); dense/maxout/conv2d should require fixed feature sizes, like "
        "conv2d's 'needs fixed image sizes'",
        refused="dense needs a fixed number of input features, got [N, M]"),
])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")        # numpy's, from the bugs above
def test_checker_never_crashes_on_bad_sizes(text, refused):
    """Not crashing is not enough: a bad size is refused with its own message (accepting
    the model, or refusing it for another reason, would also have passed as 'no crash'),
    and a valid model runs."""
    check_fixed_crash(outcome(text), refused)


def check_fixed_crash(result, refused):
    if refused is None:
        assert isinstance(result, Model), result
        reference.forward(result, reference.random_inputs(result, batch=2))
    else:
        assert isinstance(result, SymnetError), f"accepted; expected the error {refused!r}"
        assert refused in result.message, result.message


@pytest.mark.parametrize("program", ["param a = 1.5\nloss mean(a)\n",
                                     "input x[N]\ninput y[N]\nparam s = 2\nloss mean(s * (x @ y) ^ 2)\n"])
def test_reductions_of_a_scalar_compute_the_scalar(program):
    """What the fixed crashes above (mean_of_scalar, mean_of_vector_dot) compute: the mean
    of a scalar is the scalar, in the reference and in native code."""
    model = compiler.parse(program, FILENAME)
    x, y = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0, 2.0])
    inputs = {"x": x, "y": y} if model.inputs else {}
    dot = float(x @ y)
    want_loss, want_grad = ((1.5, {"a": 1.0}) if not model.inputs else (2 * dot ** 2, {"s": dot ** 2}))
    for loss, grads in (reference.value_and_grad(model, inputs),
                        compiler.compile(model, dtype="f64", cache=False).value_and_grad(inputs)):
        assert float(loss) == pytest.approx(want_loss, rel=1e-12)
        assert {k: float(v) for k, v in grads.items()} == pytest.approx(want_grad, rel=1e-12)


@pytest.mark.parametrize("text, refused", [
    bug("maxout_zero_units", "input x[N, 4]\noutput h = maxout(x, 0)\n",
        "maxout with 0 units is accepted; reference.forward raises numpy ValueError (cannot "
        "reshape array of size 0)",
        refused="maxout argument 'units' must be at least 1, got 0"),
    bug("conv2d_stride_beyond_int64",
        "const k[3, 3] = 1\ninput x[N, 1, 6, 6]\n"
        "output h = conv2d(x, k, stride=99999999999999999999)\n",
        "an integer argument beyond int64 is accepted; reference.forward raises "
        "OverflowError. Bound integer arguments (e.g. |v| < 2**31) in graph._argument",
        refused="conv2d argument 'stride' is too large"),
    bug("onehot_k_negative", "input x[N, 4]\noutput h = onehot(x, -1)\n",
        "onehot with k < 1 is accepted (shape [N, 4, -1]); reference.forward then raises "
        "numpy ValueError. ops.onehot should require k >= 1",
        refused="onehot argument 'k' must be at least 1, got -1"),
    bug("reshape_negative_dims", "input x[N, 4]\noutput h = reshape(x, [N, -2, -2])\n",
        "reshape accepts negative dims whose product matches (-2 * -2 = 4); ops.reshape "
        "should allow only positive sizes and one -1",
        refused="a dimension must be a positive integer or -1"),
])
def test_accepted_models_run(text, refused):
    """What the checker accepts must run; these, once accepted and then crashing, are now
    refused, each with its own message."""
    check_fixed_crash(outcome(text), refused)


@pytest.mark.parametrize("setting", ["lr=-1", "batch=0", "epochs=-5", "batch=2.5"])
def test_train_statement_values_are_checked(setting):
    error = outcome(f"input x[N]\nparam a = 1\nloss mean(a * x)\ntrain sgd({setting})\n")
    assert isinstance(error, SymnetError) and error.loc is not None and error.loc.line == 4
