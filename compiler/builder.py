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
import re
import sys

import numpy as np

from . import syntax as S
from .errors import Loc, SymnetError
from .graph import build_model
from .parser import DTYPES, KEYWORDS

# A name as the parser reads one: ASCII, not starting with a digit; a dot continues it (h.W).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _caller_loc():
    """The first frame outside this module: where the user's statement is. Python 3.11
    also says where in the line the running call is, so the caret goes under it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return Loc("<builder>", 1, 1)
    info = inspect.getframeinfo(frame, context=1)
    line = (info.code_context or [""])[0].rstrip("\n")
    where = getattr(info, "positions", None)
    if where is not None and where.lineno == info.lineno and where.col_offset is not None:
        col = where.col_offset + 1
    else:
        col = len(line) - len(line.lstrip()) + 1
    return Loc(info.filename, info.lineno, col, line)


def _name(name, loc, what="name"):
    """`name` if the text could say it, else the error the user's call gets."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SymnetError(f"{name!r} is not a {what}: names are ASCII letters, digits and _, "
                          "not starting with a digit", loc)
    return name


def lift(value, loc):
    """A Python value as an expression node; NumPy scalars and arrays as Python's."""
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, bool):
        return S.Name("true" if value else "false", loc)
    if isinstance(value, int):
        return S.Num(float(value), True, loc)
    if isinstance(value, float):
        return S.Num(value, False, loc)
    if isinstance(value, str):
        return S.Str(value, loc)
    if isinstance(value, (list, tuple)):
        # In a list a string is a size, as in the text's reshape(h, [N, 4, 4]).
        return S.ListLit(tuple(S.Name(v, loc) if isinstance(v, str) else lift(v, loc)
                               for v in value), loc)
    raise TypeError(f"cannot use {value!r} in a model expression")


def _owners(value):
    """The Builders whose tensors `value` (an Expr, a list of them, a number) reads."""
    if isinstance(value, Expr):
        return {id(value.builder): value.builder} if value.builder is not None else {}
    if isinstance(value, (list, tuple)):
        return {k: v for item in value for k, v in _owners(item).items()}
    return {}


def _builder_of(values, loc):
    """The one Builder whose tensors `values` read (None: no tensor yet). Tensors of two
    Builders are refused here, where they meet: the graph would only find an unknown
    name, and point at its declaration in the other model."""
    owners = list(_owners(list(values)).values())
    if len(owners) > 1:
        raise SymnetError("this expression mixes tensors of two Builders ("
                          + " and ".join(o.describe() for o in owners)
                          + "); build each model from its own tensors", loc)
    return owners[0] if owners else None


class Expr:
    """An expression: tensors, arithmetic (+ - * / ** @, unary -, abs()), x.T, calls,
    A[i, j]."""

    __array_ufunc__ = None     # `array * x` is ours to refuse, not NumPy's to loop over

    def __init__(self, node, builder=None):
        self.node = node
        self.builder = builder          # whose tensors it reads, so a mix-up is found

    def _binary(self, op, other, swap=False):
        loc = _caller_loc()
        if isinstance(other, (list, tuple)) or isinstance(other, np.ndarray) and other.ndim:
            raise SymnetError("an array in arithmetic must be a named constant: "
                              "b.const(name, dims, values), then use the tensor it returns", loc)
        if isinstance(other, (bool, np.bool_)):     # lifted, it would be the name `true`
            raise SymnetError(f"{other!r} is not a number here; write 1 or 0", loc)
        builder = _builder_of([self, other], loc)
        left, right = self.node, lift(other, loc)
        return Expr(S.BinOp(op, right, left, loc) if swap else S.BinOp(op, left, right, loc),
                    builder)

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
        return Expr(S.Neg(self.node, _caller_loc()), self.builder)

    def _call(self, name):
        loc = _caller_loc()
        return Expr(S.Call(name, (self.node,), (), loc), self.builder)

    __abs__ = lambda self: self._call("abs")         # abs(x), the text's abs(x)

    @property
    def T(self):
        """x.T, the text's transpose(x): NumPy's spelling."""
        return self._call("transpose")

    def __getitem__(self, index):
        """`A[i, j]` inside an op body (A an operand, i and j index names)."""
        loc = _caller_loc()
        index = index if isinstance(index, tuple) else (index,)
        if not isinstance(self.node, S.Name):
            raise TypeError("only an op's operands can be indexed")
        # A string names an index variable here (A[n, "i"] sums over i with sum_over).
        nodes = tuple(S.Name(_name(i, loc), loc) if isinstance(i, str) else lift(i, loc)
                      for i in index)
        return Expr(S.Index(self.node.id, nodes, loc), self.builder)


