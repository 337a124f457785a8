"""Lexer and recursive-descent parser for .nn model files.

One statement per logical line; newlines inside an open `(` or `[` are ignored, `#`
starts a comment. Keywords are keywords only as the first word of a statement.

    program  := [model] {stmt}
    stmt     := 'model' NAME
              | 'input' NAME dims [':' ('f32' | 'i32')]
              | 'param' NAME [dims] ('=' literal | '~' init)
              | 'const' NAME [dims] '=' literal
              | 'output' NAME ['=' expr]
              | 'loss' [NAME '='] expr
              | 'fn' NAME '(' [NAME {',' NAME}] ')' '=' expr
              | 'op' NAME '(' [NAME {',' NAME}] ')' '[' NAME {',' NAME} ']' '=' expr
              | 'train' NAME ['(' [NAME '=' expr {',' NAME '=' expr}] ')']
              | NAME '=' expr
    dims     := '[' (INT | NAME) {',' (INT | NAME)} ']'
    literal  := ['-'] NUMBER | '[' [literal {',' literal}] ']'
    init     := NAME [args]                            e.g. glorot, normal(0, 0.1)
    expr     := unary {('+' | '-' | '*' | '/' | '@') unary}    + - below * / @, left assoc
    unary    := '-' unary | primary ['^' unary]        -x^2 = -(x^2), 2^3^2 = 2^(3^2)
    primary  := NUMBER | STRING | NAME | NAME args | NAME '[' expr {',' expr} ']'
              | '(' expr ')' | '[' [expr {',' expr}] ']'
    args     := '(' NAME ':' expr ')'                  sum(k: ...) / max(k: ...): Reduce
              | '(' [expr {',' expr}] {',' NAME '=' expr} ')'

Comma lists may end with a trailing comma. Strings are double-quoted, single-line and
have no escapes. Every error is a SymnetError located at the offending token.
"""
import difflib
import math
from contextlib import contextmanager
from typing import Iterator, List, NamedTuple, Optional

from . import syntax as ast
from .errors import Loc, SymnetError

KEYWORDS = frozenset("model input param const output loss fn op train".split())
DTYPES = ("f32", "i32")
REDUCTIONS = ("sum", "max")
OPERATORS = frozenset("+-*/^@=~:,()[]")
CLOSER_OF = {"(": ")", "[": "]"}
BINARY_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2}
DIGITS = frozenset("0123456789")
# Bounds both the parser's nesting and the height of expression trees. One nesting level
# costs the parser about five Python frames, so 100 stays well inside CPython's default
# recursion limit of 1000, and later stages can recurse over any tree we return.
MAX_DEPTH = 100
MAX_DIM_DIGITS = 12


class Token(NamedTuple):
    kind: str           # NUM NAME STR OP NL EOF
    text: str
    line: int
    col: int


def _describe(tok: Token) -> str:
    if tok.kind == "NL":
        return "end of line"
    if tok.kind == "EOF":
        return "end of file"
    return f"'{_clip(tok.text)}'"


def _keyword_hint(tok: Token) -> str:
    """`; did you mean 'input'?` for a misspelt keyword such as `inptu`."""
    close = (difflib.get_close_matches(tok.text, sorted(KEYWORDS), n=1)
             if tok.kind == "NAME" else [])
    return f"; did you mean '{close[0]}'?" if close else ""


def _clip(text: str) -> str:
    # huge numbers or strings should not flood the terminal
    return text if len(text) <= 30 else text[:27] + "..."


def _ident_start(ch: str) -> bool:
    # ASCII only: str.isalpha() would also accept letters from every other script
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _ident_char(ch: str) -> bool:
    return _ident_start(ch) or ch in DIGITS


