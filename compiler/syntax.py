"""The syntax tree of a .nn file: frozen dataclasses, each with its source location."""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from .errors import Loc


# ---- expressions -------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: float
    is_int: bool
    loc: Loc


@dataclass(frozen=True)
class Name:
    id: str
    loc: Loc


@dataclass(frozen=True)
class Str:
    value: str
    loc: Loc


@dataclass(frozen=True)
class BinOp:
    op: str                 # one of + - * / ^ @  and comparisons are not in the language
    left: "Expr"
    right: "Expr"
    loc: Loc                # location of the operator


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    loc: Loc


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    loc: Loc


@dataclass(frozen=True)
class Call:
    func: str
    args: Tuple["Expr", ...]
    kwargs: Tuple[Keyword, ...]
    loc: Loc                # location of the function name


@dataclass(frozen=True)
class Index:
    """`A[i, k]`: an indexed access, only meaningful inside an `op` body."""
    base: str
    indices: Tuple["Expr", ...]
    loc: Loc


@dataclass(frozen=True)
class ListLit:
    """`[1, 2, [3, 4]]`: a literal list (parameter values, reshape dims)."""
    items: Tuple["Expr", ...]
    loc: Loc


@dataclass(frozen=True)
class Reduce:
    """`sum(k: BODY)` or `max(k: BODY)` inside an `op` body."""
    kind: str               # "sum" | "max"
    index: str
    body: "Expr"
    loc: Loc


Expr = Union[Num, Name, Str, BinOp, Neg, Call, Index, ListLit, Reduce]


# ---- statements --------------------------------------------------------------------
@dataclass(frozen=True)
class Dim:
    """One dimension in a declaration: an integer or a symbolic name like N."""
    value: Union[int, str]
    loc: Loc


@dataclass(frozen=True)
class ModelStmt:
    name: str
    loc: Loc


@dataclass(frozen=True)
class InputStmt:
    name: str
    dims: Tuple[Dim, ...]
    dtype: str              # "f32" | "i32"
    loc: Loc


@dataclass(frozen=True)
class ParamStmt:
    """`param W[dims] = LITERAL`, `param W[dims] ~ INIT`, `param a = 0.4` (dims None)."""
    name: str
    dims: Optional[Tuple[Dim, ...]]
    value: Optional[Expr]   # literal (Num, ListLit, Neg of Num) when given with `=`
    init: Optional[Expr]    # Name (zeros, glorot, ...) or Call (normal(0, 1)) with `~`
    loc: Loc


@dataclass(frozen=True)
class ConstStmt:
    name: str
    dims: Optional[Tuple[Dim, ...]]
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class AssignStmt:
    name: str
    expr: Expr
    loc: Loc


@dataclass(frozen=True)
class OutputStmt:
    name: str
    expr: Optional[Expr]    # None for `output NAME` of an existing tensor
    loc: Loc


@dataclass(frozen=True)
class LossStmt:
    name: Optional[str]
    expr: Expr
    loc: Loc


@dataclass(frozen=True)
class FnStmt:
    name: str
    params: Tuple[str, ...]
    body: Expr
    loc: Loc


@dataclass(frozen=True)
class OpStmt:
    name: str
    operands: Tuple[str, ...]
    indices: Tuple[str, ...]
    body: Expr
    loc: Loc


@dataclass(frozen=True)
class TrainStmt:
    optimizer: str
    kwargs: Tuple[Keyword, ...]
    loc: Loc


Stmt = Union[ModelStmt, InputStmt, ParamStmt, ConstStmt, AssignStmt, OutputStmt,
             LossStmt, FnStmt, OpStmt, TrainStmt]


@dataclass(frozen=True)
class Program:
    filename: str
    statements: Tuple[Stmt, ...]