class _Functions:
    """`F.relu(x)`, `F.dense(x, 128)`, `F.conv2d(x, filters=6, size=5, pad="same")`:
    any builtin or user `fn`/`op` by name; `F.sum_over("k", body)` and `F.max_over`
    are the reductions of op bodies."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            loc = _caller_loc()
            builder = _builder_of([*args, *kwargs.values()], loc)
            return Expr(S.Call(name, tuple(lift(a, loc) for a in args),
                               tuple(S.Keyword(k, lift(v, loc), loc) for k, v in kwargs.items()),
                               loc), builder)
        return call

    @staticmethod
    def sum_over(index, body):
        loc = _caller_loc()
        return Expr(S.Reduce("sum", _name(index, loc), lift(body, loc), loc),
                    _builder_of([body], loc))

    @staticmethod
    def max_over(index, body):
        loc = _caller_loc()
        return Expr(S.Reduce("max", _name(index, loc), lift(body, loc), loc),
                    _builder_of([body], loc))


F = _Functions()


def index(name):
    """An index variable of an op body."""
    loc = _caller_loc()
    return Expr(S.Name(_name(name, loc), loc))


class Builder:
    """Collects statements in order; `build()` checks them into a Model."""

    def __init__(self, name=None):
        self.statements = []
        self.name = name
        self.filename = _caller_loc().filename
        if name:
            loc = _caller_loc()
            self.statements.append(S.ModelStmt(_name(name, loc), loc))

    def describe(self):
        return f"Builder({self.name!r})" if self.name else "an unnamed Builder"

    def _add(self, stmt, name=None):
        self.statements.append(stmt)
        return Expr(S.Name(name, stmt.loc), self) if name else None

    def _lift(self, value, loc):
        """`value` as a node of this model: it may read this Builder's tensors only."""
        if isinstance(value, (bool, np.bool_)):     # `x == y` compares the Python objects
            raise SymnetError(f"{value!r} is not a model expression: comparisons of tensors "
                              "(x == y, x < y) are not part of the language; step(x - y) "
                              "is 1 where x > y", loc)
        owner = _builder_of([value], loc)
        if owner is not None and owner is not self:
            raise SymnetError(f"this expression reads tensors of {owner.describe()}, not of "
                              f"{self.describe()}; build each model from its own tensors", loc)
        return lift(value, loc)

    def size(self, name):
        """A symbolic size as a value: the text's `N` in `sum(e) / N`."""
        loc = _caller_loc()
        return Expr(S.Name(_name(name, loc, "size"), loc), self)

    def tensor(self, name):
        """A tensor defined before, by name: one a layer made, `b.tensor("h.W")` (the
        text's `h.W`, for weight decay), or any other."""
        loc = _caller_loc()
        return Expr(S.Name(_name(name, loc, "tensor name"), loc), self)

    @staticmethod
    def _dims(dims, loc):
        """What the text's [N, 784] allows: integers and names."""
        if not isinstance(dims, (list, tuple)):
            raise SymnetError(f"dims must be a list of dimensions, got {dims!r}", loc)
        checked = []
        for d in dims:
            if isinstance(d, str):
                d = _name(d, loc, "dimension")
            elif isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)):
                d = int(d)
            else:
                raise SymnetError(f"expected a dimension (integer or name), found {d!r}", loc)
            checked.append(S.Dim(d, loc))
        return tuple(checked)

    def input(self, name, dims, dtype="f32"):
        loc = _caller_loc()
        if dtype not in DTYPES:
            raise SymnetError(f"unknown element type {dtype!r} (expected f32 or i32)", loc)
        return self._add(S.InputStmt(_name(name, loc), self._dims(dims, loc), dtype, loc), name)

    def param(self, name, dims=None, value=None, init=None):
        """A value (number or nested lists) or an initializer: "glorot", "he", "zeros",
        "ones", ("normal", mean, std), ("uniform", lo, hi)."""
        loc = _caller_loc()
        _name(name, loc)
        dims = None if dims is None else self._dims(dims, loc)
        if value is not None and init is not None:
            raise SymnetError(f"param {name} takes a value or an initializer, not both", loc)
        init_node = None
        if init is not None:
            init_node = (S.Name(init, loc) if isinstance(init, str) else
                         S.Call(init[0], tuple(lift(a, loc) for a in init[1:]), (), loc))
        value_node = None if value is None else lift(value, loc)
        if value_node is None and init_node is None:
            raise SymnetError(f"param {name} needs a value or an initializer", loc)
        return self._add(S.ParamStmt(name, dims, value_node, init_node, loc), name)

    def const(self, name, dims, value):
        loc = _caller_loc()
        return self._add(S.ConstStmt(_name(name, loc), self._dims(dims, loc), self._lift(value, loc),
                                     loc), name)

    def let(self, name, expr):
        """`name = expr`: an intermediate tensor."""
        loc = _caller_loc()
        if name in KEYWORDS:        # the text would read a statement
            raise SymnetError(f"cannot assign to keyword '{name}'; choose another name", loc)
        return self._add(S.AssignStmt(_name(name, loc), self._lift(expr, loc), loc), name)

    def output(self, name, expr=None):
        loc = _caller_loc()
        node = None if expr is None else self._lift(expr, loc)
        return self._add(S.OutputStmt(_name(name, loc), node, loc), name)

    def loss(self, expr, name=None):
        loc = _caller_loc()
        self._add(S.LossStmt(name and _name(name, loc), self._lift(expr, loc), loc))

    def fn(self, name, params, body):
        """A user elementwise function: body(*parameter expressions) -> expression."""
        loc = _caller_loc()
        for checked in (name, *params):
            _name(checked, loc)
        node = self._lift(body(*[Expr(S.Name(p, loc)) for p in params]), loc)
        self._add(S.FnStmt(name, tuple(params), node, loc))

    def op(self, name, operands, indices, body):
        """A user index-notation op: body(*operands, *indices) -> expression."""
        loc = _caller_loc()
        for checked in (name, *operands, *indices):
            _name(checked, loc)
        args = [Expr(S.Name(n, loc)) for n in list(operands) + list(indices)]
        self._add(S.OpStmt(name, tuple(operands), tuple(indices), self._lift(body(*args), loc),
                           loc))

    def train(self, optimizer, **settings):
        """`b.train("sgd", lr=0.1, batch=64, epochs=3)`; `batch="N"` is the text's
        `batch=N`, the whole training set in one step."""
        loc = _caller_loc()
        # No setting takes a string: a string names a size, as in the text's batch=N.
        self._add(S.TrainStmt(optimizer, tuple(
            S.Keyword(k, S.Name(_name(v, loc), loc) if isinstance(v, str) else lift(v, loc), loc)
            for k, v in settings.items()), loc))

    def program(self):
        return S.Program(self.filename, tuple(self.statements))

    def build(self, seed=0):
        return build_model(self.program(), seed=seed)