# ---- lexer ---------------------------------------------------------------------------
class _Lexer:
    def __init__(self, text: str, filename: str):
        self.filename = filename
        # split on '\n' only (splitlines would also break at form feeds and U+2028),
        # and drop the '\r' of CRLF files so it never shows up in diagnostics; a UTF-8
        # byte-order mark (Windows editors write one) is not part of the text
        text = text[1:] if text.startswith("\ufeff") else text
        self.lines = [line.rstrip("\r") for line in text.split("\n")]
        self.open: List[Token] = []     # unclosed brackets, innermost last

    def loc(self, line: int, col: int) -> Loc:
        return Loc(self.filename, line, col, self.lines[line - 1])

    def error(self, message: str, line: int, col: int):
        raise SymnetError(message, self.loc(line, col))

    def tokens(self) -> Iterator[Token]:
        """All tokens; NL ends a logical line; EOF repeats forever."""
        pending = False                 # tokens emitted since the last NL
        for lineno, line in enumerate(self.lines, 1):
            for tok in self._scan_line(line, lineno):
                pending = True
                yield tok
            if pending and not self.open:
                pending = False
                yield Token("NL", "", lineno, len(line) + 1)
        if self.open:
            opener = self.open[-1]
            self.error(f"unexpected end of file inside '{opener.text}'", opener.line, opener.col)
        eof = Token("EOF", "", len(self.lines), len(self.lines[-1]) + 1)
        while True:
            yield eof

    def _scan_line(self, line: str, lineno: int) -> Iterator[Token]:
        i = 0
        while i < len(line):
            ch, col = line[i], i + 1
            if ch in " \t\r\f\v":
                i += 1
                continue
            if ch == "#":
                return
            if ch in DIGITS or (ch == "." and line[i + 1:i + 2] in DIGITS):
                end, kind = self._scan_number(line, i, lineno), "NUM"
            elif _ident_start(ch):
                end, kind = self._scan_ident(line, i), "NAME"
            elif ch == '"':
                end, kind = line.find('"', i + 1) + 1, "STR"
                if end == 0:
                    self.error("unterminated string", lineno, col)
            elif ch in OPERATORS:
                end, kind = i + 1, "OP"
                self._track_bracket(Token(kind, ch, lineno, col))
            else:
                self.error(f"unexpected character {ch!r}", lineno, col)
            yield Token(kind, line[i:end], lineno, col)
            i = end

    @staticmethod
    def _scan_ident(line: str, i: int) -> int:
        # a dot followed by a letter continues the name: h.W, h.b
        i += 1
        while i < len(line):
            if _ident_char(line[i]):
                i += 1
            elif line[i] == "." and i + 1 < len(line) and _ident_start(line[i + 1]):
                i += 2
            else:
                break
        return i

    def _scan_number(self, line: str, start: int, lineno: int) -> int:
        def digits(i):
            while i < len(line) and line[i] in DIGITS:
                i += 1
            return i

        end = digits(start)
        if end < len(line) and line[end] == ".":
            end = digits(end + 1)
        if end < len(line) and line[end] in "eE":
            exp = end + 1
            if exp < len(line) and line[exp] in "+-":
                exp += 1
            if digits(exp) == exp:
                self._bad_number(line, start, exp, lineno)
            end = digits(exp)
        if end < len(line) and (_ident_char(line[end]) or line[end] == "."):
            self._bad_number(line, start, end, lineno)      # 2x, 1.2.3
        return end

    def _bad_number(self, line: str, start: int, end: int, lineno: int):
        while end < len(line) and (_ident_char(line[end]) or line[end] == "."):
            end += 1
        self.error(f"invalid number '{_clip(line[start:end])}'", lineno, start + 1)

    def _track_bracket(self, tok: Token):
        # Mismatched closers still pop: the parser reports the mismatch, the lexer only
        # needs to know whether newlines are currently insignificant.
        if tok.text in CLOSER_OF:
            self.open.append(tok)
        elif tok.text in ")]" and self.open:
            self.open.pop()


