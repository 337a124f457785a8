"""The Model a build produces, and the Builder that ops (ops.py) build it through.

The Builder holds everything a build has made so far: tensors and the networkx graph,
the forward loop nests in order, parameters with their initial values, names and where
the source defined them. graph.py drives it statement by statement; `build_model`
returns its contents as a Model.
"""
import zlib
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import sympy

from . import ops
from .errors import SymnetError
from .index_ir import Comprehension, TensorInfo, index_symbols
from .ops import Elem, format_shape

@dataclass
class CustomVJP:
    """A registered gradient rule for the loop nests of one group (ops.custom_vjp)."""
    output: str
    rule: object
    inputs: list
    always: bool        # True: the generic derivation cannot do this one (e.g. reshape)


@dataclass
class Model:
    """A checked model: graph, tensors, forward loop nests, initial values."""
    name: str
    filename: str
    graph: nx.DiGraph
    tensors: dict                  # name -> TensorInfo, internal temporaries included
    forward: list                  # Comprehensions in execution order
    params: dict                   # name -> initial ndarray (float64)
    consts: dict                   # name -> ndarray
    inputs: dict                   # name -> TensorInfo, in declaration order
    outputs: list                  # output tensor names
    loss: str | None
    train: dict                    # the `train` statement: {"optimizer": ..., key: value}
    custom_vjps: dict = field(default_factory=dict)   # group output -> CustomVJP
    size_symbols: tuple = ()       # symbolic dims (N, ...) in first-use order
    locations: dict = field(default_factory=dict)     # tensor name -> Loc of its statement
    source: str = ""
    loc: object = None             # the `model` statement's Loc, None without one

    def summary(self):
        from .printing import summary_table
        return summary_table(self)

    def param_count(self):
        return int(sum(v.size for v in self.params.values()))


