"""Syntax tree -> Model: the computation graph with shapes, parameters and loop nests.

`build_model(program)` walks the statements once, in order, through a Builder
(model.py), which keeps what is made. Expressions evaluate to tensor names or lazy
`Elem`s (ops.py); every stored tensor becomes a node of a `networkx.DiGraph` (edges
carry operand positions) and is computed by Comprehensions, the forward program, in
order. Names from the source survive everywhere: layer parameters are named after their
statement's target (`h = dense(x, 4)` makes `h.W`).
"""
import difflib

import networkx as nx
import numpy as np
import sympy

from . import ops
from . import syntax as S
from .index_ir import Comprehension, TensorInfo, access_symbol, verify
from .model import MAX_SIZE, Builder, Model, check_rank, initial_values
from .ops import Elem, format_shape


# ---- statements ----------------------------------------------------------------------
def build_model(program, seed=0, source=""):
    b = Builder(program, seed, source)
    for stmt in program.statements:
        b.loc = stmt.loc
        b.layer_count = 0
        _STATEMENTS[type(stmt)](b, stmt)
    verify(b.forward, b.tensors)
    sizes = tuple(b.sizes.values())
    return Model(b.name or _stem(program.filename), program.filename, b.graph, b.tensors,
                 b.forward, b.params, b.consts, b.inputs, b.outputs, b.loss, b.train,
                 b.custom_vjps, sizes, b.locations, source, b.model_loc)


def _stem(filename):
    import os
    return os.path.splitext(os.path.basename(filename))[0] or "model"


def _model_stmt(b, s):
    if b.name is not None:
        b.error("the model is already named", s.loc)
    b.name, b.model_loc = s.name, s.loc


def _input_stmt(b, s):
    b.define(s.name, s.loc)
    shape = tuple(b.dim(d) for d in s.dims)
    b.new_tensor(s.name, shape, s.dtype, "input")
    b.graph.nodes[s.name]["op"] = "input"
    b.inputs[s.name] = b.tensors[s.name]
    b.env[s.name] = s.name


def _literal(b, expr, shape, what):
    """A nested list / number literal as an ndarray of `shape` (a number broadcasts)."""
    def value(e):
        if isinstance(e, S.Num):
            return e.value
        if isinstance(e, S.Neg):
            return -value(e.operand)
        if isinstance(e, S.ListLit):
            return [value(i) for i in e.items]
        b.error(f"{what} values must be numbers or nested [...] lists", e.loc)
    raw = value(expr)
    depth, row = 0, raw
    while isinstance(row, list) and row:
        depth, row = depth + 1, row[0]
    check_rank(b, depth, f"{what} literal", expr.loc)
    try:
        array = np.array(raw, dtype=np.float64)
    except ValueError:
        b.error(f"{what} literal is ragged: every row needs the same length", expr.loc)
    if array.ndim == 0:
        return np.full(shape, float(array))
    if array.shape != tuple(shape):
        b.error(f"{what} literal has shape {format_shape(array.shape)}, declared "
                f"{format_shape(shape)}", expr.loc)
    return array


def _param_stmt(b, s):
    b.define(s.name, s.loc)
    shape = b.concrete_dims(s.dims or (), "param", s.loc)
    if s.value is not None:
        values = _literal(b, s.value, shape, "param")
    else:
        values = initial_values(s.name, shape, _init_spec(b, s.init), b.seed, s.loc)
    b.tensors[s.name] = TensorInfo(s.name, shape, "f32", "param")
    b.graph.add_node(s.name, kind="param", op="param", shape=shape, dtype="f32", loc=s.loc)
    b.locations[s.name] = s.loc
    b.params[s.name] = values
    b.env[s.name] = s.name