# ---- parser --------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.lexer = _Lexer(text, filename)
        self.stream = self.lexer.tokens()   # pulled lazily so errors come in source order
        self.buf: List[Token] = []
        self.last: Optional[Token] = None   # the token consumed last
        self.depth = 0

    # -- token helpers
    def peek(self, k: int = 0) -> Token:
        while len(self.buf) <= k:
            self.buf.append(next(self.stream))
        return self.buf[k]

    def next(self) -> Token:
        tok = self.peek()
        self.buf.pop(0)
        self.last = tok
        return tok

    def at(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "OP" and tok.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.next()
            return True
        return False

    def loc(self, tok: Token) -> Loc:
        return self.lexer.loc(tok.line, tok.col)

    def error(self, message: str, tok: Token):
        raise SymnetError(message, self.loc(tok))

    def expect(self, text: str, context: str) -> Token:
        if not self.at(text):
            self.error(f"expected '{text}' {context}, found {_describe(self.peek())}", self.peek())
        return self.next()

    def expect_name(self, what: str) -> Token:
        tok = self.peek()
        if tok.kind != "NAME":
            self.error(f"expected {what}, found {_describe(tok)}", tok)
        return self.next()

    def expect_close(self, opener: Token):
        closer = CLOSER_OF[opener.text]
        if not self.at(closer):
            tok = self.peek()
            self.error(f"expected '{closer}' to close '{opener.text}' opened at "
                       f"{opener.line}:{opener.col}, found {_describe(tok)}", tok)
        self.next()

    def bracketed(self, opener: Token, item, allow_empty: bool = True) -> tuple:
        """Comma-separated items up to the closer of `opener` (already consumed)."""
        closer, items = CLOSER_OF[opener.text], []
        while not (self.at(closer) and (items or allow_empty)):
            items.append(item())
            if not self.accept(","):
                break
        self.expect_close(opener)
        return tuple(items)

    @contextmanager
    def nested(self, tok: Token):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                self.error("expression nested too deeply", tok)
            yield
        finally:
            self.depth -= 1

    # -- statements
    def program(self) -> ast.Program:
        statements = []
        while True:
            while self.peek().kind == "NL":
                self.next()
            if self.peek().kind == "EOF":
                return ast.Program(self.filename, tuple(statements))
            stmt = self.statement()
            if isinstance(stmt, ast.ModelStmt) and statements:
                raise SymnetError("'model' must be the first statement", stmt.loc)
            self.end_statement(stmt)
            _check_heights(stmt)
            statements.append(stmt)

    def statement(self):
        tok = self.peek()
        if tok.kind == "NAME" and tok.text in KEYWORDS:
            if self.at("=", 1):
                hint = "choose another name"
                if tok.text == "loss":
                    expr = self._rest_of_line(self.peek(1))
                    hint = f"write `loss {expr}`, or `loss J = {expr}` to name it"
                self.error(f"cannot assign to keyword '{tok.text}'; {hint}", tok)
            self.next()
            return getattr(self, "stmt_" + tok.text)(tok)
        if tok.kind == "NAME" and self.at("=", 1):
            self.next()
            self.next()                 # '='
            return ast.AssignStmt(tok.text, self.expr(), self.loc(tok))
        self.error(f"unknown statement {_describe(tok)}; expected model, input, param, const, "
                   "output, loss, fn, op, train or NAME = EXPR" + _keyword_hint(tok), tok)

    def _rest_of_line(self, tok: Token) -> str:
        """The source after `tok` on its line, if it is a whole expression; else EXPR."""
        rest = self.lexer.lines[tok.line - 1][tok.col:].split("#")[0].strip()
        whole = all(rest.count(a) == rest.count(b) for a, b in CLOSER_OF.items())
        return _clip(rest) if rest and whole else "EXPR"

    def end_statement(self, stmt):
        tok = self.peek()
        if tok.kind == "NL":
            self.next()
        elif tok.kind != "EOF":
            bare = isinstance(stmt, (ast.ModelStmt, ast.InputStmt, ast.TrainStmt)) or \
                (isinstance(stmt, ast.OutputStmt) and stmt.expr is None)
            after = "statement" if bare else "expression"
            self.error(f"unexpected {_describe(tok)} after {after}", tok)

    def stmt_model(self, kw: Token):
        return ast.ModelStmt(self.expect_name("a model name after 'model'").text, self.loc(kw))

    def stmt_input(self, kw: Token):
        name = self.expect_name("an input name after 'input'").text
        dims = self.dims("after the input name")
        dtype = "f32"
        if self.accept(":"):
            tok = self.expect_name("an element type (f32 or i32)")
            if tok.text not in DTYPES:
                self.error(f"unknown element type '{tok.text}' (expected f32 or i32)", tok)
            dtype = tok.text
        return ast.InputStmt(name, dims, dtype, self.loc(kw))

    def stmt_param(self, kw: Token):
        name = self.expect_name("a parameter name after 'param'").text
        dims = self.dims("after the parameter name") if self.at("[") else None
        value = init = None
        if self.accept("="):
            value = self.literal()
        elif self.accept("~"):
            init = self.init()
        else:
            tok = self.peek()
            self.error(f"expected '=' or '~' after the parameter, found {_describe(tok)}", tok)
        return ast.ParamStmt(name, dims, value, init, self.loc(kw))

    def stmt_const(self, kw: Token):
        name = self.expect_name("a constant name after 'const'").text
        dims = self.dims("after the constant name") if self.at("[") else None
        self.expect("=", "after the constant")
        return ast.ConstStmt(name, dims, self.literal(), self.loc(kw))

    def stmt_output(self, kw: Token):
        name = self.expect_name("an output name after 'output'").text
        expr = self.expr() if self.accept("=") else None
        return ast.OutputStmt(name, expr, self.loc(kw))

    def stmt_loss(self, kw: Token):
        name = None
        if self.peek().kind == "NAME" and self.at("=", 1):
            name = self.next().text
            self.next()
        return ast.LossStmt(name, self.expr(), self.loc(kw))

    def stmt_fn(self, kw: Token):
        name = self.expect_name("a function name after 'fn'").text
        params = self.names("(", "after the function name", "a parameter name")
        self.expect("=", "after the function's parameters")
        return ast.FnStmt(name, params, self.expr(), self.loc(kw))

    def stmt_op(self, kw: Token):
        name = self.expect_name("an op name after 'op'").text
        operands = self.names("(", "after the op name", "an operand name")
        indices = self.names("[", "after the op's operands", "an index name", allow_empty=False)
        self.expect("=", "after the op's indices")
        return ast.OpStmt(name, operands, indices, self.expr(), self.loc(kw))

    def stmt_train(self, kw: Token):
        opt = self.expect_name("an optimizer name after 'train'")
        kwargs = ()
        if self.at("("):
            call = self.call(opt)
            if isinstance(call, ast.Reduce) or call.args:
                where = call.loc if isinstance(call, ast.Reduce) else call.args[0].loc
                raise SymnetError("train takes only key=value arguments, "
                                  "e.g. train sgd(lr=0.1, epochs=5)", where)
            kwargs = call.kwargs
        return ast.TrainStmt(opt.text, kwargs, self.loc(kw))

    # -- declaration parts
    def dims(self, context: str) -> tuple:
        opener = self.expect("[", context)
        return self.bracketed(opener, self.dim, allow_empty=False)

    def dim(self) -> ast.Dim:
        tok = self.peek()
        if tok.kind == "NAME":
            return ast.Dim(self.next().text, self.loc(tok))
        if tok.kind == "NUM" and all(c in DIGITS for c in tok.text):
            if len(tok.text) > MAX_DIM_DIGITS:
                self.error(f"dimension too large '{_clip(tok.text)}'", tok)
            return ast.Dim(int(self.next().text), self.loc(tok))
        self.error(f"expected a dimension (integer or name), found {_describe(tok)}", tok)

    def names(self, open_text: str, context: str, what: str, allow_empty=True) -> tuple:
        opener = self.expect(open_text, context)
        return self.bracketed(opener, lambda: self.expect_name(what).text, allow_empty)

    def literal(self):
        """A number, a negated number, or a nested [...] list of those."""
        tok = self.peek()
        with self.nested(tok):
            if self.accept("["):
                return ast.ListLit(self.bracketed(tok, self.literal), self.loc(tok))
            if self.accept("-"):
                return ast.Neg(self.number(), self.loc(tok))
            return self.number()

    def number(self) -> ast.Num:
        tok = self.peek()
        if tok.kind != "NUM":
            self.error(f"expected a number or a [...] list of numbers, found {_describe(tok)}", tok)
        return self.num(self.next())

    def init(self):
        tok = self.expect_name("an initializer like glorot or normal(0, 0.1)")
        if not self.at("("):
            return ast.Name(tok.text, self.loc(tok))
        call = self.call(tok)
        if isinstance(call, ast.Reduce):
            raise SymnetError("expected an initializer like glorot or normal(0, 0.1)", call.loc)
        return call

    # -- expressions
    def expr(self, min_prec: int = 1):
        """Precedence climbing over the binary operators below `^`."""
        left = self.unary()
        while True:
            tok = self.peek()
            prec = BINARY_PREC.get(tok.text, 0) if tok.kind == "OP" else 0
            if prec < min_prec:
                return left
            self.next()
            after = self.peek()
            if tok.text == "*" and after.text == "*" and (after.line, after.col) == (tok.line, tok.col + 1):
                self.error("`**` is Python's power; write it `a ^ b`", tok)
            left = ast.BinOp(tok.text, left, self.expr(prec + 1), self.loc(tok))

    def unary(self):
        tok = self.peek()
        with self.nested(tok):
            if self.accept("-"):
                return ast.Neg(self.unary(), self.loc(tok))
            base = self.primary()
            if not self.at("^"):
                return base
            op = self.next()
            # the exponent is a unary: right-associative, and x^-1 is allowed
            return ast.BinOp("^", base, self.unary(), self.loc(op))

    def primary(self):
        tok = self.next()
        loc = self.loc(tok)
        if tok.kind == "NUM":
            return self.num(tok)
        if tok.kind == "STR":
            return ast.Str(tok.text[1:-1], loc)
        if tok.kind == "NAME":
            if self.at("("):
                return self.call(tok)
            if self.at("["):
                indices = self.bracketed(self.next(), self.expr, allow_empty=False)
                return ast.Index(tok.text, indices, loc)
            return ast.Name(tok.text, loc)
        if tok.kind == "OP" and tok.text == "(":
            inner = self.expr()
            self.expect_close(tok)
            return inner
        if tok.kind == "OP" and tok.text == "[":
            return ast.ListLit(self.bracketed(tok, self.expr), loc)
        self.error(f"expected an expression, found {_describe(tok)}", tok)

    def num(self, tok: Token) -> ast.Num:
        value = float(tok.text)
        if not math.isfinite(value):
            self.error(f"number too large '{_clip(tok.text)}'", tok)
        is_int = all(c in DIGITS for c in tok.text)
        return ast.Num(value, is_int, self.loc(tok))

    def call(self, name: Token):
        opener = self.next()
        if self.peek().kind == "NAME" and self.at(":", 1):
            return self.reduce(name, opener)
        args, kwargs = [], []
        while not self.at(")"):
            tok = self.peek()
            if tok.kind == "NAME" and self.at("=", 1):
                kwargs.append(self.keyword(kwargs))
            elif kwargs:
                self.error("positional argument after keyword argument", tok)
            else:
                args.append(self.expr())
            if not self.accept(","):
                break
        self.expect_close(opener)
        return ast.Call(name.text, tuple(args), tuple(kwargs), self.loc(name))

    def keyword(self, seen) -> ast.Keyword:
        key = self.next()
        self.next()                     # '='
        if any(k.name == key.text for k in seen):
            self.error(f"duplicate keyword argument '{key.text}'", key)
        return ast.Keyword(key.text, self.expr(), self.loc(key))

    def reduce(self, name: Token, opener: Token) -> ast.Reduce:
        if name.text not in REDUCTIONS:
            self.error(f"'{name.text}(k: ...)' is not a reduction; "
                       "only sum(k: ...) and max(k: ...) reduce over an index", self.peek())
        index = self.next().text
        self.next()                     # ':'
        body = self.expr()
        self.expect_close(opener)
        return ast.Reduce(name.text, index, body, self.loc(name))


# ---- tree height ---------------------------------------------------------------------
def _children(node) -> tuple:
    if isinstance(node, ast.BinOp):
        return (node.left, node.right)
    if isinstance(node, ast.Neg):
        return (node.operand,)
    if isinstance(node, ast.Call):
        return node.args + tuple(k.value for k in node.kwargs)
    if isinstance(node, ast.Index):
        return node.indices
    if isinstance(node, ast.ListLit):
        return node.items
    if isinstance(node, ast.Reduce):
        return (node.body,)
    return ()


def _check_heights(stmt):
    """Reject expression trees more than MAX_DEPTH operators tall.

    The nesting limit alone does not bound the tree: `a + a + ... + a` is flat to the
    parser but left-deep as a tree. With this bound every later stage may recurse over
    expressions freely. Iterative, so that the check itself cannot overflow.
    """
    roots = [getattr(stmt, f, None) for f in ("expr", "body", "value", "init")]
    if isinstance(stmt, ast.TrainStmt):
        roots += [k.value for k in stmt.kwargs]
    height = {}
    stack = [(root, False) for root in roots if root is not None]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children and not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children)
            continue
        height[id(node)] = 1 + max(height[id(c)] for c in children) if children else 0
        if height[id(node)] > MAX_DEPTH:
            raise SymnetError("expression too long or nested too deeply; "
                              "split it into several statements", node.loc)


def parse_program(text: str, filename: str = "<string>") -> ast.Program:
    """Parse the text of a .nn file; raises SymnetError on any syntax error."""
    parser = _Parser(text, filename)
    try:
        return parser.program()
    except RecursionError:
        # backstop for callers already deep in the stack; MAX_DEPTH normally fires first.
        # The limit may strike while the lexer is pulling a token (Python 3.12 counts
        # that generator's frames too), with none waiting: then the last one read.
        token = parser.buf[0] if parser.buf else parser.last
        where = parser.lexer.loc(token.line, token.col) if token else None
        raise SymnetError("expression nested too deeply", where) from None
