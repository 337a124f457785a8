"""The op table: every builtin of the model language, defined once in index notation.

An op receives its evaluated arguments and emits Comprehensions through the builder
context (`ctx`), returning either a tensor name or an `Elem`: a lazy elementwise
expression that is fused into whatever consumes it (so `relu(x @ W + b)` is one loop
nest after the matrix product). Shape rules and their error messages sit next to the
formula. Gradients are not written here: autodiff derives them from the formulas, except
for the few textbook simplifications registered with `ctx.custom_vjp`.
"""
from dataclasses import dataclass, field

import sympy

from . import functions as F
from .index_ir import Access, Comprehension, access_symbol, index_symbols


# ---- lazy elementwise values -------------------------------------------------------
@dataclass
class Elem:
    """An elementwise expression not yet stored: `expr` over access symbols.

    `reads[sym] = (tensor, dims)`: the symbol reads `tensor[...]` where dim k of the
    tensor follows output dim dims[k], or is fixed at 0 when dims[k] is None."""
    shape: tuple
    expr: sympy.Expr
    reads: dict = field(default_factory=dict)
    label: str = "elementwise"

    @staticmethod
    def const(value):
        return Elem((), sympy.sympify(value), {}, "const")

    @staticmethod
    def of(tensor, shape):
        s = access_symbol(tensor)
        return Elem(tuple(shape), s, {s: (tensor, tuple(range(len(shape))))}, "copy")

    def broadcast_to(self, shape):
        offset = len(shape) - len(self.shape)
        moved = {}
        for k, d in enumerate(self.shape):
            moved[k] = None if (d == 1 and shape[k + offset] != 1) else k + offset
        reads = {s: (t, tuple(None if d is None else moved[d] for d in dims))
                 for s, (t, dims) in self.reads.items()}
        return Elem(tuple(shape), self.expr, reads, self.label)