def _init_spec(b, e):
    if isinstance(e, S.Name):
        name, args = e.id, ()
    elif isinstance(e, S.Call) and not e.kwargs:
        name, args = e.func, tuple(_number(b, a) for a in e.args)
    else:
        b.error("expected an initializer: zeros, ones, glorot, he, normal(mean, std), "
                "uniform(lo, hi)", e.loc)
    if name not in ops.INITIALIZERS:
        b.error(f"unknown initializer '{name}'" + _suggest(name, ops.INITIALIZERS), e.loc)
    if len(args) != ops.INITIALIZERS[name]:
        b.error(f"{name} takes {ops.INITIALIZERS[name]} arguments, got {len(args)}", e.loc)
    if name == "normal" and not args[1] > 0:
        b.error(f"normal(mean, std) needs a positive std, got {_number_text(args[1])}",
                e.args[1].loc)
    if name == "uniform" and not args[0] < args[1]:
        b.error(f"uniform(lo, hi) needs lo below hi, got uniform({_number_text(args[0])}, "
                f"{_number_text(args[1])})", e.loc)
    return (name, args)


def _number(b, e):
    if isinstance(e, S.Num):
        return e.value
    if isinstance(e, S.Neg) and isinstance(e.operand, S.Num):
        return -e.operand.value
    b.error("expected a number", e.loc)


def _const_stmt(b, s):
    b.define(s.name, s.loc)
    shape = b.concrete_dims(s.dims or (), "const", s.loc)
    if s.dims is None and isinstance(s.value, S.ListLit):
        shape = np.array(_literal(b, s.value, (), "const")).shape
    b.tensors[s.name] = TensorInfo(s.name, tuple(shape), "f32", "const")
    b.graph.add_node(s.name, kind="const", op="const", shape=tuple(shape), dtype="f32", loc=s.loc)
    b.locations[s.name] = s.loc
    b.consts[s.name] = _literal(b, s.value, shape, "const")
    b.env[s.name] = s.name


def _bind(b, name, expr, loc):
    b.define(name, loc)
    b.target = name
    value = evaluate(b, expr)
    if isinstance(value, str) and value in b.env.values() and value != name:
        b.env[name] = value          # an alias of an existing tensor: no copy
        return value
    if isinstance(value, str):
        tensor = value
        if tensor != name and tensor.startswith(name + ".") and name not in b.tensors:
            _rename(b, tensor, name)
            tensor = name
    else:
        tensor = b.materialize(value, name)
    b.env[name] = tensor
    return tensor


def _rename(b, old, new):
    """Give the statement's top tensor the statement's name."""
    b.tensors[new] = b.tensors.pop(old)
    b.tensors[new].name = new
    nx.relabel_nodes(b.graph, {old: new}, copy=False)
    b.locations[new] = b.locations.pop(old)
    for c in b.forward:
        if c.out == old:
            c.out = new
        if c.group == old:
            c.group = new
        for s, a in list(c.accesses.items()):
            if a.tensor == old:
                c.accesses[s] = ops.Access(new, a.index)
    if old in b.custom_vjps:
        b.custom_vjps[new] = b.custom_vjps.pop(old)
        b.custom_vjps[new].output = new


def _assign_stmt(b, s):
    _bind(b, s.name, s.expr, s.loc)


def _output_stmt(b, s):
    if s.expr is None:
        if s.name not in b.env:
            b.error(f"unknown name '{s.name}'" + _suggest(s.name, b.env), s.loc)
        tensor = b.env[s.name]
    else:
        tensor = _bind(b, s.name, s.expr, s.loc)
    if tensor != s.name:
        # `output o = h` (or `output o` of an alias): forward returns it as o, so o is a
        # tensor of its own, a copy.
        b.target = s.name
        tensor = b.materialize(Elem.of(tensor, b.shape(tensor)), s.name, label="copy")
        b.env[s.name] = tensor
    if tensor in b.outputs:
        b.error(f"'{s.name}' is already an output", s.loc)
    b.outputs.append(tensor)


def _loss_stmt(b, s):
    if b.loss is not None:
        b.error("the model already has a loss", s.loc)
    name = s.name or "loss"
    if s.name is None and "loss" in b.defined_at:
        name = "objective"
    b.define(name, s.loc)
    b.target = name
    value = evaluate(b, s.expr)
    elem = b.as_elem(value) if not isinstance(value, str) else None
    shape = b.shape(value) if isinstance(value, str) else elem.shape
    if shape != ():
        tensor = b.materialize(value)
        count = sympy.Mul(*[sympy.sympify(d) for d in shape])
        previous, b.current_op = b.current_op, "mean"     # a loss of many values is their mean
        value = ops.reduce_axes(b, tensor, range(len(shape)), "sum", name, 1 / count, s.loc)
        b.current_op = previous
    tensor = value if isinstance(value, str) else b.materialize(value, name)
    if tensor != name and tensor.startswith(name + ".") and name not in b.tensors:
        _rename(b, tensor, name)
        tensor = name
    b.env[name] = tensor
    b.loss = tensor


