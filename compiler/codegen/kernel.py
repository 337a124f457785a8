"""One kernel's loop nests -> LLVM IR, the part every target shares.

KernelEmitter writes what any strategy needs: integer index arithmetic, loops (with
bounds inferred from guards, Halide-style), memory reads (clamped and zeroed where
interval analysis cannot prove them in bounds; whole vectors in vector mode), the body's
math, and a nest computed point by point. The targets add how a nest's points are laid
out: the CPU's vector tiles and row blocks (llvm.py, CPUKernelEmitter), the GPU's
threads and blocks (ptx.py, GPUKernelEmitter).
"""
import functools
import math
from contextlib import contextmanager

import llvmlite.ir as ir
import sympy

from .. import functions as F
from ..index_ir import fdiv
from ..schedule import lane_step, lane_stride, loop_ranges

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
PTR = ir.PointerType()
FAST = ("reassoc", "contract", "nsz", "arcp")
# x / sqrt(y) without `arcp`: with it LLVM uses a float32 reciprocal-square-root
# estimate, whose Newton step makes 0 * inf = NaN at y = 0 where the quotient is inf.
EXACT_DIVISION = ("reassoc", "contract", "nsz")


class Splat(ir.Constant):
    """A vector constant with equal lanes in LLVM's short form (`splat (float 1.0)`,
    `undef`): llvmlite spells vectors lane by lane, once 58% of LeNet-5's IR text."""

    def __init__(self, vtype, value):
        super().__init__(vtype, None)
        self.lane = ir.Constant(vtype.element, value)

    def _get_reference(self):
        return "undef" if self.lane.constant is ir.Undefined else f"splat ({self.lane})"


# Integer powers up to this one are multiplications, not pow(): exact signs on the GPU,
# and a rounding error that grows with the exponent (16: about 1e-6 in float32).
MAX_SQUARINGS = 16