class Builder:
    """The context ops build through: names, tensors, parameters, loop nests."""

    def __init__(self, program, seed=0, source=""):
        self.program = program
        self.seed = seed
        self.source = source
        self.graph = nx.DiGraph()
        self.tensors = {}
        self.forward = []
        self.params, self.consts, self.inputs = {}, {}, {}
        self.outputs, self.loss, self.train = [], None, {}
        self.train_loc = None
        self.env = {}                  # source name -> tensor name
        self.defined_at = {}           # any defined name -> Loc
        self.functions, self.user_ops = {}, {}
        self.custom_vjps = {}
        self.sizes = {}                # size name -> sympy Symbol
        self.size_locs = {}            # size name -> where it first appears
        self.locations = {}
        self.name, self.model_loc = None, None
        self.target = None             # the statement's target name (for layer params)
        self.layer_count = 0
        self.loc = None
        self.current_op = "value"
        self.layer_base = None
        self.defining = None           # the fn whose body is being checked

    # ---- errors and names -----------------------------------------------------------
    def error(self, message, loc=None):
        raise SymnetError(message, loc or self.loc)

    def hint(self):
        """Name for an op's result: `target.op`; the statement's result is renamed to target."""
        return f"{self.target}.{self.current_op}"

    def unique(self, name):
        base, k = name, 1
        while name in self.tensors:
            k += 1
            name = f"{base}_{k}"
        return name

    def define(self, name, loc):
        """A name the source defines: once, and not one a layer made (`h.W`)."""
        prev = self.defined_at.get(name) or self.locations.get(name)
        if prev:
            self.error(f"'{name}' is already defined at line {prev.line}", loc)
        if name in ops.BUILTINS and name not in ("max", "min", "sum", "mean"):
            self.error(f"'{name}' is a builtin function and cannot be redefined", loc)
        if name in self.size_locs:       # its reads would mean the tensor, formulas the size
            self.error(f"'{name}' is a symbolic size (line {self.size_locs[name].line}); "
                       "give the tensor another name", loc)
        self.defined_at[name] = loc

    # ---- tensors --------------------------------------------------------------------
    def new_tensor(self, hint, shape, dtype="f32", kind="value"):
        check_rank(self, len(shape), hint, self.loc)
        shape = tuple(int(d) if sympy.sympify(d).is_Integer else d for d in shape)
        name = self.unique(hint)
        self.tensors[name] = TensorInfo(name, tuple(shape), dtype, kind)
        self.graph.add_node(name, kind=kind, op=kind, shape=tuple(shape), dtype=dtype,
                            loc=self.loc)
        self.locations[name] = self.loc
        return name

    def tensor(self, name):
        return self.tensors[name]

    def shape(self, name):
        return self.tensors[name].shape

    def emit(self, comp, loc=None, label=None):
        comp.group = comp.group or comp.out
        self.forward.append(comp)
        node = self.graph.nodes[comp.out]
        node["op"] = label or self.current_op
        for pos, acc in enumerate(comp.accesses.values()):
            if acc.tensor != comp.out:
                self.graph.add_edge(acc.tensor, comp.out, pos=pos)
        if comp.argmax:
            self.graph.add_edge(comp.out, comp.argmax, pos=0)

    def custom_vjp(self, output, rule, inputs, always=False):
        self.custom_vjps[output] = CustomVJP(output, rule, list(inputs), always)

    def as_elem(self, value):
        if isinstance(value, Elem):
            return value
        if isinstance(value, str):
            return Elem.of(value, self.shape(value))
        return Elem.const(value)

    def materialize(self, value, name=None, label=None):
        """Store a value as a tensor; a plain read of a whole tensor is that tensor."""
        if isinstance(value, str):
            return value
        e = self.as_elem(value)
        if len(e.reads) == 1 and e.expr in e.reads and name is None:
            tensor, dims = e.reads[e.expr]
            if dims == tuple(range(len(e.shape))) and self.shape(tensor) == e.shape:
                return tensor
        out = self.new_tensor(name or (self.target + "." + e.label), e.shape)
        variables = index_symbols(index_names(e.shape))
        accesses = {s: ops.Access(t, tuple(0 if d is None else variables[d] for d in dims))
                    for s, (t, dims) in e.reads.items()}
        self.emit(Comprehension(out, variables, e.expr, accesses), label=label or e.label)
        return out

    def sigmoid_argument(self, value):
        """If value is sigmoid(z) — an Elem, or a tensor stored by one elementwise loop
        nest — then z as an Elem (for the stable logits form of a loss); else None."""
        from .functions import sigmoid
        if isinstance(value, str):
            value = self._stored_elem(value)
        if isinstance(value, Elem) and isinstance(value.expr, sigmoid):
            inner = value.expr.args[0]
            reads = {s: r for s, r in value.reads.items() if s in inner.free_symbols}
            return Elem(value.shape, inner, reads, "logits")
        return None

    def _stored_elem(self, tensor):
        """The elementwise loop nest that stored `tensor`, back as an Elem, or None."""
        comp = next((c for c in self.forward if c.out == tensor), None)
        if comp is None or comp.reduce or comp.guards:
            return None
        position = {v: k for k, v in enumerate(comp.index)}
        reads = {}
        for s, a in comp.accesses.items():
            dims = []
            for e in a.index:
                if e in position:
                    dims.append(position[e])
                elif e == 0:
                    dims.append(None)
                else:
                    return None
            reads[s] = (a.tensor, tuple(dims))
        return Elem(self.shape(tensor), comp.body, reads, "stored")

    # ---- parameters -----------------------------------------------------------------
    def new_param(self, suffix, shape, init, loc):
        """A layer's own parameter, named after the statement: `h = dense(x, 4)` -> h.W."""
        if not all(isinstance(d, int) for d in shape):   # each op checks first; a safety net
            self.error(f"parameter {self.layer_base}.{suffix} needs fixed dimensions, "
                       f"got {format_shape(shape)}", loc)
        check_size(self, shape, f"{self.layer_base}.{suffix}", loc)
        name = f"{self.layer_base}.{suffix}"
        if name in self.defined_at:
            self.error(f"{self.current_op} names its parameter '{name}', but '{name}' is "
                       f"already defined at line {self.defined_at[name].line}", loc)
        if name in self.tensors:        # h = dense(x) + dense(x) made h_2.W; so would h_2 = dense(x)
            self.error(f"{self.current_op} names its parameter '{name}', but the layer at line "
                       f"{self.locations[name].line} already made '{name}'; give this "
                       "statement another name", loc)
        self.tensors[name] = TensorInfo(name, tuple(shape), "f32", "param")
        self.graph.add_node(name, kind="param", op="param", shape=tuple(shape), dtype="f32", loc=loc)
        self.locations[name] = loc
        self.params[name] = initial_values(name, shape, init, self.seed, loc)
        self.env[name] = name           # later statements read it as h.W
        return name

    # ---- sizes ----------------------------------------------------------------------
    def dim(self, d):
        if isinstance(d.value, int):
            if not 1 <= d.value <= MAX_SIZE:
                self.error(f"dimension must be between 1 and {MAX_SIZE}, got {d.value}", d.loc)
            return d.value
        if d.value in self.defined_at:
            self.error(f"'{d.value}' is the tensor defined at line "
                       f"{self.defined_at[d.value].line}; give the size another name", d.loc)
        if d.value not in self.sizes:
            self.sizes[d.value] = sympy.Symbol(d.value, integer=True, positive=True)
            self.size_locs[d.value] = d.loc
        return self.sizes[d.value]

    def concrete_dims(self, dims, what, loc):
        shape = tuple(self.dim(d) for d in dims)
        for d in shape:
            if not isinstance(d, int):
                self.error(f"{what} needs fixed dimensions, got {format_shape(shape)}", loc)
        check_size(self, shape, what, loc)
        return shape


