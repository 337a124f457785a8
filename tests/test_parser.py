"""Tests for compiler/parser.py: the spec's examples, precedence, layout, errors, fuzzing."""
import random

import pytest

from compiler import syntax as ast
from compiler.errors import printable, SymnetError
from compiler.parser import MAX_DEPTH, parse_program
from test_spec_examples import PROGRAMS

# The language spec's three programs (linear regression, LeNet-5, a custom op), kept once
# in test_spec_examples.py.
LINREG, LENET, CUSTOM = PROGRAMS


def expr_of(source):
    """The expression of a one-line `y = EXPR` program."""
    (stmt,) = parse_program(source).statements
    return stmt.expr


def show(e):
    """A compact, fully parenthesised rendering of an expression tree."""
    if isinstance(e, ast.Num):
        return repr(int(e.value)) if e.is_int else repr(e.value)
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Str):
        return f'"{e.value}"'
    if isinstance(e, ast.BinOp):
        return f"({show(e.left)} {e.op} {show(e.right)})"
    if isinstance(e, ast.Neg):
        return f"(-{show(e.operand)})"
    if isinstance(e, ast.Call):
        parts = [show(a) for a in e.args] + [f"{k.name}={show(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, ast.Index):
        return f"{e.base}[{', '.join(show(i) for i in e.indices)}]"
    if isinstance(e, ast.ListLit):
        return f"[{', '.join(show(i) for i in e.items)}]"
    if isinstance(e, ast.Reduce):
        return f"{e.kind}({e.index}: {show(e.body)})"
    raise AssertionError(e)


def dims(stmt):
    return [d.value for d in stmt.dims]


def kwargs(node):
    return {k.name: show(k.value) for k in node.kwargs}


# ---- the spec's examples -------------------------------------------------------------
def test_linreg_example():
    prog = parse_program(LINREG, "linreg.nn")
    assert prog.filename == "linreg.nn"
    s = prog.statements
    assert [type(x).__name__ for x in s] == [
        "ModelStmt", "InputStmt", "InputStmt", "ParamStmt", "ParamStmt", "AssignStmt",
        "LossStmt", "TrainStmt"]
    assert s[0].name == "linreg" and s[0].loc.line == 2
    assert (s[1].name, dims(s[1]), s[1].dtype) == ("x", ["N"], "f32")
    assert (s[2].name, dims(s[2]), s[2].dtype) == ("y", ["N"], "f32")
    assert (s[3].name, s[3].dims, s[3].init) == ("a", None, None)
    assert s[3].value == ast.Num(0.4, False, s[3].value.loc)
    assert (s[4].name, s[4].value.value) == ("b", 0.1)
    assert (s[5].name, show(s[5].expr)) == ("yhat", "((a * x) + b)")
    assert s[6].name is None and show(s[6].expr) == "mean(((y - yhat) ^ 2))"
    assert s[7].optimizer == "sgd"
    assert kwargs(s[7]) == {"lr": "0.5", "batch": "N", "epochs": "100"}
    assert s[7].kwargs[2].value.is_int and s[7].kwargs[2].value.value == 100


def test_lenet_example():
    s = parse_program(LENET).statements
    assert [type(x).__name__ for x in s] == [
        "ModelStmt", "InputStmt", "InputStmt"] + ["AssignStmt"] * 6 + [
        "OutputStmt", "LossStmt", "TrainStmt"]
    assert s[0].name == "lenet5"
    assert dims(s[1]) == ["N", 1, 28, 28] and s[1].dtype == "f32"
    assert (s[2].name, dims(s[2]), s[2].dtype) == ("y", ["N"], "i32")
    c1 = s[3].expr
    assert c1.func == "relu" and c1.args[0].func == "conv2d"
    conv = c1.args[0]
    assert [show(a) for a in conv.args] == ["x"]
    assert kwargs(conv) == {"filters": "6", "size": "5", "pad": '"same"'}
    assert isinstance(conv.kwargs[2].value, ast.Str) and conv.kwargs[2].value.value == "same"
    assert show(s[4].expr) == "maxpool(c1, 2)"
    assert show(s[7].expr) == "relu(dense(flatten(s4), 120))"
    assert (s[9].name, show(s[9].expr)) == ("logits", "dense(f6, 10)")
    assert show(s[10].expr) == "cross_entropy(logits, y)"
    assert kwargs(s[11]) == {"lr": "0.05", "batch": "64", "epochs": "5"}


def test_custom_example():
    s = parse_program(CUSTOM).statements
    assert [type(x).__name__ for x in s] == [
        "ModelStmt", "InputStmt", "ParamStmt", "FnStmt", "OpStmt", "OutputStmt", "LossStmt"]
    assert dims(s[1]) == ["N", 4]
    w = s[2]
    assert (w.name, dims(w), w.value) == ("W", [4, 3], None)
    assert isinstance(w.init, ast.Name) and w.init.id == "glorot"
    fn = s[3]
    assert (fn.name, fn.params, show(fn.body)) == ("swish", ("z",), "(z * sigmoid(z))")
    op = s[4]
    assert (op.name, op.operands, op.indices) == ("sqdense", ("A", "B"), ("n", "j"))
    assert isinstance(op.body, ast.Reduce)
    assert show(op.body) == "sum(i: (A[n, i] * (B[i, j] ^ 2)))"
    assert (s[5].name, show(s[5].expr)) == ("h", "swish(sqdense(x, W))")
    assert s[6].name is None and show(s[6].expr) == "mean(h)"


# ---- statements ----------------------------------------------------------------------
def test_param_forms():
    s = parse_program("param W[2, 2] = [[1, -2], [3.5, 4]]\n"
                      "param b[3] ~ normal(0, 0.1)\n"
                      "param c[K] = -0.5\n"
                      "param d ~ zeros\n"
                      "const k[3, 3] = [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]\n"
                      "const pi = 3.14159\n").statements
    assert show(s[0].value) == "[[1, (-2)], [3.5, 4]]" and dims(s[0]) == [2, 2]
    assert isinstance(s[0].value.items[0].items[1], ast.Neg)
    assert s[1].value is None and show(s[1].init) == "normal(0, 0.1)"
    assert dims(s[2]) == ["K"] and show(s[2].value) == "(-0.5)"
    assert s[3].dims is None and show(s[3].init) == "zeros"
    assert isinstance(s[4], ast.ConstStmt) and len(s[4].value.items) == 3
    assert s[5].dims is None and s[5].value.value == 3.14159


def test_other_statement_forms():
    s = parse_program("output y\noutput z = y * 2\nloss total = mse(z, t)\n"
                      "train adam\nfn f() = 1\n").statements
    assert (s[0].name, s[0].expr) == ("y", None)
    assert show(s[1].expr) == "(y * 2)"
    assert (s[2].name, show(s[2].expr)) == ("total", "mse(z, t)")
    assert (s[3].optimizer, s[3].kwargs) == ("adam", ())
    assert s[4].params == ()


def test_keywords_are_names_inside_expressions():
    e = expr_of("y = input + loss * model(fn, op=train) + true - false")
    assert show(e) == "(((input + (loss * model(fn, op=train))) + true) - false)"
    assert isinstance(e.right, ast.Name) and e.right.id == "false"


def test_dotted_names_and_numbers():
    assert show(expr_of("y = h.W @ x + h.b")) == "((h.W @ x) + h.b)"
    nums = expr_of("y = f(1, 1e-3, .5, 5., 2E+2, 0.25)").args
    assert [n.value for n in nums] == [1.0, 0.001, 0.5, 5.0, 200.0, 0.25]
    assert [n.is_int for n in nums] == [True, False, False, False, False, False]


def test_index_and_reduce():
    e = expr_of("y = max(k: A[i, k+1, 2*y+ky-1])")
    assert show(e) == "max(k: A[i, (k + 1), (((2 * y) + ky) - 1)])"
    assert show(expr_of("y = sum(x, axis=1)")) == "sum(x, axis=1)"


# ---- precedence ----------------------------------------------------------------------
@pytest.mark.parametrize("source, tree", [
    ("a*x+b", "((a * x) + b)"),
    ("a+x*b", "(a + (x * b))"),
    ("-x^2", "(-(x ^ 2))"),
    ("x^-1", "(x ^ (-1))"),
    ("a@W+b", "((a @ W) + b)"),
    ("2^3^2", "(2 ^ (3 ^ 2))"),
    ("a-b-c", "((a - b) - c)"),
    ("a/b*c", "((a / b) * c)"),
    ("a*-b", "(a * (-b))"),
    ("--a", "(-(-a))"),
    ("(a+b)*c", "((a + b) * c)"),
    ("-a*b", "((-a) * b)"),
    ("2*x^2^-y", "(2 * (x ^ (2 ^ (-y))))"),
    ("(a)^(b)", "(a ^ b)"),
    ("f(x)^2", "(f(x) ^ 2)"),
])
def test_precedence(source, tree):
    assert show(expr_of("y = " + source)) == tree


def test_locations():
    e = expr_of("y = a * foo(x, k=1)")
    assert (e.loc.line, e.loc.col) == (1, 7)             # the operator
    assert (e.right.loc.col, e.right.kwargs[0].loc.col) == (9, 16)
    assert e.loc.line_text == "y = a * foo(x, k=1)" and e.loc.filename == "<string>"


# ---- layout --------------------------------------------------------------------------
def test_continuation_inside_brackets():
    source = ("y = relu(conv2d(x,\n"
              "          filters=6,   # comment inside\n"
              "\n"
              "          size=5))\n"
              "param W[2,\n  2] = [[1, 2],\n   [3, 4]]\n"
              "z = y\n")
    s = parse_program(source).statements
    assert show(s[0].expr) == "relu(conv2d(x, filters=6, size=5))"
    assert s[0].expr.args[0].kwargs[1].loc.line == 4
    assert dims(s[1]) == [2, 2] and show(s[1].value) == "[[1, 2], [3, 4]]"
    assert (s[2].name, s[2].loc.line) == ("z", 8)


def test_blank_lines_comments_tabs_crlf():
    source = "\r\n# ünïcödé ✓ comment\r\n\tmodel m   # trailing\r\n\r\n\ty = a\t*\tb\r\n"
    s = parse_program(source).statements
    assert [type(x).__name__ for x in s] == ["ModelStmt", "AssignStmt"]
    assert s[1].expr.loc.line_text == "\ty = a\t*\tb"
    assert (s[1].loc.line, s[1].loc.col, s[1].expr.loc.col) == (5, 2, 8)
    assert parse_program("").statements == () and parse_program("\n\n  # x\n").statements == ()


def test_byte_order_mark_is_skipped():
    """Windows editors start UTF-8 files with U+FEFF; columns count from after it."""
    prog = parse_program("\ufeffmodel m\ninput x[N]\n")
    assert [type(s).__name__ for s in prog.statements] == ["ModelStmt", "InputStmt"]
    assert prog.statements[0].loc.line_text == "model m"
    assert parse_program("\ufeff").statements == ()
    with pytest.raises(SymnetError) as info:
        parse_program("\ufeffy = a $ b", "bom.nn")
    assert info.value.format() == "bom.nn:1:7: error: unexpected character '$'\n" \
        "    y = a $ b\n          ^"
    with pytest.raises(SymnetError, match="unexpected character '\\\\ufeff'"):
        parse_program("y = 1\n\ufeffz = 2")        # only at the very start


def test_no_trailing_newline_and_trailing_commas():
    s = parse_program("y = f(a, b,)\nz = [1, 2,]").statements
    assert show(s[0].expr) == "f(a, b)" and show(s[1].expr) == "[1, 2]"


# ---- errors --------------------------------------------------------------------------
ERRORS = [
    ("model m\ninput x[N]\ny = f(a,\n  b c)", 4, 5,
     "expected ')' to close '(' opened at 3:6, found 'c'"),
    ("x = 1\ny = (a + b]", 2, 11, "expected ')' to close '(' opened at 2:5, found ']'"),
    ("y = a foo", 1, 7, "unexpected 'foo' after expression"),
    ("y = a)", 1, 6, "unexpected ')' after expression"),
    ("output y z", 1, 10, "unexpected 'z' after statement"),
    ("model m\n  parm W[3] = 1", 2, 3,
     "unknown statement 'parm'; expected model, input, param, const, output, loss, fn, op, "
     "train or NAME = EXPR; did you mean 'param'?"),
    ("inptu x[N, 3]", 1, 1, "unknown statement 'inptu'; expected model, input, param, const, "
     "output, loss, fn, op, train or NAME = EXPR; did you mean 'input'?"),
    ("relu x", 1, 1, "unknown statement 'relu'; expected model, input, param, const, "
     "output, loss, fn, op, train or NAME = EXPR"),
    ("3 = x", 1, 1, "unknown statement '3'; expected model, input, param, const, output, "
     "loss, fn, op, train or NAME = EXPR"),
    ("input x[N, 2.5]", 1, 12, "expected a dimension (integer or name), found '2.5'"),
    ("input x[]", 1, 9, "expected a dimension (integer or name), found ']'"),
    ("input x", 1, 8, "expected '[' after the input name, found end of line"),
    ("input x[N] : f64", 1, 14, "unknown element type 'f64' (expected f32 or i32)"),
    ("input x[99999999999999999999]", 1, 9, "dimension too large '99999999999999999999'"),
    ('c = conv2d(x, pad="same)', 1, 19, "unterminated string"),
    ("y = f(a,\n  [1, 2", 2, 3, "unexpected end of file inside '['"),
    ("x = 1\ny = (a +\n", 2, 5, "unexpected end of file inside '('"),
    ("y = 1e", 1, 5, "invalid number '1e'"),
    ("y = 3 * 1e+", 1, 9, "invalid number '1e+'"),
    ("y = 2x", 1, 5, "invalid number '2x'"),
    ("y = 1.2.3", 1, 5, "invalid number '1.2.3'"),
    ("y = 1e999", 1, 5, "number too large '1e999'"),
    ("y = f(a, k=1, b)", 1, 15, "positional argument after keyword argument"),
    ("y = f(a, k=1, k=2)", 1, 15, "duplicate keyword argument 'k'"),
    ("y = a $ b", 1, 7, "unexpected character '$'"),
    ("y = a\x00", 1, 6, "unexpected character '\\x00'"),
    ("y = a.", 1, 6, "unexpected character '.'"),
    ("y =", 1, 4, "expected an expression, found end of line"),
    ("y = a +\nz = 1", 1, 8, "expected an expression, found end of line"),
    ("y = (" * 1 + "(" * 200 + "x" + ")" * 201, 1, 5 + MAX_DEPTH,
     "expression nested too deeply"),
    ("y = " + "-" * 500 + "x", 1, 5 + MAX_DEPTH, "expression nested too deeply"),
    ("param a = " + "[" * 300 + "1" + "]" * 300, 1, 11 + MAX_DEPTH,
     "expression nested too deeply"),
    ("loss = mse(x, y)  # J", 1, 1,
     "cannot assign to keyword 'loss'; write `loss mse(x, y)`, or `loss J = mse(x, y)` to name it"),
    ("loss = mse(x,\n y)", 1, 1,
     "cannot assign to keyword 'loss'; write `loss EXPR`, or `loss J = EXPR` to name it"),
    ("output = x", 1, 1, "cannot assign to keyword 'output'; choose another name"),
    ("x = 1\nmodel m", 2, 1, "'model' must be the first statement"),
    ("model\n", 1, 6, "expected a model name after 'model', found end of line"),
    ("param W[3]", 1, 11, "expected '=' or '~' after the parameter, found end of line"),
    ("param W[3] = x", 1, 14, "expected a number or a [...] list of numbers, found 'x'"),
    ("param W[3] ~ 0.5", 1, 14,
     "expected an initializer like glorot or normal(0, 0.1), found '0.5'"),
    ("const k[2] [1, 2]", 1, 12, "expected '=' after the constant, found '['"),
    ("fn f(a, 2) = a", 1, 9, "expected a parameter name, found '2'"),
    ("fn f = 1", 1, 6, "expected '(' after the function name, found '='"),
    ("op f(A)[] = A", 1, 9, "expected an index name, found ']'"),
    ("op f(A)[i] A[i]", 1, 12, "expected '=' after the op's indices, found 'A'"),
    ("y = foo(k: x)", 1, 9,
     "'foo(k: ...)' is not a reduction; only sum(k: ...) and max(k: ...) reduce over an index"),
    ("train sgd(0.1, epochs=5)", 1, 11,
     "train takes only key=value arguments, e.g. train sgd(lr=0.1, epochs=5)"),
    ("y = A[]", 1, 7, "expected an expression, found ']'"),
    ("y = f(x)(y)", 1, 9, "unexpected '(' after expression"),
]


@pytest.mark.parametrize("source, line, col, message", ERRORS)
def test_error_messages(source, line, col, message):
    with pytest.raises(SymnetError) as info:
        parse_program(source, "bad.nn")
    err = info.value
    assert err.message == message
    assert (err.loc.filename, err.loc.line, err.loc.col) == ("bad.nn", line, col)
    source_line = source.split("\n")[line - 1]
    assert err.loc.line_text == source_line
    text = err.format().split("\n")
    assert text[0] == f"bad.nn:{line}:{col}: error: {message}"
    # The source line is echoed with control characters escaped (never raw to a terminal).
    assert text[1] == "    " + printable(source_line)
    if source_line.isprintable():
        assert text[2] == "    " + " " * (col - 1) + "^"


def test_depth_limit_is_not_hit_by_reasonable_nesting():
    depth = MAX_DEPTH // 2
    e = expr_of("y = " + "f(k=" * depth + "x" + ")" * depth)
    for _ in range(depth):
        e = e.kwargs[0].value
    assert e == ast.Name("x", e.loc)
    assert show(expr_of("y = " + "^".join(["x"] * (MAX_DEPTH - 1)))).count("^") == MAX_DEPTH - 2


def test_huge_inputs_end_in_symnet_error_or_success():
    assert expr_of("y = " + "9" * 300).value > 1e299
    with pytest.raises(SymnetError, match="number too large"):
        parse_program("y = " + "9" * 5000)
    with pytest.raises(SymnetError, match="nested too deeply"):
        parse_program("y = " + "(" * 100000)
    with pytest.raises(SymnetError, match="too long or nested too deeply"):
        parse_program("y = " + " + ".join(["x"] * 20000))


@pytest.mark.parametrize("opening, closing", [
    ("(", ")"), ("f(", ")"), ("f(k=", ")"), ("sum(k: ", ")"), ("[", "]"), ("A[", "]"),
    ("-", ""), ("x^", ""), ("1 + (", ")"),
])
def test_nesting_up_to_the_limit_parses(opening, closing):
    n = MAX_DEPTH - 1          # the outermost expression is one level too
    parse_program("y = " + opening * n + "x" + closing * n)
    with pytest.raises(SymnetError, match="nested too deeply"):
        parse_program("y = " + opening * (n + 1) + "x" + closing * (n + 1))


def test_tree_height_limit_counts_long_operator_chains():
    # MAX_DEPTH operators in a left-deep chain are fine, one more is not
    ok = "y = " + " + ".join(["x"] * (MAX_DEPTH + 1))
    assert show(expr_of(ok)).count("+") == MAX_DEPTH
    with pytest.raises(SymnetError) as info:
        parse_program(ok + " - x")
    assert info.value.message == ("expression too long or nested too deeply; "
                                  "split it into several statements")
    assert info.value.loc.col == len(ok) + 2            # the operator that tips it over


# ---- robustness ----------------------------------------------------------------------
ALPHABET = ["model", "input", "param", "const", "output", "loss", "fn", "op", "train",
            "x", "N", "h.W", "sum", "max", "f32", "i32", "glorot", "1", "2.5", "1e-3", ".5",
            "5.", '"same"', "+", "-", "*", "/", "^", "@", "=", "~", ":", ",", "(", ")", "[",
            "]", "\n", "\r\n", " ", "\t", "#", "$", "\x00", '"', ".", "1e", "é", "9" * 400]


def check_outcome(source):
    try:
        prog = parse_program(source, "fuzz.nn")
    except SymnetError as err:
        loc = err.loc
        assert loc is not None and loc.filename == "fuzz.nn"
        lines = [l.rstrip("\r") for l in source.split("\n")]
        assert 1 <= loc.line <= len(lines) and loc.line_text == lines[loc.line - 1]
        assert 1 <= loc.col <= len(loc.line_text) + 1
        assert err.format().startswith(f"fuzz.nn:{loc.line}:{loc.col}: error: ")
    else:
        assert isinstance(prog, ast.Program)


def test_random_token_soup_only_raises_symnet_error():
    rng = random.Random(20240607)
    for _ in range(2000):
        tokens = rng.choices(ALPHABET, k=rng.randint(0, 40))
        check_outcome(rng.choice(["", " "]).join(tokens))


def test_mutated_examples_only_raise_symnet_error():
    rng = random.Random(7)
    sources = [LINREG, LENET, CUSTOM]
    for _ in range(500):
        chars = list(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            action = rng.randrange(3)
            if action == 0:
                del chars[i]
            elif action == 1:
                chars.insert(i, rng.choice("()[]=~:,+-*/^@#\"\n .e1xN"))
            else:
                chars[i], chars[-1 - i] = chars[-1 - i], chars[i]
        check_outcome("".join(chars))


def test_recursion_error_backstop_when_called_from_a_deep_stack():
    import inspect
    import sys
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 120)   # far less room than MAX_DEPTH needs
    try:
        with pytest.raises(SymnetError) as info:
            parse_program("y = " + "f(" * 90 + "x" + ")" * 90)
    finally:
        sys.setrecursionlimit(old)
    assert info.value.message == "expression nested too deeply"
    assert info.value.loc.line == 1