class KernelEmitter:
    """Emits the loop nests of one kernel into its function. A target's subclass
    supplies `emit`: how the nests' points are laid out (rows and vectors, or threads)."""

    def __init__(self, module, fn, pointers, kernel):
        self.m = module
        self.fn = fn
        self.pointers = pointers
        self.kernel = kernel
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.sizes = {}
        self.dims = {}          # sympy dim expression -> i64 value (hoisted)
        self.vector = None      # in vector mode: (variable, first lane's value (int or i64), lanes)
        self.columns = None     # in a panel: the first lanes of the row chunks to compute
        self.packed = None      # in a panel: (operand's access index, its copy, first column)
        self.preloaded = {}     # access symbol -> value already computed (shifted rows)
        self.ranges = {}        # loop variable -> extent, for the nest being emitted
        self.guards = {}        # id(comprehension) -> its guards interval analysis cannot prove
        self.ftype = module.float

    def const(self, x):
        """A float constant of the current type (a splat in vector mode)."""
        if isinstance(self.ftype, ir.VectorType):
            return Splat(self.ftype, float(x))
        return ir.Constant(self.ftype, float(x))

    def splat(self, value):
        if not isinstance(self.ftype, ir.VectorType) or isinstance(value.type, ir.VectorType):
            return value
        return self.splat_int(value, self.ftype.count)

    # ---- integers ----------------------------------------------------------------------
    def size(self, name):
        if name not in self.sizes:
            k = self.m.size_names.index(name)
            with self.b.goto_entry_block():
                slot = self.b.gep(self.fn.args[0], [ir.Constant(I64, k)], inbounds=True, source_etype=I64)
                self.sizes[name] = self.b.load(slot, typ=I64)
        return self.sizes[name]

    # Index arithmetic folds constants as it is emitted: unrolled register tiles put
    # lane and row numbers into the index expressions, and `add i64 0, %x`, once a
    # fifth of LeNet-5's instructions, costs Python time to emit and LLVM time to parse.
    def iadd(self, x, y):
        cx, cy = _int_constant(x), _int_constant(y)
        if cx is not None and cy is not None:
            return ir.Constant(I64, cx + cy)
        if cx == 0:
            return y
        return x if cy == 0 else self.b.add(x, y)

    def imul(self, x, y):
        cx, cy = _int_constant(x), _int_constant(y)
        if cx is not None and cy is not None:
            return ir.Constant(I64, cx * cy)
        if cx == 1:
            return y
        return x if cy == 1 else self.b.mul(x, y)

    def int_expr(self, e, env):
        """An integer (index or size) expression as i64."""
        e = sympy.sympify(e)
        b = self.b
        if e.is_Integer:
            return ir.Constant(I64, int(e))
        if e.is_Symbol:
            return env[e] if e in env else self.size(str(e))
        if e.is_Add:
            # The constant terms (the offset, a lane's number from env) added once, last.
            terms = [self.int_expr(a, env) for a in e.args]
            constant = ir.Constant(I64, sum(_int_constant(t) or 0 for t in terms))
            return functools.reduce(self.iadd, [t for t in terms if _int_constant(t) is None] + [constant])
        if e.is_Mul:
            out = self.int_expr(e.args[0], env)
            for a in e.args[1:]:
                out = self.imul(out, self.int_expr(a, env))
            return out
        if e.is_Pow and e.exp.is_Integer and e.exp > 0:     # N**2: the size of x @ x.T
            base = out = self.int_expr(e.base, env)
            for _ in range(int(e.exp) - 1):
                out = b.mul(out, base)
            return out
        if isinstance(e, (fdiv, sympy.Mod)) and self.nonnegative(e.args[0]) and e.args[1].is_Integer \
                and e.args[1] > 0:   # the common case: plain unsigned division (a shift for 2)
            num, den = self.int_expr(e.args[0], env), self.int_expr(e.args[1], env)
            return b.udiv(num, den) if isinstance(e, fdiv) else b.urem(num, den)
        if isinstance(e, fdiv):          # floor division, also for negative numerators
            num, den = self.int_expr(e.args[0], env), self.int_expr(e.args[1], env)
            q, r = b.sdiv(num, den), b.srem(num, den)
            fix = b.and_(b.icmp_signed("!=", r, ir.Constant(I64, 0)), b.icmp_signed("<", num, ir.Constant(I64, 0)))
            return b.sub(q, b.zext(fix, I64))
        if isinstance(e, sympy.Mod):     # floor modulo
            num, den = self.int_expr(e.args[0], env), self.int_expr(e.args[1], env)
            r = b.srem(num, den)
            neg = b.icmp_signed("<", r, ir.Constant(I64, 0))
            return b.select(neg, b.add(r, den), r)
        raise NotImplementedError(f"index expression {e}")

    def nonnegative(self, e):
        span = _interval(e, self.ranges)
        return span is not None and bool(sympy.sympify(span[0]).is_nonnegative)

    def needed(self, guards):
        """The guards interval analysis cannot prove (`fdiv(h, 2) < 5` for h < 10 is not)."""
        out = []
        for g in guards:
            span = _interval(sympy.expand(g.lhs - g.rhs), self.ranges)
            lo, hi = (None, None) if span is None else map(sympy.sympify, span)
            proven = span is not None and (
                isinstance(g, sympy.GreaterThan) and lo.is_nonnegative
                or isinstance(g, sympy.StrictGreaterThan) and lo.is_positive
                or isinstance(g, sympy.LessThan) and hi.is_nonpositive
                or isinstance(g, sympy.StrictLessThan) and hi.is_negative)
            if not proven:
                out.append(g)
        return tuple(out)

    def dim(self, d):
        """A tensor dimension, computed once at the kernel's entry."""
        key = sympy.sympify(d)
        if key.is_Integer:
            return ir.Constant(I64, int(key))
        if key not in self.dims:
            # The sizes first: goto_entry_block does not nest (llvmlite returns to the
            # end of the block it left, past the entry block's branch).
            for size in sorted(map(str, key.free_symbols)):
                self.size(size)
            with self.b.goto_entry_block():
                self.dims[key] = self.int_expr(key, {})
        return self.dims[key]

    def condition(self, g, env):
        if isinstance(g, sympy.And):
            parts = [self.condition(a, env) for a in g.args]
            if self.vector and any(isinstance(p.type, ir.VectorType) for p in parts):
                parts = [p if isinstance(p.type, ir.VectorType) else self.splat_int(p, self.vector[2])
                         for p in parts]
            out = parts[0]
            for p in parts[1:]:
                out = self.b.and_(out, p)
            return out
        ops = {sympy.Eq: "==", sympy.Ne: "!=", sympy.Lt: "<", sympy.Le: "<=", sympy.Gt: ">", sympy.Ge: ">="}
        if self.vector and self.vector[0] in g.free_symbols:
            return self.lane_condition(g, env, ops[type(g)])
        return self.b.icmp_signed(ops[type(g)], self.int_expr(g.lhs, env), self.int_expr(g.rhs, env))

    def lane_condition(self, g, env, op):
        """A guard on the vectorized index, per lane: (lhs - rhs) at lane k is its value
        at the first lane plus slope * k, the slope being +-1 (see `vectorizable`)."""
        variable, first, lanes = self.vector
        b = self.b
        difference = sympy.expand(g.lhs - g.rhs)
        slope = int(sympy.diff(difference, variable))
        at_first = self.int_expr(difference, {**env, variable: as_i64(first)})
        steps = ir.Constant(ir.VectorType(I64, lanes), [slope * k for k in range(lanes)])
        values = b.add(self.splat_int(at_first, lanes), steps)
        return b.icmp_signed(op, values, self.splat_int(ir.Constant(I64, 0), lanes))

    # ---- loops -------------------------------------------------------------------------
    @contextmanager
    def loop(self, extent, name="i", start=None, step=None):
        """for (i = start; i < extent; i += step): yields i. The one place with a phi node."""
        b = self.b
        pre = b.block
        head = self.fn.append_basic_block(f"{name}.head")
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(start if start is not None else ir.Constant(I64, 0), pre)
        b.cbranch(b.icmp_signed("<", i, extent), body, done)
        b.position_at_end(body)
        yield i
        nxt = b.add(i, step if step is not None else ir.Constant(I64, 1), flags=["nsw", "nuw"])
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)

    # ---- memory ------------------------------------------------------------------------
    def address(self, tensor, index, env):
        shape = self.m.tensors[tensor].shape
        offset = ir.Constant(I64, 0)
        for k, (e, d) in enumerate(zip(index, shape)):
            i = self.int_expr(e, env)
            if not self.known_in_bounds(e, d):
                hi = self.b.sub(self.dim(d), ir.Constant(I64, 1))
                i = self.b.select(self.b.icmp_signed("<", i, ir.Constant(I64, 0)), ir.Constant(I64, 0), i)
                i = self.b.select(self.b.icmp_signed(">", i, hi), hi, i)
            stride = self.stride(shape, k)
            offset = self.iadd(offset, self.imul(i, stride) if stride is not None else i)
        etype = I32 if self.m.tensors[tensor].dtype == "i32" else self.m.float
        return self.b.gep(self.pointers[tensor], [offset], inbounds=True, source_etype=etype), etype

    def stride(self, shape, k):
        rest = shape[k + 1:]
        if not rest:
            return None
        return self.dim(sympy.Mul(*[sympy.sympify(d) for d in rest]))

    def in_bounds(self, tensor, index, env):
        """i1: every index of this read lies inside the tensor (for zero padding)."""
        shape = self.m.tensors[tensor].shape
        ok = None
        for e, d in zip(index, shape):
            if self.known_in_bounds(e, d):
                continue
            i = self.int_expr(e, env)
            c = self.b.and_(self.b.icmp_signed(">=", i, ir.Constant(I64, 0)),
                            self.b.icmp_signed("<", i, self.dim(d)))
            ok = c if ok is None else self.b.and_(ok, c)
        return ok

    def known_in_bounds(self, e, dim):
        """In bounds by interval analysis, or by guards already enforced as loop bounds."""
        e, dim = sympy.sympify(e), sympy.sympify(dim)
        span = _interval(e, self.ranges)
        lo = (span is not None and bool(sympy.sympify(span[0]).is_nonnegative)) or e in self.facts_lo
        hi = (span is not None and bool((dim - 1 - span[1]).is_nonnegative)) or (e, dim) in self.facts_hi
        return lo and hi

    def read(self, access, env):
        if self.vector and any(self.vector[0] in sympy.sympify(e).free_symbols for e in access.index):
            return self.vector_read(access, env)
        if self.vector:                      # the same value in every lane
            saved = self.vector, self.ftype
            self.vector, self.ftype = None, self.m.float
            value = self.read(access, env)
            self.vector, self.ftype = saved
            return self.splat(value)
        ptr, etype = self.address(access.tensor, access.index, env)
        value = self.b.load(ptr, typ=etype)
        if etype == I32:
            value = self.b.sitofp(value, self.m.float)
        ok = self.in_bounds(access.tensor, access.index, env)
        if ok is not None:
            value = self.b.select(ok, value, ir.Constant(self.m.float, 0.0))
        return value

    def vector_read(self, access, env):
        """Lanes j..j+V-1 of a row, by a masked load: lanes outside the tensor (zero
        padding, the row's tail) are never touched and read as 0."""
        variable, first, lanes = self.vector
        b, shape = self.b, self.m.tensors[access.tensor].shape
        env = {**env, variable: as_i64(first)}
        if self.packed and access == self.packed[0]:     # B[i, j] from the panel's copy
            _, copy, base = self.packed
            chunk = b.udiv(b.sub(as_i64(first), base), ir.Constant(I64, lanes))
            at = b.add(b.mul(self.int_expr(access.index[0], env), ir.Constant(I64, len(self.columns))),
                       chunk)
            vtype = ir.VectorType(self.m.float, lanes)
            return b.load(b.gep(copy, [at], inbounds=True, source_etype=vtype), typ=vtype, align=64)
        # Every s-th element of the row (2*x + kx): s vectors' worth loaded, only the
        # elements the lanes take enabled in the mask, then picked out by a shuffle.
        stride = lane_stride(access.index[-1], variable) or 1
        width = lanes * stride
        offset, mask = ir.Constant(I64, 0), None
        for k, (e, d) in enumerate(zip(access.index, shape)):
            i = self.int_expr(e, env)
            step = self.stride(shape, k)
            offset = self.iadd(offset, self.imul(i, step) if step is not None else i)
            if k == len(shape) - 1:
                rate = lane_step(sympy.sympify(e), variable)
                iota = ir.Constant(ir.VectorType(I64, width), list(range(width)))
                lane = b.add(self.splat_int(i, width), iota)
                ok = b.and_(b.icmp_signed(">=", lane, self.splat_int(ir.Constant(I64, 0), width)),
                            b.icmp_signed("<", lane, self.splat_int(self.dim(d), width)))
                if stride > 1:
                    taken = ir.Constant(ir.VectorType(I1, width), [m % stride == 0 for m in range(width)])
                    ok = b.and_(ok, taken)
            elif not self.known_in_bounds(e, d):
                ok = b.and_(b.icmp_signed(">=", i, ir.Constant(I64, 0)), b.icmp_signed("<", i, self.dim(d)))
                ok = self.splat_int(ok, width)
            else:
                continue
            mask = ok if mask is None else b.and_(mask, ok)
        integer = self.m.tensors[access.tensor].dtype == "i32"
        etype, suffix = (I32, "i32") if integer else (self.m.float, self.m.suffix)
        vtype = ir.VectorType(etype, width)
        ptr = b.gep(self.pointers[access.tensor], [offset], source_etype=etype)
        load = self.m.declare(f"llvm.masked.load.v{width}{suffix}.p0", vtype,
                              [PTR, I32, ir.VectorType(I1, width), vtype])
        value = b.call(load, [ptr, ir.Constant(I32, 4), mask, Splat(vtype, 0)])
        if stride > 1:
            picks = ir.Constant(ir.VectorType(I32, lanes), [stride * l for l in range(lanes)])
            value = b.shuffle_vector(value, value, picks)
        elif rate > 1:
            # fdiv(var + c, rate): lane l holds element (first + c + l) // rate, first
            # being a multiple of the vector width: each loaded element `rate` times.
            c = int(sympy.expand(sympy.sympify(access.index[-1]).args[0] - variable))
            spread = [(c + l) // rate - c // rate for l in range(lanes)]
            value = b.shuffle_vector(value, value, ir.Constant(ir.VectorType(I32, lanes), spread))
        return b.sitofp(value, self.ftype) if integer else value

    def splat_int(self, value, lanes):
        """Any scalar in every lane (a constant stays one: no instructions to emit)."""
        if type(value) is ir.Constant and not isinstance(value.type, ir.VectorType):
            return Splat(ir.VectorType(value.type, lanes), value.constant)
        undef = Splat(ir.VectorType(value.type, lanes), ir.Undefined)
        one = self.b.insert_element(undef, value, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, undef, Splat(ir.VectorType(I32, lanes), 0))

    # ---- scalar bodies -----------------------------------------------------------------
    def value(self, e, env, reads, memo):
        if e in memo:
            return memo[e]
        v = self._value(e, env, reads, memo)
        memo[e] = v
        return v

    def _value(self, e, env, reads, memo):
        b = self.b
        const = self.const
        val = lambda x: self.value(x, env, reads, memo)
        if e in self.preloaded:
            return self.preloaded[e]
        if e in reads:
            return self.read(reads[e], env)
        if e.is_Number:
            return const(e)
        integer = e.is_integer and all(x.is_integer for x in e.free_symbols)
        if self.vector and self.vector[0] in e.free_symbols and integer:
            # Index arithmetic in the vector index (`Mod(w, 2)`): its value in each lane.
            variable, first, lanes = self.vector
            values = Splat(ir.VectorType(I64, lanes), ir.Undefined)
            for lane in range(lanes):
                at = self.int_expr(e, {**env, variable: b.add(as_i64(first), ir.Constant(I64, lane))})
                values = b.insert_element(values, at, ir.Constant(I32, lane))
            return b.sitofp(values, self.ftype)
        if not e.is_Symbol and integer:
            # Index arithmetic in a body (a pooling window position): exact, in i64.
            return self.splat(b.sitofp(self.int_expr(e, env), self.m.float))
        if e.is_Symbol:
            return self.splat(b.sitofp(env[e] if e in env else self.size(str(e)), self.m.float))
        if e.is_Add:
            out = val(e.args[0])
            for a in e.args[1:]:
                out = b.fadd(out, val(a), flags=FAST)
            return out
        if e.is_Mul:
            num = [a for a in e.args if not (a.is_Pow and a.exp.is_Number and a.exp < 0)]
            den = [a.base ** -a.exp for a in e.args if a.is_Pow and a.exp.is_Number and a.exp < 0]
            out = val(num[0]) if num else const(1)
            for a in num[1:]:
                out = b.fmul(out, val(a), flags=FAST)
            if den:
                d = val(sympy.Mul(*den))
                out = b.fdiv(out, d, flags=EXACT_DIVISION if _has_root(den) else FAST)
            return out
        if e.is_Pow:
            return self.power(e, val, const)
        fn = type(e)
        args = [val(a) for a in e.args]
        if fn is sympy.exp:
            return self.m.exp(b, args[0])
        if fn is sympy.log:
            return self.m.log(b, args[0])
        if fn is sympy.tanh:
            return self.tanh(args[0])
        return self.custom(fn, args, const)

    def power(self, e, val, const):
        b = self.b
        base, exp = e.args
        sqrt = self.m.intrinsic("sqrt", 1, self.ftype)
        if exp == sympy.Rational(1, 2):
            return b.call(sqrt, [val(base)])
        if exp == sympy.Rational(-1, 2):
            return b.fdiv(const(1), b.call(sqrt, [val(base)]))
        if exp.is_Number and exp.is_finite and abs(exp) <= MAX_SQUARINGS and float(exp).is_integer():
            return self.integer_power(val(base), int(exp), const)    # also 3.0: exact signs
        return self.m.pow(b, val(base), val(exp))

    def integer_power(self, x, n, const):
        """x^n by repeated squaring: log2|n| multiplications, and a negative x keeps its
        sign for odd n on every target (PTX's pow is ex2(y lg2 x), NaN for x < 0)."""
        b = self.b
        if n == 0:
            return const(1)
        out, square, k = None, x, abs(n)
        while k:
            if k & 1:
                out = square if out is None else b.fmul(out, square, flags=FAST)
            k >>= 1
            if k:
                square = b.fmul(square, square, flags=FAST)
        return b.fdiv(const(1), out) if n < 0 else out

    def tanh(self, x):
        # tanh(x) = 1 - 2 / (exp(2x) + 1): inlinable and vectorizable, exact at +-inf.
        # Near 0 it cancels (float32's tanh(1e-6) was 0.95e-6); there the series
        # x - x^3/3 + 2x^5/15 - 17x^7/315 is exact to about an ulp.
        b, one, two = self.b, self.const(1.0), self.const(2.0)
        e = self.m.exp(b, b.fmul(x, two))
        formula = b.fsub(one, b.fdiv(two, b.fadd(e, one)))
        x2 = b.fmul(x, x)
        series = b.fmul(x, self.polynomial(x2, (1.0, -1 / 3, 2 / 15, -17 / 315)))
        return self.near_zero(x, 0.2, 0.02, series, formula)

    def expm1(self, x):
        """exp(x) - 1 without its cancellation near 0 (float32's elu(-1e-6) was 1.3% off):
        there the Taylor series to x^7, exact to about an ulp."""
        b = self.b
        formula = b.fsub(self.m.exp(b, x), self.const(1.0))
        coefficients = [1 / math.factorial(k) for k in range(1, 8)]
        return self.near_zero(x, 0.3, 0.02, b.fmul(x, self.polynomial(x, coefficients)), formula)

    def log1p(self, x):
        """log(1 + x) for x >= 0 to a few ulps however small x is: log(u) * x / (u - 1)
        with u = 1 + x corrects u's rounding (Goldberg); x itself where u rounds to 1."""
        b, one = self.b, self.const(1.0)
        u = b.fadd(one, x)
        corrected = b.fmul(self.m.log(b, u), b.fdiv(x, b.fsub(u, one)))
        return b.select(b.fcmp_ordered("==", u, one), x, corrected)

    def polynomial(self, x, coefficients):
        """c0 + c1 x + c2 x^2 + ... by Horner's rule."""
        out = self.const(coefficients[-1])
        for c in reversed(coefficients[:-1]):
            out = self.b.fadd(self.b.fmul(out, x), self.const(c))
        return out

    def near_zero(self, x, cutoff32, cutoff64, series, formula):
        """series where |x| is below the cutoff for this float type, else formula."""
        cutoff = self.const(cutoff32 if isinstance(self.m.float, ir.FloatType) else cutoff64)
        fabs = self.m.intrinsic("fabs", 1, self.ftype)
        return self.b.select(self.b.fcmp_ordered("<", self.b.call(fabs, [x]), cutoff), series, formula)

    def custom(self, fn, args, const):
        b = self.b
        zero, one = const(0), const(1)
        gt = lambda x, y: b.fcmp_ordered(">", x, y)
        ge = lambda x, y: b.fcmp_ordered(">=", x, y)
        nan_or_gt = lambda x, y: b.fcmp_unordered(">", x, y)     # keeps NaN flowing
        if fn is F.relu:
            return b.select(nan_or_gt(args[0], zero), args[0], zero)
        if fn is F.step:
            return b.select(gt(args[0], zero), one, zero)
        if fn is F.ge:
            return b.select(ge(args[0], args[1]), one, zero)
        if fn is F.eq:
            return b.select(b.fcmp_ordered("==", args[0], args[1]), one, zero)
        if fn is F.sgn:
            return b.select(gt(args[0], zero), one, b.select(b.fcmp_ordered("<", args[0], zero), const(-1), zero))
        if fn is F.absval:
            return b.call(self.m.intrinsic("fabs", 1, self.ftype), args)
        if fn is F.maximum:        # NaN in either operand gives NaN, as in NumPy
            return b.call(self.m.intrinsic("maximum", 2, self.ftype), args)
        if fn is F.minimum:
            return b.call(self.m.intrinsic("minimum", 2, self.ftype), args)
        if fn is F.sigmoid:
            # 1 / (1 + exp(-z)): exp overflows to inf for very negative z, giving 0.
            e = self.m.exp(b, b.fneg(args[0]))
            return b.fdiv(one, b.fadd(one, e))
        if fn is F.leaky_relu:
            return b.select(nan_or_gt(args[0], zero), args[0], b.fmul(args[1], args[0]))
        if fn is F.elu:
            return b.select(nan_or_gt(args[0], zero), args[0], b.fmul(args[1], self.expm1(args[0])))
        if fn is F.softplus:
            z = args[0]
            pos = b.select(nan_or_gt(z, zero), z, zero)
            e = self.m.exp(b, b.fneg(b.call(self.m.intrinsic("fabs", 1, self.ftype), [z])))
            return b.fadd(pos, self.log1p(e))
        raise NotImplementedError(f"no code generation for {fn}")

    def alloca(self, typ):
        """Stack slots live in the entry block, so mem2reg turns them into registers."""
        with self.b.goto_entry_block():
            return self.b.alloca(typ)

    # ---- points ------------------------------------------------------------------------
    def enter(self, c):
        """Start emitting nest c: its loop ranges, no facts yet; returns the guards left
        to check (interval analysis runs once per nest)."""
        self.ranges = loop_ranges(c, self.m.tensors)
        self.facts_lo, self.facts_hi = set(), set()
        if id(c) not in self.guards:
            self.guards[id(c)] = self.needed(c.guards)
        return self.guards[id(c)]

    def loops(self, variables, env, body, guards=()):
        """Nested loops; guards linear in a loop variable become that loop's bounds."""
        if not variables:
            return body(env, guards)
        v = variables[0]
        start, stop, guards = self.bounds(v, env, guards)
        with self.loop(stop, str(v), start) as i:
            self.loops(variables[1:], {**env, v: i}, body, guards)

    def bounds(self, v, env, guards):
        """(start, stop, remaining guards) for loop v: Halide-style bounds inference."""
        b = self.b
        start, stop = ir.Constant(I64, 0), self.dim(self.ranges[v])
        remaining = []
        for g in guards:
            bound = _linear_bound(g, v, set(env) | set(map(sympy.Symbol, self.m.size_names)))
            if bound is None:
                remaining.append(g)
                continue
            kind, expr = bound
            value = self.int_expr(expr, env)
            if kind == "lower":
                start = b.select(b.icmp_signed(">", value, start), value, start)
            else:
                stop = b.select(b.icmp_signed("<", value, stop), value, stop)
            if isinstance(g, sympy.GreaterThan) and g.rhs == 0:
                self.facts_lo.add(g.lhs)
            if isinstance(g, sympy.StrictLessThan):
                self.facts_hi.add((g.lhs, g.rhs))
        return start, stop, tuple(remaining)

    def term(self, c, env, guards):
        """The body at one point, zero where a remaining guard fails."""
        value = self.value(c.body, env, c.accesses, {})
        if guards:
            ok = self.condition(sympy.And(*guards), env)
            value = self.b.select(ok, value, self.const(0.0))
        return value

    def store(self, c, env, value):
        ptr, etype = self.address(c.out, c.index, env)
        if c.accumulate:
            value = self.b.fadd(self.b.load(ptr, typ=etype), value, flags=FAST)
        self.b.store(value, ptr)

    def point(self, c, env, guards):
        """One output element: map, or a reduction with a register accumulator."""
        if c.reduce is None:
            return self.store(c, env, self.term(c, env, guards))
        f = self.m.float
        acc = self.alloca(f)
        start = float("-inf") if c.reduce == "max" else 0.0
        self.b.store(ir.Constant(f, start), acc)
        where = self.alloca(I64) if c.argmax else None
        if where is not None:
            self.b.store(ir.Constant(I64, 0), where)

        def body(env, guards):
            v = self.term(c, env, guards)
            old = self.b.load(acc, typ=f)
            if c.reduce == "sum":
                self.b.store(self.b.fadd(old, v, flags=FAST), acc)
                return
            better = self.maximum_wins(v, old)
            self.b.store(self.b.select(better, v, old), acc)
            if where is not None:       # the position the gradient routes to, from the loop indices
                position = self.int_expr(c.window_position, env)
                self.b.store(self.b.select(better, position, self.b.load(where, typ=I64)), where)
        self.loops(list(c.rindex), env, body, guards)
        self.store(c, env, self.b.load(acc, typ=f))
        if where is not None:
            self.store_argmax(c, env, self.b.load(where, typ=I64))

    def maximum_wins(self, v, old):
        """Whether v replaces the running maximum old: when greater, or NaN while old is
        not; so the first maximum wins ties and the first NaN stays (NumPy's max and
        argmax). A NaN first in a window was lost when only `v > old or unordered` decided."""
        return self.b.and_(self.b.fcmp_unordered(">", v, old), self.b.fcmp_ordered("ord", old, old))

    def store_argmax(self, c, env, position):
        ptr, _ = self.address(c.argmax, c.index, env)
        self.b.store(self.b.trunc(position, I32), ptr)


def _has_root(factors):
    """Whether some factor is a square root (a power with exponent 1/2)."""
    return any(f.is_Pow and f.exp == sympy.Rational(1, 2) for f in factors)


def as_i64(value):
    """An int or an i64 value as an i64 value."""
    return value if isinstance(value, ir.Value) else ir.Constant(I64, value)


def _int_constant(value):
    """The number an i64 value stands for when it is a constant, else None."""
    return value.constant if type(value) is ir.Constant and value.type == I64 else None


def _interval(e, ranges):
    """(lo, hi) of an integer index expression over the loop ranges, or None."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return e, e
    if e.is_Symbol:
        if e in ranges:
            return sympy.Integer(0), sympy.sympify(ranges[e]) - 1
        return e, e                       # a size symbol
    if e.is_Add:
        parts = [_interval(a, ranges) for a in e.args]
        if None in parts:
            return None
        return sum((p[0] for p in parts), sympy.Integer(0)), sum((p[1] for p in parts), sympy.Integer(0))
    if e.is_Mul and len(e.args) == 2 and e.args[0].is_Integer:
        inner = _interval(e.args[1], ranges)
        if inner is None:
            return None
        k = e.args[0]
        return (k * inner[0], k * inner[1]) if k >= 0 else (k * inner[1], k * inner[0])
    if isinstance(e, sympy.Mod) and e.args[1].is_Integer:
        return sympy.Integer(0), e.args[1] - 1
    if isinstance(e, fdiv) and e.args[1].is_Integer:
        inner = _interval(e.args[0], ranges)
        if inner is None or not (inner[0].is_Integer and inner[1].is_Integer):
            return None
        return inner[0] // e.args[1], inner[1] // e.args[1]
    return None


def _linear_bound(g, v, bound_symbols):
    """A guard `a*v + rest (>=|>|<=|<) 0` with a = +-1 and rest known outside the loop,
    as ("lower", first v allowed) or ("upper", first v excluded); else None."""
    kinds = (sympy.GreaterThan, sympy.StrictGreaterThan, sympy.LessThan, sympy.StrictLessThan)
    if not isinstance(g, kinds):
        return None
    L = sympy.expand(g.lhs - g.rhs)
    if v not in L.free_symbols or L.has(fdiv, sympy.Mod):
        return None
    a = sympy.diff(L, v)
    rest = sympy.expand(L - a * v)
    if a not in (1, -1) or not rest.free_symbols <= bound_symbols:
        return None
    # Normalise to L >= 0 (Ge), L >= 1 (Gt), L <= 0 (Le), L <= -1 (Lt).
    if isinstance(g, (sympy.GreaterThan, sympy.StrictGreaterThan)):
        low = 0 if isinstance(g, sympy.GreaterThan) else 1          # a*v + rest >= low
        return ("lower", low - rest) if a == 1 else ("upper", rest - low + 1)
    high = 0 if isinstance(g, sympy.LessThan) else -1                # a*v + rest <= high
    return ("upper", high - rest + 1) if a == 1 else ("lower", rest - high)