def _fn_stmt(b, s):
    b.define(s.name, s.loc)
    if len(set(s.params)) != len(s.params):
        b.error(f"fn {s.name} has a repeated parameter name", s.loc)
    # Check the body once now, so mistakes are reported where they are written. The fn is
    # known only after its body: it cannot call itself, nor a fn defined later.
    b.defining = s.name
    _scalar_expr(b, s.body, {p: sympy.Symbol(p, real=True) for p in s.params}, {}, None)
    b.defining = None
    b.functions[s.name] = s


def _op_stmt(b, s):
    b.define(s.name, s.loc)
    if len(set(s.indices)) != len(s.indices) or len(set(s.operands)) != len(s.operands):
        b.error(f"op {s.name} repeats an operand or index name", s.loc)
    _check_reductions(b, s.body, set(s.indices), _reduce_indices(s.body))
    b.user_ops[s.name] = s


def _check_reductions(b, e, bound, reduced):
    """Each sum(k: ...) and max(k: ...) binds a new index: not an output index, and not
    the index of a reduction around it. A reduction's index (one of `reduced`) means
    nothing outside it: there it would be a loop variable no loop binds."""
    if isinstance(e, S.Reduce):
        if e.index in bound:
            b.error(f"{e.kind}({e.index}: ...) reuses the index '{e.index}', which is already "
                    "bound here; give the reduction its own index", e.loc)
        bound = bound | {e.index}
    if isinstance(e, S.Name) and e.id in reduced and e.id not in bound:
        b.error(f"index '{e.id}' is used outside the reduction that binds it", e.loc)
    for child in _children(e):
        _check_reductions(b, child, bound, reduced)


def _train_stmt(b, s):
    from runtime.program import setting_problem
    from .defaults import OPTIMIZERS
    if b.train:
        b.error(f"the model already has a train statement (line {b.train_loc.line})", s.loc)
    if s.optimizer not in OPTIMIZERS:
        b.error(f"unknown optimizer '{s.optimizer}'; expected one of {', '.join(OPTIMIZERS)}"
                + _suggest(s.optimizer, OPTIMIZERS), s.loc)
    keys = list(OPTIMIZERS[s.optimizer]) + ["batch", "epochs", "seed"]
    train = {"optimizer": s.optimizer}
    for kw in s.kwargs:
        if kw.name not in keys:
            b.error(f"{s.optimizer} has no option '{kw.name}'; it takes {', '.join(keys)}"
                    + _suggest(kw.name, keys), kw.loc)
        if isinstance(kw.value, S.Name) and kw.value.id in b.sizes and kw.name == "batch":
            train[kw.name] = "full"          # batch=N: full-batch gradient descent
            continue
        value = _number(b, kw.value)
        if kw.name in ("batch", "epochs", "seed") and (value != int(value) or value < (0 if kw.name == "seed" else 1)):
            b.error(f"{kw.name} must be a whole number{' of at least 1' if kw.name != 'seed' else ''}, "
                    f"got {_number_text(value)}", kw.value.loc)
        why = setting_problem(kw.name, value)
        if why:
            b.error(f"{kw.name} {why}, got {_number_text(value)}", kw.value.loc)
        # Counts as ints: Model.train is API, and range(model.train["epochs"]) must work.
        train[kw.name] = int(value) if kw.name in ("batch", "epochs", "seed") else value
    b.train, b.train_loc = train, s.loc


_STATEMENTS = {S.ModelStmt: _model_stmt, S.InputStmt: _input_stmt, S.ParamStmt: _param_stmt,
               S.ConstStmt: _const_stmt, S.AssignStmt: _assign_stmt, S.OutputStmt: _output_stmt,
               S.LossStmt: _loss_stmt, S.FnStmt: _fn_stmt, S.OpStmt: _op_stmt,
               S.TrainStmt: _train_stmt}