MAX_SIZE = 2 ** 31 - 1          # elements per tensor, and any size argument
# Every tensor is an ndarray somewhere (parameters, the reference, the runtime's buffers),
# and NumPy holds at most 64 dimensions (32 before NumPy 2).
MAX_RANK = 64 if int(np.__version__.split(".")[0]) >= 2 else 32


def check_rank(b, rank, what, loc):
    if rank > MAX_RANK:
        b.error(f"{what} has {rank} dimensions; NumPy {np.__version__} holds at most {MAX_RANK}",
                loc)


def check_size(b, shape, what, loc):
    """A tensor that can be allocated and indexed with 32-bit counts."""
    check_rank(b, len(shape), what, loc)
    count = 1
    for d in shape:
        count *= d
    if count > MAX_SIZE:
        b.error(f"{what} {format_shape(shape)} has {count} elements, more than {MAX_SIZE}", loc)


def index_names(shape):
    """Loop variables over a shape: n for a batch (a symbolic first size), then i, j, k...
    (a weight-shaped [3, 4] is [i, j], not [n, i])."""
    rank = len(shape)
    if rank > 6:
        return [f"i{k}" for k in range(rank)]
    if rank and not sympy.sympify(shape[0]).is_Integer:
        return ["n"] + ["i", "j", "k", "l", "m"][:rank - 1]
    return ["i", "j", "k", "l", "m", "o"][:rank]


# ---- initial values ------------------------------------------------------------------
def initial_values(name, shape, init, seed, loc):
    """Initial parameter values, reproducible per (seed, parameter name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(shape)
    fan_in, fan_out = _fans(shape)
    kind, args = (init, ()) if isinstance(init, str) else init
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "ones":
        return np.ones(shape)
    if kind == "normal":
        return rng.normal(args[0], args[1], shape)
    if kind == "uniform":
        return rng.uniform(args[0], args[1], shape)
    if kind == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    if kind == "he":
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    raise SymnetError(f"unknown initializer '{kind}'", loc)


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 4:            # conv kernel [Cout, Cin, kh, kw]
        field_size = shape[2] * shape[3]
        return shape[1] * field_size, shape[0] * field_size
    return shape[0], int(np.prod(shape[1:]))
