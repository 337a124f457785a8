"""The index-notation IR: every op, forward or backward, is a list of Comprehensions.

A Comprehension is one loop nest in Einstein-like notation:

    out[i0, i1, ...] (= | +=)  REDUCE_{r0 < e0, r1 < e1, ...}  [guards] body

`body` is a sympy expression over *access symbols* (each stands for one read
`tensor[index expressions]`), the index variables, and the batch size N. Reads outside
a tensor's bounds give 0 (zero padding). `guards` are integer conditions on the index
variables; a term whose guards fail contributes nothing. A `max` reduction also records
the linear position of the first maximum in an `argmax` tensor, which is how gradients
are routed through max pooling and softmax's stabilising max.

This module also holds the IR's checker (`verify`) and its NumPy interpreter
(`interpret`), the float64 oracle every backend is tested against.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import sympy

from .functions import NUMPY_MODULE

N = sympy.Symbol("N", integer=True, positive=True)


class fdiv(sympy.Function):
    """Integer floor division a // b (b a positive integer) inside index expressions."""
    nargs = 2

    @classmethod
    def eval(cls, a, b):
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) // int(b))
        if b == 1:
            return a
        return None


def index_symbols(names):
    return tuple(sympy.Symbol(n, integer=True) for n in names)


def access_symbol(label):
    """A fresh real symbol standing for one tensor read inside a body."""
    return sympy.Dummy(label, real=True)


@dataclass
class TensorInfo:
    """A buffer of the program: its shape (ints and sympy expressions in N) and role."""
    name: str
    shape: tuple
    dtype: str = "f32"          # storage: "f32" (the program's float type) or "i32"
    kind: str = "value"         # input | param | const | value | grad | state | hyper | aux

    @property
    def rank(self):
        return len(self.shape)


@dataclass(frozen=True)
class Access:
    tensor: str
    index: tuple


@dataclass
class Comprehension:
    out: str
    index: tuple                              # output index variables, one per out dim
    body: sympy.Expr
    accesses: dict                            # access symbol -> Access
    reduce: Optional[str] = None              # None | "sum" | "max"
    rindex: tuple = ()                        # reduction variables
    rextent: tuple = ()                       # their extents (int or sympy expr in N)
    guards: tuple = ()                        # sympy relationals over index variables
    accumulate: bool = False                  # out += ... instead of out = ...
    argmax: Optional[str] = None              # i32 tensor receiving the first max's position
    group: Optional[str] = None               # graph node this loop nest belongs to
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def reads(self):
        return [a.tensor for a in self.accesses.values()]

    @property
    def buffers(self):
        """Every tensor the loop nest touches, in order, without repeats: out, reads, argmax."""
        return list(dict.fromkeys([self.out] + self.reads + ([self.argmax] if self.argmax else [])))

    @property
    def window_position(self):
        """The row-major position of a reduction point in its window, as argmax stores it."""
        out = sympy.Integer(0)
        for v, e in zip(self.rindex, self.rextent):
            out = out * sympy.sympify(e) + v
        return out


class IRError(Exception):
    """An internal inconsistency of the IR (a compiler bug, not a user error)."""