def format_shape(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast_shapes(shapes):
    """NumPy broadcasting of shapes whose dims are ints or symbols; None if impossible."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def elementwise(ctx, fn, values, loc, label):
    """Combine Elems (or tensors, or numbers) with a scalar function, broadcasting."""
    elems = [ctx.as_elem(v) for v in values]
    shape = broadcast_shapes([e.shape for e in elems])
    if shape is None:
        shapes = " and ".join(format_shape(e.shape) for e in elems)
        ctx.error(f"cannot broadcast {shapes} in {label}", loc)
    elems = [e.broadcast_to(shape) for e in elems]
    reads = {}
    for e in elems:
        reads.update(e.reads)
    return Elem(shape, check_finite(ctx, fn(*[e.expr for e in elems]), label, loc), reads, label)


OPERATOR_LABELS = ("add", "sub", "mul", "div", "pow", "neg")
NOT_FINITE = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo)


def check_finite(ctx, expr, label, loc):
    """Refuse what sympy folds to infinity, nan or an imaginary number (1 / 0, log(0),
    (-1) ^ 0.5): no code computes it, and it is always a mistake in the model."""
    what = "this value" if label in OPERATOR_LABELS else f"{label}(...)"
    if expr.has(*NOT_FINITE):
        ctx.error("division by zero" if label in ("div", "pow")
                  else f"{what} is infinite or undefined here", loc)
    if expr.has(sympy.I):
        ctx.error(f"{what} is not a real number", loc)
    # sympy folds sqrt(x ^ 2) to Abs(x); the code generators know abs as absval.
    return expr.replace(sympy.Abs, F.absval)


def read(tensor, index):
    """A body symbol reading tensor[index], with its access record."""
    s = access_symbol(tensor)
    return s, {s: Access(tensor, tuple(index))}


# ---- reductions --------------------------------------------------------------------
def reduce_axes(ctx, tensor, axes, kind, hint, scale=1, loc=None):
    """out[kept dims] = kind over `axes` of scale * tensor[...]."""
    shape = ctx.shape(tensor)
    axes = sorted(set(axes))
    variables = index_symbols([f"i{k}" for k in range(len(shape))])
    out_index = tuple(v for k, v in enumerate(variables) if k not in axes)
    rindex = tuple(variables[k] for k in axes)
    s, acc = read(tensor, variables)
    out = ctx.new_tensor(hint, tuple(d for k, d in enumerate(shape) if k not in axes))
    argmax = ctx.new_tensor(hint + ".argmax", ctx.shape(out), "i32", "aux") if kind == "max" else None
    ctx.emit(Comprehension(out, out_index, s * scale, acc, kind, rindex,
                           tuple(shape[k] for k in axes), argmax=argmax), loc)
    return out


def normalize_axis(ctx, axis, rank, loc):
    if not -rank <= axis < rank:
        ctx.error(f"axis {axis} is out of range for a tensor of rank {rank}", loc)
    return axis % rank


def reduction_op(kind, mean):
    def build(ctx, loc, x, axis=None):
        x = ctx.materialize(x)
        shape = ctx.shape(x)
        if not shape:                       # a scalar is its own sum and mean
            if axis is not None:
                ctx.error(f"axis {axis} is out of range for a scalar", loc)
            return x
        axes = range(len(shape)) if axis is None else [normalize_axis(ctx, axis, len(shape), loc)]
        count = sympy.Mul(*[sympy.sympify(shape[a]) for a in axes])
        return reduce_axes(ctx, x, axes, kind, ctx.hint(), 1 / count if mean else 1, loc)
    return build


# ---- softmax family and losses -----------------------------------------------------
def _spread(reduced, shape, axis):
    """A tensor reduced over `axis`, read back as an Elem of the full shape."""
    e = Elem.of(reduced, shape[:axis] + shape[axis + 1:])
    return Elem(shape, e.expr, {k: (t, tuple(d if d < axis else d + 1 for d in dims))
                                for k, (t, dims) in e.reads.items()})


def _max_and_sumexp(ctx, z, axis, loc):
    """m = max over axis, s = sum of exp(z - m): the stable log-sum-exp pieces.
    Returns the tensors m, e = exp(z - m) and s."""
    shape = ctx.shape(z)
    m = reduce_axes(ctx, z, [axis], "max", ctx.hint() + ".max", loc=loc)
    shifted = elementwise(ctx, lambda a, b: sympy.exp(a - b), [z, _spread(m, shape, axis)], loc, "exp")
    e = ctx.materialize(shifted, ctx.hint() + ".exp")
    s = reduce_axes(ctx, e, [axis], "sum", ctx.hint() + ".sum", loc=loc)
    return m, e, s


def softmax(ctx, loc, z, axis=-1):
    z = ctx.materialize(z)
    axis = normalize_axis(ctx, axis, len(ctx.shape(z)), loc)
    _, e, s = _max_and_sumexp(ctx, z, axis, loc)
    return elementwise(ctx, lambda a, b: a / b, [e, _spread(s, ctx.shape(z), axis)], loc, "softmax")


def log_softmax(ctx, loc, z, axis=-1):
    z = ctx.materialize(z)
    axis = normalize_axis(ctx, axis, len(ctx.shape(z)), loc)
    m, _, s = _max_and_sumexp(ctx, z, axis, loc)
    shape = ctx.shape(z)
    return elementwise(ctx, lambda a, b, c: a - b - sympy.log(c),
                       [z, _spread(m, shape, axis), _spread(s, shape, axis)], loc, "log_softmax")


def onehot(ctx, loc, y, k):
    y = ctx.materialize(y)
    if ctx.tensor(y).dtype != "i32":
        ctx.error(f"onehot expects i32 class indices, got {format_shape(ctx.shape(y))} f32; "
                  "declare the input with `: i32`", loc)
    shape = ctx.shape(y) + (k,)
    variables = index_symbols([f"i{d}" for d in range(len(shape))])
    s, acc = read(y, variables[:-1])
    out = ctx.new_tensor(ctx.hint(), shape)
    ctx.emit(Comprehension(out, variables, F.eq(s, variables[-1]), acc), loc)
    return out


def cross_entropy(ctx, loc, logits, labels):
    """Batch mean of -log softmax(logits)[label]; labels are i32 classes or one-hot rows.

    Its gradient is registered in the textbook form (softmax(z) - onehot(y)) / N; the
    derivation from the formula gives the same values (a test checks it)."""
    z = ctx.materialize(logits)
    t = ctx.materialize(labels)
    zs, ts = ctx.shape(z), ctx.shape(t)
    if len(zs) != 2:
        ctx.error(f"cross_entropy expects logits [N, classes], got {format_shape(zs)}", loc)
    classes = ctx.tensor(t).dtype == "i32"
    if classes and ts != zs[:1]:
        ctx.error(f"cross_entropy with class indices expects labels {format_shape(zs[:1])}, "
                  f"got {format_shape(ts)}", loc)
    if not classes and ts != zs:
        hint = ("; class indices must be i32: declare the labels input with `: i32`"
                if ts == zs[:1] else "")      # `input y[N]` without `: i32` is f32
        ctx.error(f"cross_entropy with one-hot targets expects {format_shape(zs)}, "
                  f"got {format_shape(ts)}{hint}", loc)
    batch = sympy.sympify(zs[0])
    m_t, e, s_t = _max_and_sumexp(ctx, z, 1, loc)
    n, k = index_symbols(["n", "k"])
    zr, acc = read(z, (n, k))
    tr, tacc = read(t, (n,) if classes else (n, k))
    target = F.eq(tr, k) if classes else tr
    picked = ctx.new_tensor(ctx.hint() + ".picked", zs[:1])
    ctx.emit(Comprehension(picked, (n,), zr * target, {**acc, **tacc}, "sum", (k,), (zs[1],)), loc)
    weight = None
    if not classes:
        weight = reduce_axes(ctx, t, [1], "sum", ctx.hint() + ".tsum", loc=loc)
    mr, macc = read(m_t, (n,))
    sr, sacc = read(s_t, (n,))
    pr, pacc = read(picked, (n,))
    wr, wacc = read(weight, (n,)) if weight else (1, {})
    loss = ctx.new_tensor(ctx.hint(), ())
    ctx.emit(Comprehension(loss, (), ((mr + sympy.log(sr)) * wr - pr) / batch,
                           {**macc, **sacc, **pacc, **wacc}, "sum", (n,), (zs[0],)), loc)

    def vjp(dloss, grad_of):
        dr, dacc = read(dloss, ())
        er, eacc = read(e, (n, k))
        sr2, sacc2 = read(s_t, (n,))
        tr2, tacc2 = read(t, (n,) if classes else (n, k))
        wr2, wacc2 = read(weight, (n,)) if weight else (1, {})
        onehot_target = F.eq(tr2, k) if classes else tr2
        body = dr * (er / sr2 * wr2 - onehot_target) / batch
        rules = [(z, Comprehension(grad_of(z), (n, k), body,
                                   {**dacc, **eacc, **sacc2, **tacc2, **wacc2}))]
        if not classes:      # one-hot targets may be computed too: d/dt = (lse - z) / N
            zr2, zacc2 = read(z, (n, k))
            mr2, macc2 = read(m_t, (n,))
            sr3, sacc3 = read(s_t, (n,))
            target_grad = dr * (mr2 + sympy.log(sr3) - zr2) / batch
            rules.append((t, Comprehension(grad_of(t), (n, k), target_grad,
                                           {**dacc, **zacc2, **macc2, **sacc3})))
        return rules
    ctx.custom_vjp(loss, vjp, inputs=[z, t])
    return loss


def _pairs(ctx, loc, name, pred, target):
    """A loss pairs each prediction with its target. Shapes that broadcast only by
    stretching each against the other ([N, 1] and [N] make [N, N]) would pair every
    prediction with every target, and train on a mean of all those pairs."""
    a, b = ctx.as_elem(pred).shape, ctx.as_elem(target).shape
    shape = broadcast_shapes([a, b])
    if shape is not None and shape != tuple(a) and shape != tuple(b):
        ctx.error(f"{name} of {format_shape(a)} and {format_shape(b)} would pair every "
                  f"prediction with every target ({format_shape(shape)}); give both the "
                  "same shape (e.g. declare the target input with the prediction's shape)", loc)


def mse(ctx, loc, pred, target):
    _pairs(ctx, loc, "mse", pred, target)
    diff = elementwise(ctx, lambda a, b: (a - b) ** 2, [pred, target], loc, "mse")
    return reduction_op("sum", True)(ctx, loc, diff)


def binary_cross_entropy(ctx, loc, p, t):
    """Batch mean of -(t log p + (1 - t) log(1 - p)).

    When p is sigmoid(z) the loss is rewritten on the logits, softplus(z) - t z, which
    stays finite for any z; otherwise p is clamped to [1e-7, 1 - 1e-7]."""
    _pairs(ctx, loc, "binary_cross_entropy", p, t)
    logits = ctx.sigmoid_argument(p)
    if logits is not None:
        body = elementwise(ctx, lambda z, y: F.softplus(z) - y * z, [logits, t], loc, "bce")
    else:
        eps = sympy.Float(1e-7)
        clamp = lambda q: F.minimum(F.maximum(q, eps), 1 - eps)
        body = elementwise(ctx, lambda q, y: -(y * sympy.log(clamp(q)) + (1 - y) * sympy.log(1 - clamp(q))),
                           [p, t], loc, "bce")
    return reduction_op("sum", True)(ctx, loc, body)


# ---- linear algebra and layers -----------------------------------------------------
def matmul(ctx, loc, a, b):
    """Contract the last dim of a with the first of b: [i]@[i,j], [n,i]@[i,j], [n,i]@[i]."""
    a, b = ctx.materialize(a), ctx.materialize(b)
    sa, sb = ctx.shape(a), ctx.shape(b)
    if not (1 <= len(sa) <= 2 and 1 <= len(sb) <= 2) or sa[-1] != sb[0]:
        ctx.error(f"cannot multiply {format_shape(sa)} @ {format_shape(sb)}", loc)
    i = index_symbols(["i"])[0]
    left = index_symbols(["n"])[:len(sa) - 1]
    right = index_symbols(["j"])[:len(sb) - 1]
    ar, aacc = read(a, left + (i,))
    br, bacc = read(b, (i,) + right)
    out = ctx.new_tensor(ctx.hint(), sa[:-1] + sb[1:])
    ctx.emit(Comprehension(out, left + right, ar * br, {**aacc, **bacc}, "sum", (i,), (sa[-1],)), loc)
    return out


def _flat_features(ctx, x, layer, loc):
    x = ctx.materialize(x)
    shape = ctx.shape(x)
    if len(shape) == 2:
        if not isinstance(shape[1], int):
            ctx.error(f"{layer} needs a fixed number of input features, got {format_shape(shape)}", loc)
        return x, shape
    if len(shape) > 2:
        features = sympy.Mul(*[sympy.sympify(d) for d in shape[1:]])
        ctx.error(f"{layer} expects [{shape[0]}, {features}], got {format_shape(shape)}; "
                  "use flatten(...)", loc)
    ctx.error(f"{layer} expects [N, features], got {format_shape(shape)}", loc)


def dense(ctx, loc, x, units, bias=True, init="he"):
    x, shape = _flat_features(ctx, x, "dense", loc)
    if units < 1:
        ctx.error(f"dense needs at least 1 unit, got {units}", loc)
    W = ctx.new_param("W", (shape[1], units), init, loc)
    out = matmul(ctx, loc, x, W)
    if not bias:
        return out
    b = ctx.new_param("b", (units,), "zeros", loc)
    return elementwise(ctx, lambda h, c: h + c, [out, b], loc, "dense")


def maxout(ctx, loc, x, units, pieces=2):
    x, shape = _flat_features(ctx, x, "maxout", loc)
    W = ctx.new_param("W", (shape[1], units, pieces), "glorot", loc)
    b = ctx.new_param("b", (units, pieces), "zeros", loc)
    n, j, p, i = index_symbols(["n", "j", "p", "i"])
    xr, xacc = read(x, (n, i))
    wr, wacc = read(W, (i, j, p))
    z = ctx.new_tensor(ctx.hint() + ".z", (shape[0], units, pieces))
    ctx.emit(Comprehension(z, (n, j, p), xr * wr, {**xacc, **wacc}, "sum", (i,), (shape[1],)), loc)
    zb = ctx.materialize(elementwise(ctx, lambda h, c: h + c, [z, b], loc, "add"), ctx.hint() + ".zb")
    return reduce_axes(ctx, zb, [2], "max", ctx.hint(), loc=loc)


def _conv_geometry(ctx, loc, shape, kh, kw, stride, pad, what):
    """Output height and width, and the padding before them (top, left).

    An integer pad pads every side alike; "same" pads as TensorFlow does: the output is
    ceil(H / stride), the total padding max((out - 1) * stride + k - H, 0), its smaller
    half on top (left). Reads outside the input are zero, so the padding after the image
    needs no code: only the offset before it and the output size matter."""
    if len(shape) != 4:
        ctx.error(f"{what} expects [N, C, H, W], got {format_shape(shape)}", loc)
    if isinstance(pad, str) and pad not in ("valid", "same"):
        ctx.error(f'pad must be "valid", "same" or an integer, got "{pad}"', loc)
    pad = 0 if pad == "valid" else pad
    if stride < 1 or (pad != "same" and pad < 0):
        ctx.error(f"{what} needs stride >= 1 and pad >= 0", loc)
    H, W = shape[2], shape[3]
    if not isinstance(H, int) or not isinstance(W, int):
        ctx.error(f"{what} needs fixed image sizes, got {format_shape(shape)}", loc)
    if pad == "same":
        Ho, Wo = -(-H // stride), -(-W // stride)
        return Ho, Wo, (max((Ho - 1) * stride + kh - H, 0) // 2,
                        max((Wo - 1) * stride + kw - W, 0) // 2)
    if H + 2 * pad < kh or W + 2 * pad < kw:
        ctx.error(f"{what} window {kh}x{kw} does not fit input {format_shape(shape)}"
                  + (f" with pad {pad}" if pad else ""), loc)
    return (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1, (pad, pad)


def conv2d(ctx, loc, x, kernel=None, filters=None, size=None, stride=1, pad="valid",
           bias=True, init="he"):
    """out[n,o,y,x] = sum_{c,ky,kx} in[n, c, s*y+ky-ph, s*x+kx-pw] * K[o, c, ky, kx] (+ b[o]).

    Cross-correlation, as in every framework. A [kh, kw] kernel is applied to each
    input channel separately (one filter per channel, shared)."""
    x = ctx.materialize(x)
    shape = ctx.shape(x)
    if kernel is not None:
        kernel = ctx.materialize(kernel)
        kshape = ctx.shape(kernel)
        if len(kshape) not in (2, 4):
            ctx.error(f"conv2d kernel must be [Cout, Cin, kh, kw] or [kh, kw], got {format_shape(kshape)}", loc)
        kh, kw = kshape[-2:]
        if len(kshape) == 4 and len(shape) == 4 and kshape[1] != shape[1]:
            ctx.error(f"conv2d kernel {format_shape(kshape)} expects {kshape[1]} input channels, "
                      f"got {format_shape(shape)}", loc)
        cout = kshape[0] if len(kshape) == 4 else (shape[1] if len(shape) == 4 else 1)
    else:
        if filters is None or size is None:
            ctx.error("conv2d needs a kernel tensor or filters=C and size=K", loc)
        kh = kw = size
        cout = filters
    Ho, Wo, (ph, pw) = _conv_geometry(ctx, loc, shape, kh, kw, stride, pad, "conv2d")
    if kernel is None:
        if not isinstance(shape[1], int):
            ctx.error(f"conv2d needs a fixed number of input channels, got {format_shape(shape)}", loc)
        kernel = ctx.new_param("W", (filters, shape[1], size, size), init, loc)
    n, o, y, xx, c, ky, kx = index_symbols(["n", "o", "y", "x", "c", "ky", "kx"])
    depthwise = len(ctx.shape(kernel)) == 2
    channel = o if depthwise else c
    ir, iacc = read(x, (n, channel, stride * y + ky - ph, stride * xx + kx - pw))
    kr, kacc = read(kernel, (ky, kx) if depthwise else (o, c, ky, kx))
    rindex, rextent = ((ky, kx), (kh, kw)) if depthwise else ((c, ky, kx), (shape[1], kh, kw))
    out = ctx.new_tensor(ctx.hint(), (shape[0], cout, Ho, Wo))
    ctx.emit(Comprehension(out, (n, o, y, xx), ir * kr, {**iacc, **kacc}, "sum", rindex, rextent), loc)
    if not (bias and filters):
        return out
    b = ctx.new_param("b", (filters,), "zeros", loc)
    bshape = Elem.of(b, (filters,))
    bshape = Elem((shape[0], cout, Ho, Wo), bshape.expr,
                  {s: (t, (1,)) for s, (t, _) in bshape.reads.items()})
    return elementwise(ctx, lambda h, c2: h + c2, [out, bshape], loc, "conv2d")


def pool(kind):
    def build(ctx, loc, x, size, stride=None):
        x = ctx.materialize(x)
        shape = ctx.shape(x)
        stride = size if stride is None else stride
        Ho, Wo, _ = _conv_geometry(ctx, loc, shape, size, size, stride, 0, f"{kind}pool")
        n, c, y, xx, ky, kx = index_symbols(["n", "c", "y", "x", "ky", "kx"])
        ir, iacc = read(x, (n, c, stride * y + ky, stride * xx + kx))
        out = ctx.new_tensor(ctx.hint(), (shape[0], shape[1], Ho, Wo))
        argmax = ctx.new_tensor(ctx.hint() + ".argmax", ctx.shape(out), "i32", "aux") if kind == "max" else None
        body = ir if kind == "max" else ir / (size * size)
        ctx.emit(Comprehension(out, (n, c, y, xx), body, iacc, "max" if kind == "max" else "sum",
                               (ky, kx), (size, size), argmax=argmax), loc)
        return out
    return build


# ---- shape ops ---------------------------------------------------------------------
def _strides(shape):
    out, acc = [], sympy.Integer(1)
    for d in reversed(shape):
        out.append(acc)
        acc = acc * sympy.sympify(d)
    return tuple(reversed(out))


def _relayout(ctx, loc, x, shape, hint):
    """A copy of x into `shape` with the same row-major order (reshape, flatten).

    Its gradient is the inverse relayout; index maps use floor division and modulo,
    which the generic adjoint cannot invert, so the rule is registered here."""
    from .index_ir import fdiv
    src = ctx.shape(x)
    out = ctx.new_tensor(hint, tuple(shape))

    def copy(dst_name, dst_shape, src_name, src_shape):
        variables = index_symbols([f"i{k}" for k in range(len(dst_shape))])
        linear = sum((v * s for v, s in zip(variables, _strides(dst_shape))), sympy.Integer(0))
        index = []
        for k, (d, s) in enumerate(zip(src_shape, _strides(src_shape))):
            if k == 0 and dst_shape and src_shape[0] == dst_shape[0]:
                index.append(variables[0])   # the batch index lines up: no modulo
                continue
            # Terms that are multiples of s*d do not change (linear // s) mod d; dropped
            # here, they spare sympy's Mod its slow search for them (0.06 s of LeNet-5).
            rest = sympy.Add(*[t for t in sympy.Add.make_args(linear) if not (t / (s * d)).is_integer])
            quotient = fdiv(rest, s) if s != 1 else rest
            top, bound = _largest(rest, dict(zip(variables, dst_shape))), sympy.sympify(s * d)
            # No modulo where the rest stays below s*d: the gradient of flatten reads
            # [n, 25*c + 5*y + x], an affine access, not a modulo.
            below = top is not None and bound.is_Integer and top < int(bound)
            index.append(quotient if below else sympy.Mod(quotient, d))
        r, acc = read(src_name, index)
        return Comprehension(dst_name, variables, r, acc)

    ctx.emit(copy(out, tuple(shape), x, src), loc)
    ctx.custom_vjp(out, lambda dout, grad_of: [(x, copy(grad_of(x), src, dout, tuple(shape)))],
                   inputs=[x], always=True)
    return out


def _largest(linear, extents):
    """The largest value of a sum of index variables (each in range(extent)) with
    nonnegative integer coefficients; None for anything else."""
    top = 0
    for term in sympy.Add.make_args(linear):
        coeff, var = term.as_coeff_Mul()
        extent = sympy.sympify(extents.get(var, -1))
        if not (coeff.is_Integer and coeff >= 0 and extent.is_Integer and extent > 0):
            return None
        top += int(coeff) * (int(extent) - 1)
    return top


def _count(shape):
    return sympy.Mul(*[sympy.sympify(d) for d in shape])


def flatten(ctx, loc, x):
    x = ctx.materialize(x)
    shape = ctx.shape(x)
    if len(shape) < 2:
        ctx.error(f"flatten needs a tensor of rank 2 or more, got {format_shape(shape)}", loc)
    if len(shape) == 2:
        return x
    return _relayout(ctx, loc, x, (shape[0], _count(shape[1:])), ctx.hint())


def reshape(ctx, loc, x, dims):
    x = ctx.materialize(x)
    shape = ctx.shape(x)
    total = _count(shape)
    known = [d for d in dims if d != -1]
    if dims.count(-1) > 1:
        ctx.error("reshape allows at most one -1", loc)
    if -1 in dims:
        rest = sympy.simplify(total / _count(known))
        if not (rest.is_Integer or rest.is_Symbol) and not rest.is_integer:
            ctx.error(f"cannot reshape {format_shape(shape)} to {format_shape(dims)}", loc)
        dims = [rest if d == -1 else d for d in dims]
    if sympy.simplify(_count(dims) - total) != 0:
        ctx.error(f"cannot reshape {format_shape(shape)} ({total} elements) to "
                  f"{format_shape(dims)} ({_count(dims)} elements)", loc)
    dims = [int(d) if sympy.sympify(d).is_Integer else d for d in dims]
    return _relayout(ctx, loc, x, tuple(dims), ctx.hint())


def transpose(ctx, loc, x):
    x = ctx.materialize(x)
    shape = ctx.shape(x)
    variables = index_symbols([f"i{k}" for k in range(len(shape))])
    r, acc = read(x, tuple(reversed(variables)))
    out = ctx.new_tensor(ctx.hint(), tuple(reversed(shape)))
    ctx.emit(Comprehension(out, variables, r, acc), loc)
    return out


# ---- the table ---------------------------------------------------------------------
def _unary(fn, label):
    return lambda ctx, loc, z: elementwise(ctx, fn, [z], loc, label)


ELEMENTWISE = {
    "relu": (lambda z: F.relu(z), ["z"]),
    "sigmoid": (lambda z: F.sigmoid(z), ["z"]),
    "tanh": (sympy.tanh, ["z"]),
    "step": (lambda z: F.step(z), ["z"]),
    "sign": (lambda z: F.sgn(z), ["z"]),
    "exp": (sympy.exp, ["z"]),
    "log": (sympy.log, ["z"]),
    "sqrt": (sympy.sqrt, ["z"]),
    "abs": (lambda z: F.absval(z), ["z"]),
    "max": (lambda a, b: F.maximum(a, b), ["a", "b"]),
    "min": (lambda a, b: F.minimum(a, b), ["a", "b"]),
    "leaky_relu": (lambda z, alpha=0.01: F.leaky_relu(z, sympy.Float(alpha)), ["z", "alpha=0.01"]),
    "elu": (lambda z, alpha=1.0: F.elu(z, sympy.Float(alpha)), ["z", "alpha=1.0"]),
}


@dataclass(frozen=True)
class OpDef:
    """A builtin: its parameters as (name, kind, default) and the function that builds it.

    kinds: tensor, int, float, str, bool, dims, init, pad (str or int)."""
    name: str
    params: tuple
    build: object


REQUIRED = object()
T = "tensor"


def _elementwise_def(name, fn, params):
    plist = []
    for p in params:
        if "=" in p:
            pname, default = p.split("=")
            plist.append((pname, "float", float(default)))
        else:
            plist.append((p, T, REQUIRED))

    tensor_names = [p[0] for p in plist if p[1] == T]

    def build(ctx, loc, **args):
        tensors = [args.pop(n) for n in tensor_names]
        return elementwise(ctx, lambda *exprs: fn(*exprs, **args), tensors, loc, name)
    return OpDef(name, tuple(plist), build)


BUILTINS = {name: _elementwise_def(name, fn, params) for name, (fn, params) in ELEMENTWISE.items()}
BUILTINS.update({d.name: d for d in [
    OpDef("softmax", (("z", T, REQUIRED), ("axis", "int", -1)), softmax),
    OpDef("log_softmax", (("z", T, REQUIRED), ("axis", "int", -1)), log_softmax),
    OpDef("onehot", (("y", T, REQUIRED), ("k", "int", REQUIRED)), onehot),
    OpDef("dense", (("x", T, REQUIRED), ("units", "int", REQUIRED), ("bias", "bool", True),
                    ("init", "init", "he")), dense),
    OpDef("maxout", (("x", T, REQUIRED), ("units", "int", REQUIRED), ("pieces", "int", 2)), maxout),
    OpDef("conv2d", (("x", T, REQUIRED), ("kernel", T, None), ("filters", "int", None),
                     ("size", "int", None), ("stride", "int", 1), ("pad", "pad", "valid"),
                     ("bias", "bool", True), ("init", "init", "he")), conv2d),
    OpDef("maxpool", (("x", T, REQUIRED), ("size", "int", REQUIRED), ("stride", "int", None)), pool("max")),
    OpDef("avgpool", (("x", T, REQUIRED), ("size", "int", REQUIRED), ("stride", "int", None)), pool("avg")),
    OpDef("flatten", (("x", T, REQUIRED),), flatten),
    OpDef("reshape", (("x", T, REQUIRED), ("dims", "dims", REQUIRED)), reshape),
    OpDef("transpose", (("x", T, REQUIRED),), transpose),
    OpDef("sum", (("x", T, REQUIRED), ("axis", "int", None)), reduction_op("sum", False)),
    OpDef("mean", (("x", T, REQUIRED), ("axis", "int", None)), reduction_op("sum", True)),
    OpDef("mse", (("pred", T, REQUIRED), ("target", T, REQUIRED)), mse),
    OpDef("cross_entropy", (("logits", T, REQUIRED), ("labels", T, REQUIRED)), cross_entropy),
    OpDef("binary_cross_entropy", (("p", T, REQUIRED), ("t", T, REQUIRED)), binary_cross_entropy),
]})

INITIALIZERS = {"zeros": 0, "ones": 0, "glorot": 0, "he": 0, "normal": 2, "uniform": 2}
