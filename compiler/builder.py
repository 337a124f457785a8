"""The Python builder: the same models as .nn files, without text.

    from compiler.builder import Builder, F

    b = Builder("mlp")
    x = b.input("x", ["N", 784])
    y = b.input("y", ["N"], dtype="i32")
    h1 = b.let("h1", F.relu(F.dense(x, 128)))
    h2 = b.let("h2", F.relu(F.dense(h1, 64)))
    logits = b.output("logits", F.dense(h2, 10))
    b.loss(F.cross_entropy(logits, y))
    b.train("sgd", lr=0.1, batch=64, epochs=3)
    model = b.build()

It records the statements as the parser's syntax tree (compiler/syntax.py), so a built
model goes through exactly the same checks, graph and gradients as a parsed one; errors
point at the Python line that made the statement.
"""
import inspect

from . import syntax as S
from .errors import Loc
from .graph import build_model


def _caller_loc():
    """The first frame outside this module: where the user's statement is."""
    for frame in inspect.stack()[2:]:
        if frame.filename != __file__:
            line = (frame.code_context or [""])[0].rstrip("\n")
            return Loc(frame.filename, frame.lineno, 1, line)
    return Loc("<builder>", 1, 1)


def lift(value, loc):
    """A Python value as an expression node."""
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, bool):
        return S.Name("true" if value else "false", loc)
    if isinstance(value, int):
        return S.Num(float(value), True, loc)
    if isinstance(value, float):
        return S.Num(value, False, loc)
    if isinstance(value, str):
        return S.Str(value, loc)
    if isinstance(value, (list, tuple)):
        return S.ListLit(tuple(lift(v, loc) for v in value), loc)
    raise TypeError(f"cannot use {value!r} in a model expression")


class Expr:
    """An expression: tensors, arithmetic (+ - * / ** @, unary -), calls, A[i, j]."""

    def __init__(self, node):
        self.node = node

    def _binary(self, op, other, swap=False):
        loc = _caller_loc()
        left, right = self.node, lift(other, loc)
        return Expr(S.BinOp(op, right, left, loc) if swap else S.BinOp(op, left, right, loc))

    __add__ = lambda self, o: self._binary("+", o)
    __radd__ = lambda self, o: self._binary("+", o, True)
    __sub__ = lambda self, o: self._binary("-", o)
    __rsub__ = lambda self, o: self._binary("-", o, True)
    __mul__ = lambda self, o: self._binary("*", o)
    __rmul__ = lambda self, o: self._binary("*", o, True)
    __truediv__ = lambda self, o: self._binary("/", o)
    __rtruediv__ = lambda self, o: self._binary("/", o, True)
    __pow__ = lambda self, o: self._binary("^", o)
    __rpow__ = lambda self, o: self._binary("^", o, True)
    __matmul__ = lambda self, o: self._binary("@", o)
    __rmatmul__ = lambda self, o: self._binary("@", o, True)

    def __neg__(self):
        return Expr(S.Neg(self.node, _caller_loc()))

    def __getitem__(self, index):
        """`A[i, j]` inside an op body (A an operand, i and j index names)."""
        loc = _caller_loc()
        index = index if isinstance(index, tuple) else (index,)
        if not isinstance(self.node, S.Name):
            raise TypeError("only an op's operands can be indexed")
        # A string names an index variable here (A[n, "i"] sums over i with sum_over).
        nodes = tuple(S.Name(i, loc) if isinstance(i, str) else lift(i, loc) for i in index)
        return Expr(S.Index(self.node.id, nodes, loc))


class _Functions:
    """`F.relu(x)`, `F.dense(x, 128)`, `F.conv2d(x, filters=6, size=5, pad="same")`:
    any builtin or user `fn`/`op` by name; `F.sum_over("k", body)` and `F.max_over`
    are the reductions of op bodies."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            loc = _caller_loc()
            return Expr(S.Call(name, tuple(lift(a, loc) for a in args),
                               tuple(S.Keyword(k, lift(v, loc), loc) for k, v in kwargs.items()),
                               loc))
        return call

    @staticmethod
    def sum_over(index, body):
        return Expr(S.Reduce("sum", index, lift(body, _caller_loc()), _caller_loc()))

    @staticmethod
    def max_over(index, body):
        return Expr(S.Reduce("max", index, lift(body, _caller_loc()), _caller_loc()))


F = _Functions()


def index(name):
    """An index variable of an op body."""
    return Expr(S.Name(name, _caller_loc()))


class Builder:
    """Collects statements in order; `build()` checks them into a Model."""

    def __init__(self, name=None):
        self.statements = []
        self.filename = _caller_loc().filename
        if name:
            self.statements.append(S.ModelStmt(name, _caller_loc()))

    def _add(self, stmt, name=None):
        self.statements.append(stmt)
        return Expr(S.Name(name, stmt.loc)) if name else None

    @staticmethod
    def _dims(dims, loc):
        return tuple(S.Dim(d, loc) for d in dims)

    def input(self, name, dims, dtype="f32"):
        loc = _caller_loc()
        return self._add(S.InputStmt(name, self._dims(dims, loc), dtype, loc), name)

    def param(self, name, dims=None, value=None, init=None):
        """A value (number or nested lists) or an initializer: "glorot", "he", "zeros",
        "ones", ("normal", mean, std), ("uniform", lo, hi)."""
        loc = _caller_loc()
        dims = None if dims is None else self._dims(dims, loc)
        init_node = None
        if init is not None:
            init_node = (S.Name(init, loc) if isinstance(init, str) else
                         S.Call(init[0], tuple(lift(a, loc) for a in init[1:]), (), loc))
        value_node = None if value is None else lift(value, loc)
        if value_node is None and init_node is None:
            raise ValueError(f"param {name} needs a value or an initializer")
        return self._add(S.ParamStmt(name, dims, value_node, init_node, loc), name)

    def const(self, name, dims, value):
        loc = _caller_loc()
        return self._add(S.ConstStmt(name, self._dims(dims, loc), lift(value, loc), loc), name)

    def let(self, name, expr):
        """`name = expr`: an intermediate tensor."""
        loc = _caller_loc()
        return self._add(S.AssignStmt(name, lift(expr, loc), loc), name)

    def output(self, name, expr=None):
        loc = _caller_loc()
        return self._add(S.OutputStmt(name, None if expr is None else lift(expr, loc), loc), name)

    def loss(self, expr, name=None):
        loc = _caller_loc()
        self._add(S.LossStmt(name, lift(expr, loc), loc))

    def fn(self, name, params, body):
        """A user elementwise function: body(*parameter expressions) -> expression."""
        loc = _caller_loc()
        node = lift(body(*[Expr(S.Name(p, loc)) for p in params]), loc)
        self._add(S.FnStmt(name, tuple(params), node, loc))

    def op(self, name, operands, indices, body):
        """A user index-notation op: body(*operands, *indices) -> expression."""
        loc = _caller_loc()
        args = [Expr(S.Name(n, loc)) for n in list(operands) + list(indices)]
        self._add(S.OpStmt(name, tuple(operands), tuple(indices), lift(body(*args), loc), loc))

    def train(self, optimizer, **settings):
        loc = _caller_loc()
        self._add(S.TrainStmt(optimizer, tuple(S.Keyword(k, lift(v, loc), loc)
                                               for k, v in settings.items()), loc))

    def program(self):
        return S.Program(self.filename, tuple(self.statements))

    def build(self, seed=0):
        return build_model(self.program(), seed=seed)