def dim_value(dim, sizes):
    """Evaluate one dimension (int or sympy expression) with the symbolic sizes bound."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    dim = sympy.sympify(dim)
    return int(dim.subs({s: sizes.get(s, sizes.get(str(s))) for s in dim.free_symbols}))


def shape_value(shape, sizes):
    return tuple(dim_value(d, sizes) for d in shape)


# ---- checker -----------------------------------------------------------------------
def verify(comps, tensors):
    """Check that every comprehension is well formed against the tensor table."""
    sizes = set()
    for t in tensors.values():
        for d in t.shape:
            sizes |= sympy.sympify(d).free_symbols
    for c in comps:
        where = f"comprehension for {c.out!r}"
        if c.out not in tensors:
            raise IRError(f"{where}: unknown output tensor")
        if len(c.index) != tensors[c.out].rank:
            raise IRError(f"{where}: {len(c.index)} indices for rank {tensors[c.out].rank}")
        if c.reduce not in (None, "sum", "max"):
            raise IRError(f"{where}: unknown reduction {c.reduce!r}")
        if len(c.rindex) != len(c.rextent) or (c.reduce is None) != (not c.rindex):
            raise IRError(f"{where}: reduction variables and kind disagree")
        if c.argmax and c.reduce != "max":
            raise IRError(f"{where}: argmax without a max reduction")
        variables = set(c.index) | set(c.rindex) | sizes
        allowed = variables | set(c.accesses)
        stray = c.body.free_symbols - allowed
        if stray:
            raise IRError(f"{where}: body uses unbound symbols {sorted(map(str, stray))}")
        for sym, acc in c.accesses.items():
            if acc.tensor not in tensors:
                raise IRError(f"{where}: reads unknown tensor {acc.tensor!r}")
            if len(acc.index) != tensors[acc.tensor].rank:
                raise IRError(f"{where}: {acc.tensor} read with {len(acc.index)} indices, "
                              f"rank {tensors[acc.tensor].rank}")
            for e in acc.index:
                if not sympy.sympify(e).free_symbols <= variables:
                    raise IRError(f"{where}: index {e} of {acc.tensor} uses unbound symbols")


# ---- interpreter -------------------------------------------------------------------
def eval_index(expr, env):
    """Evaluate an integer index expression on NumPy integer grids."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        return env[expr]
    if expr.is_Add:
        return sum(eval_index(a, env) for a in expr.args)
    if expr.is_Mul:
        out = 1
        for a in expr.args:
            out = out * eval_index(a, env)
        return out
    if isinstance(expr, fdiv):
        return np.floor_divide(eval_index(expr.args[0], env), eval_index(expr.args[1], env))
    if isinstance(expr, sympy.Mod):
        return np.mod(eval_index(expr.args[0], env), eval_index(expr.args[1], env))
    raise IRError(f"unsupported index expression {expr}")


def eval_condition(cond, env):
    if cond is sympy.true:
        return True
    if isinstance(cond, sympy.And):
        out = True
        for a in cond.args:
            out = np.logical_and(out, eval_condition(a, env))
        return out
    lhs, rhs = eval_index(cond.lhs, env), eval_index(cond.rhs, env)
    ops = {sympy.Eq: np.equal, sympy.Ne: np.not_equal, sympy.Lt: np.less,
           sympy.Le: np.less_equal, sympy.Gt: np.greater, sympy.Ge: np.greater_equal}
    return ops[type(cond)](lhs, rhs)


def size_symbols_of(c):
    """Symbolic sizes (N, ...) a body uses as numbers, e.g. the 1/N of a mean."""
    bound = set(c.accesses) | set(c.index) | set(c.rindex)
    return sorted(c.body.free_symbols - bound, key=str)


def _body_function(c):
    if "lambda" not in c._cache:
        syms = list(c.accesses) + list(c.index) + list(c.rindex) + size_symbols_of(c)
        c._cache["lambda"] = sympy.lambdify(syms, c.body, modules=[NUMPY_MODULE, "numpy"])
    return c._cache["lambda"]


def _gather(array, index_values):
    """Read array[index] on grids; out-of-bounds reads give 0."""
    if array.ndim == 0:
        return array[()]
    mask = True
    clipped = []
    for value, size in zip(index_values, array.shape):
        value = np.asarray(value)
        mask = np.logical_and(mask, (value >= 0) & (value < size))
        clipped.append(np.clip(value, 0, max(size - 1, 0)))
    if array.size == 0:
        return np.zeros(np.broadcast(*clipped).shape)
    values = array[tuple(clipped)]
    return values if mask is True or np.all(mask) else np.where(mask, values, 0)


def interpret(comps, env, sizes, float_dtype=np.float64, tensors=None):
    """Run comprehensions in order on NumPy arrays in `env` (name -> array), in place.

    Missing outputs are allocated (float_dtype, or int32 for argmax tensors)."""
    for c in comps:
        _interpret_one(c, env, sizes, float_dtype, tensors)
    return env