# ---- expressions ---------------------------------------------------------------------
_ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "/": lambda a, b: a / b, "^": lambda a, b: a ** b}


def evaluate(b, e):
    """Evaluate an expression to a tensor name or an Elem."""
    if isinstance(e, S.Num):
        return Elem.const(_sympy_number(e))
    if isinstance(e, S.Name):
        if e.id in b.env:
            return b.env[e.id]
        if e.id in b.sizes:
            return Elem.const(b.sizes[e.id])
        b.error(f"unknown name '{e.id}'" + _suggest(e.id, list(b.env) + list(b.functions)), e.loc)
    if isinstance(e, S.Neg):
        return ops.elementwise(b, lambda a: -a, [evaluate(b, e.operand)], e.loc, "neg")
    if isinstance(e, S.BinOp):
        left, right = evaluate(b, e.left), evaluate(b, e.right)
        b.loc = e.loc
        if e.op == "@":
            previous, b.current_op = b.current_op, "matmul"
            result = ops.matmul(b, e.loc, left, right)
            b.current_op = previous
            return result
        return ops.elementwise(b, _ARITH[e.op], [left, right], e.loc, _OP_LABEL[e.op])
    if isinstance(e, S.Call):
        return _call(b, e)
    if isinstance(e, S.Str):
        b.error("a string is only allowed as a keyword value, e.g. pad=\"same\"", e.loc)
    if isinstance(e, S.Index):
        b.error(f"indexing {e.base}[...] is only allowed inside an op definition", e.loc)
    if isinstance(e, S.ListLit):
        b.error("a list is only allowed as a literal value or reshape's dims", e.loc)
    if isinstance(e, S.Reduce):
        b.error(f"{e.kind}({e.index}: ...) is only allowed inside an op definition", e.loc)
    b.error("unsupported expression", getattr(e, "loc", None))


_OP_LABEL = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}


def _sympy_number(e):
    return sympy.Integer(int(e.value)) if e.is_int else sympy.Float(e.value)


def _suggest(name, candidates):
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _call(b, e):
    if e.func in b.functions:
        fn = b.functions[e.func]
        if e.kwargs or len(e.args) != len(fn.params):
            b.error(f"{e.func} takes {len(fn.params)} arguments ({', '.join(fn.params)}), "
                    f"got {len(e.args)}", e.loc)
        values = [evaluate(b, a) for a in e.args]
        params = [sympy.Symbol(p, real=True) for p in fn.params]
        body = _scalar_expr(b, fn.body, dict(zip(fn.params, params)), {}, None)
        return ops.elementwise(b, lambda *xs: body.xreplace(dict(zip(params, xs))), values,
                               e.loc, e.func)
    if e.func in b.user_ops:
        return _user_op(b, b.user_ops[e.func], e)
    if e.func not in ops.BUILTINS:
        known = list(ops.BUILTINS) + list(b.functions) + list(b.user_ops)
        b.error(f"unknown function '{e.func}'" + _suggest(e.func, known), e.loc)
    op = ops.BUILTINS[e.func]
    args = _bind_arguments(b, op, e)
    b.loc = e.loc
    previous, b.current_op = b.current_op, e.func
    if op.name in LAYERS:
        # The first layer of a statement takes the target's name, the next ones _2, _3...
        b.layer_base = b.target if b.layer_count == 0 else f"{b.target}_{b.layer_count + 1}"
        b.layer_count += 1
    result = op.build(b, e.loc, **args)
    b.current_op = previous
    return result


LAYERS = ("dense", "conv2d", "maxout")


def _bind_arguments(b, op, call, tensor=None):
    """Match a call's positional and keyword arguments to an op's parameters; tensor
    arguments are evaluated by `tensor` (to sympy in fn and op bodies)."""
    names = [p[0] for p in op.params]
    if len(call.args) > len(names):
        b.error(f"{op.name} takes at most {len(names)} arguments, got {len(call.args)}", call.loc)
    given = dict(zip(names, call.args))
    locs = {}
    for kw in call.kwargs:
        if kw.name not in names:
            b.error(f"{op.name} has no argument '{kw.name}'" + _suggest(kw.name, names), kw.loc)
        if kw.name in given:
            b.error(f"{op.name} got argument '{kw.name}' twice", kw.loc)
        given[kw.name] = kw.value
        locs[kw.name] = kw.loc
    bound = {}
    for name, kind, default in op.params:
        if name not in given:
            if default is ops.REQUIRED:
                b.error(f"{op.name} needs argument '{name}'", call.loc)
            if default is not None or kind == "tensor":
                bound[name] = default
            else:
                bound[name] = None
            continue
        if kind == "tensor" and tensor:
            bound[name] = tensor(given[name])
        else:
            bound[name] = _argument(b, op.name, name, kind, given[name])
    return bound