def _interpret_one(c, env, sizes, float_dtype, tensors):
    out_shape = tuple(dim_value(d, sizes) for d in (tensors[c.out].shape if tensors else ()))
    if tensors is None:
        out_shape = env[c.out].shape
    if c.out not in env or env[c.out].shape != out_shape:
        env[c.out] = np.zeros(out_shape, dtype=float_dtype)
    rext = tuple(dim_value(e, sizes) for e in c.rextent)
    if c.argmax and (c.argmax not in env or env[c.argmax].shape != out_shape):
        env[c.argmax] = np.zeros(out_shape, dtype=np.int32)
    sizes = {sympy.Symbol(str(k), integer=True, positive=True) if isinstance(k, str) else k: int(v)
             for k, v in sizes.items()}
    # Chunk over the first output dimension so the grid stays small.
    cells = int(np.prod(out_shape + rext, dtype=np.int64)) if out_shape + rext else 1
    rows = out_shape[0] if out_shape else 1
    step = max(1, rows * (1 << 22) // max(cells, 1)) if out_shape else 1
    for start in range(0, max(rows, 1), step):
        stop = min(rows, start + step) if out_shape else 1
        _interpret_rows(c, env, out_shape, rext, start, stop, sizes)


def _interpret_rows(c, env, out_shape, rext, start, stop, sizes):
    variables = list(c.index) + list(c.rindex)
    extents = list(out_shape) + list(rext)
    if out_shape:
        extents[0] = stop - start
    rank = len(variables)
    grid = dict(sizes)
    for axis, (v, e) in enumerate(zip(variables, extents)):
        shape = [1] * rank
        shape[axis] = e
        offset = start if axis == 0 and out_shape else 0
        grid[v] = (np.arange(e) + offset).reshape(shape)
    reads = [_gather(env[a.tensor], [eval_index(i, grid) for i in a.index])
             for a in c.accesses.values()]
    values = _body_function(c)(*reads, *[grid[v] for v in variables],
                               *[grid[z] for z in size_symbols_of(c)])
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), tuple(extents))
    mask = True
    for g in c.guards:
        mask = np.logical_and(mask, eval_condition(g, grid))
    nout = len(c.index)
    rows = slice(start, stop) if out_shape else ()
    if c.reduce == "max":
        values = np.where(mask, values, -np.inf) if mask is not True else values
        flat = values.reshape(tuple(extents[:nout]) + (-1,))
        result = flat.max(axis=-1)
        if c.argmax:
            env[c.argmax][rows] = flat.argmax(axis=-1)
    else:
        if mask is not True:
            values = np.where(mask, values, 0.0)
        result = values.sum(axis=tuple(range(nout, rank))) if c.reduce == "sum" else values
    target = env[c.out]
    if c.accumulate:
        target[rows] += result
    else:
        target[rows] = result


# ---- printing ----------------------------------------------------------------------
def as_sympy(c, names=None):
    """The comprehension as a sympy equation `out[i] = rhs`, accesses as Indexed reads."""
    names = names or {}

    def indexed(tensor, index):
        label = names.get(tensor, tensor)
        if not index:
            return sympy.Symbol(label)
        return sympy.IndexedBase(label)[tuple(index)]

    rhs = c.body.xreplace({s: indexed(a.tensor, a.index) for s, a in c.accesses.items()})
    if c.guards:
        rhs = sympy.Piecewise((rhs, sympy.And(*c.guards)), (0, True))
    limits = [(r, 0, sympy.sympify(e) - 1) for r, e in zip(c.rindex, c.rextent)]
    if c.reduce == "sum":
        rhs = sympy.Sum(rhs, *limits)
    elif c.reduce == "max":
        rhs = sympy.Function("Max_over_" + "_".join(map(str, c.rindex)))(rhs)
    lhs = indexed(c.out, c.index)
    return sympy.Eq(lhs, lhs + rhs, evaluate=False) if c.accumulate else sympy.Eq(lhs, rhs, evaluate=False)


def format_comp(c):
    """One line of loop-nest text, e.g. `h[n, j] = sum_{i<784} x[n, i]*W[i, j]`."""
    body = c.body.xreplace({s: sympy.Symbol(f"{a.tensor}[{', '.join(map(str, a.index))}]")
                            for s, a in c.accesses.items()})
    red = ""
    if c.reduce:
        red = f"{c.reduce}_{{{', '.join(f'{r}<{e}' for r, e in zip(c.rindex, c.rextent))}}} "
    guard = f"[{' & '.join(map(str, c.guards))}] " if c.guards else ""
    lhs = f"{c.out}[{', '.join(map(str, c.index))}]"
    return f"{lhs} {'+=' if c.accumulate else '='} {red}{guard}{body}"