POSITIVE = {"units", "pieces", "filters", "size", "stride", "k"}


def _number_text(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _argument(b, opname, name, kind, e):
    where = f"{opname} argument '{name}'"
    if kind == "tensor":
        if opname == "conv2d" and name == "kernel" and isinstance(e, S.Num):
            b.error("conv2d's second argument is a kernel tensor; use filters=C, size=K "
                    "to create a learned kernel", e.loc)
        return evaluate(b, e)
    if kind == "int":
        v = _number(b, e) if isinstance(e, (S.Num, S.Neg)) else None
        if v is None or float(v) != int(v):
            b.error(f"{where} must be an integer", e.loc)
        if abs(v) > MAX_SIZE:
            b.error(f"{where} is too large ({_number_text(v)})", e.loc)
        if name in POSITIVE and v < 1:
            b.error(f"{where} must be at least 1, got {int(v)}", e.loc)
        return int(v)
    if kind == "float":
        if not isinstance(e, (S.Num, S.Neg)):
            b.error(f"{where} must be a number", e.loc)
        return float(_number(b, e))
    if kind == "bool":
        if not (isinstance(e, S.Name) and e.id in ("true", "false")):
            b.error(f"{where} must be true or false", e.loc)
        return e.id == "true"
    if kind == "pad":
        if isinstance(e, S.Str):
            if e.value not in ("valid", "same"):
                b.error(f'{where} must be "valid", "same" or an integer, got "{e.value}"', e.loc)
            return e.value
        pad = _argument(b, opname, name, "int", e)
        if pad < 0:
            b.error(f"{where} must be at least 0, got {pad}", e.loc)
        return pad
    if kind == "init":
        return _init_spec(b, e)
    if kind == "dims":
        if not isinstance(e, S.ListLit):
            b.error(f"{where} must be a list of dimensions like [N, 784]", e.loc)
        dims = []
        for item in e.items:
            if isinstance(item, S.Name):
                if item.id not in b.sizes:
                    b.error(f"unknown size '{item.id}'", item.loc)
                dims.append(b.sizes[item.id])
            else:
                d = _number(b, item)
                if d != int(d) or not (d == -1 or 1 <= d <= MAX_SIZE):
                    b.error(f"{where}: a dimension must be a positive integer or -1", item.loc)
                dims.append(int(d))
        return dims
    b.error(f"{where}: unsupported", e.loc)


# ---- user-defined elementwise functions and index-notation ops ----------------------
def _scalar_expr(b, e, names, reads, ctx):
    """Evaluate a scalar expression (fn body or op body) to sympy.

    names: source name -> sympy expr (fn parameters, op index variables);
    reads: accumulates access symbol -> Access for `A[i, j]` reads (op bodies);
    ctx: the op being built (operands, index ranges) or None in fn bodies."""
    if isinstance(e, S.Num):
        return _sympy_number(e)
    if isinstance(e, S.Name):
        if e.id in names:
            return names[e.id]
        if e.id in b.sizes:
            return b.sizes[e.id]
        if ctx is not None and e.id in ctx["operands"]:
            t = ctx["operands"][e.id]
            if b.shape(t) != ():
                b.error(f"operand '{e.id}' has shape {format_shape(b.shape(t))}; index it "
                        f"like {e.id}[...]", e.loc)
            s = access_symbol(t)
            reads[s] = ops.Access(t, ())
            return s
        b.error(f"unknown name '{e.id}'" + _suggest(e.id, list(names)), e.loc)
    if isinstance(e, S.Neg):
        return -_scalar_expr(b, e.operand, names, reads, ctx)
    if isinstance(e, S.BinOp):
        if e.op == "@":
            b.error("'@' is not allowed in a scalar body; write the sum with sum(k: ...)", e.loc)
        value = _ARITH[e.op](_scalar_expr(b, e.left, names, reads, ctx),
                             _scalar_expr(b, e.right, names, reads, ctx))
        return ops.check_finite(b, value, _OP_LABEL[e.op], e.loc)
    if isinstance(e, S.Call):
        if e.func in b.functions:
            fn = b.functions[e.func]
            if e.kwargs or len(e.args) != len(fn.params):
                b.error(f"{e.func} takes {len(fn.params)} arguments, got {len(e.args)}", e.loc)
            args = [_scalar_expr(b, a, names, reads, ctx) for a in e.args]
            params = {p: sympy.Symbol(p, real=True) for p in fn.params}
            body = _scalar_expr(b, fn.body, params, {}, None)
            value = body.xreplace({params[p]: a for p, a in zip(fn.params, args)})
            return ops.check_finite(b, value, e.func, e.loc)
        if e.func == b.defining:
            b.error(f"fn '{e.func}' calls itself; a fn cannot be recursive", e.loc)
        if e.func not in ops.ELEMENTWISE:
            b.error(f"unknown function '{e.func}' (only elementwise functions are allowed here)"
                    + _suggest(e.func, list(ops.ELEMENTWISE) + list(b.functions)), e.loc)
        op = ops.BUILTINS[e.func]
        args = _bind_arguments(b, op, e, lambda a: _scalar_expr(b, a, names, reads, ctx))
        value = ops.ELEMENTWISE[e.func][0](*[args[p[0]] for p in op.params])
        return ops.check_finite(b, value, e.func, e.loc)
    if isinstance(e, S.Index):
        if ctx is None:
            b.error(f"indexing {e.base}[...] is only allowed inside an op definition", e.loc)
        if e.base not in ctx["operands"]:
            b.error(f"'{e.base}' is not an operand of op {ctx['name']}", e.loc)
        t = ctx["operands"][e.base]
        if len(e.indices) != len(b.shape(t)):
            b.error(f"{e.base} has shape {format_shape(b.shape(t))} ({len(b.shape(t))} indices), "
                    f"indexed with {len(e.indices)}", e.loc)
        index = tuple(_index_expr(b, i, ctx) for i in e.indices)
        s = access_symbol(t)
        reads[s] = ops.Access(t, index)
        return s
    if isinstance(e, S.Reduce):
        if ctx is None:
            b.error(f"{e.kind}({e.index}: ...) is only allowed inside an op definition", e.loc)
        return _nested_reduction(b, e, names, reads, ctx)
    if isinstance(e, S.Str):
        b.error("a string is not a number", e.loc)
    b.error("unsupported expression here", getattr(e, "loc", None))


def _index_expr(b, e, ctx):
    """An integer affine index: index variables, integers, sizes, + - and * by integers."""
    if isinstance(e, S.Num) and e.is_int:
        return sympy.Integer(int(e.value))
    if isinstance(e, S.Name):
        if e.id in ctx["indices"]:
            return ctx["indices"][e.id]
        if e.id in b.sizes:
            return b.sizes[e.id]
        b.error(f"unknown index '{e.id}'", e.loc)
    if isinstance(e, S.Neg):
        return -_index_expr(b, e.operand, ctx)
    if isinstance(e, S.BinOp) and e.op in "+-*":
        left, right = _index_expr(b, e.left, ctx), _index_expr(b, e.right, ctx)
        if e.op == "*" and not (left.is_Integer or right.is_Integer):
            b.error("an index may only be multiplied by an integer", e.loc)
        return _ARITH[e.op](left, right)
    b.error("an index must be an integer expression of index variables (i, 2*y + k - 1)",
            getattr(e, "loc", None))


def _infer_ranges(b, op, operands, loc):
    """Each index variable's range from the plain accesses `A[..., i, ...]` in the body."""
    ranges, seen = {}, {}

    def walk(e):
        if isinstance(e, S.Index) and e.base in operands:
            shape = b.shape(operands[e.base])
            if len(e.indices) != len(shape):
                b.error(f"{e.base} has shape {format_shape(shape)} ({len(shape)} indices), "
                        f"indexed with {len(e.indices)}", e.loc)
            for d, i in enumerate(e.indices):
                if isinstance(i, S.Name):
                    if i.id in ranges and ranges[i.id] != shape[d]:
                        prev = seen[i.id]
                        b.error(f"index '{i.id}' ranges over {ranges[i.id]} in {prev} but over "
                                f"{shape[d]} in {e.base} {format_shape(shape)}", i.loc)
                    ranges.setdefault(i.id, shape[d])
                    seen.setdefault(i.id, f"{e.base} {format_shape(shape)}")
        for child in _children(e):
            walk(child)
    walk(op.body)
    return ranges


def _children(e):
    if isinstance(e, (S.BinOp,)):
        return [e.left, e.right]
    if isinstance(e, S.Neg):
        return [e.operand]
    if isinstance(e, S.Call):
        return list(e.args) + [k.value for k in e.kwargs]
    if isinstance(e, S.Index):
        return list(e.indices)
    if isinstance(e, S.Reduce):
        return [e.body]
    return []


def _user_op(b, op, call):
    if call.kwargs or len(call.args) != len(op.operands):
        b.error(f"op {op.name} takes {len(op.operands)} operands ({', '.join(op.operands)}), "
                f"got {len(call.args)}", call.loc)
    operands = {name: b.materialize(evaluate(b, a)) for name, a in zip(op.operands, call.args)}
    ranges = _infer_ranges(b, op, operands, op.loc)
    bound = set(op.indices) | _reduce_indices(op.body)
    for name in bound:
        if name not in ranges:
            b.error(f"cannot infer the range of index '{name}': use it alone in some access "
                    f"like A[{name}]", op.loc)
    symbols = {name: sympy.Symbol(name, integer=True) for name in bound}
    ctx = {"name": op.name, "operands": operands, "indices": symbols, "ranges": ranges}
    previous, b.current_op = b.current_op, op.name
    out_index = tuple(symbols[i] for i in op.indices)
    shape = tuple(ranges[i] for i in op.indices)
    b.loc = call.loc
    if isinstance(op.body, S.Reduce):
        reads = {}
        kind, rvar = op.body.kind, symbols[op.body.index]
        body = _scalar_expr(b, op.body.body, symbols, reads, ctx)
        out = b.new_tensor(b.target + "." + op.name if b.target else op.name, shape)
        argmax = b.new_tensor(out + ".argmax", shape, "i32", "aux") if kind == "max" else None
        b.emit(Comprehension(out, out_index, body, reads, kind, (rvar,),
                             (ranges[op.body.index],), argmax=argmax), label=op.name)
    else:
        reads = {}
        body = _scalar_expr(b, op.body, symbols, reads, ctx)
        out = b.new_tensor(b.target + "." + op.name if b.target else op.name, shape)
        b.emit(Comprehension(out, out_index, body, reads), label=op.name)
    b.current_op = previous
    return out


def _reduce_indices(e):
    found = set()
    if isinstance(e, S.Reduce):
        found.add(e.index)
    for child in _children(e):
        found |= _reduce_indices(child)
    return found


def _nested_reduction(b, e, names, reads, ctx):
    """A reduction inside a larger body becomes its own tensor over its free indices."""
    inner_reads = {}
    body = _scalar_expr(b, e.body, names, inner_reads, ctx)
    rvar = ctx["indices"][e.index]
    used = set().union(*[set().union(*[sympy.sympify(i).free_symbols for i in a.index]) or set()
                         for a in inner_reads.values()] or [set()]) | body.free_symbols
    free = [s for name, s in ctx["indices"].items() if s in used and s != rvar]
    shape = tuple(ctx["ranges"][str(s)] for s in free)
    out = b.new_tensor(f"{b.target}.{e.kind}", shape)
    argmax = b.new_tensor(out + ".argmax", shape, "i32", "aux") if e.kind == "max" else None
    b.emit(Comprehension(out, tuple(free), body, inner_reads, e.kind, (rvar,),
                         (ctx["ranges"][e.index],), argmax=argmax), label=e.kind)
    s = access_symbol(out)
    reads[s] = ops.Access(out, tuple(free))
    return s
