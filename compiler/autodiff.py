"""Reverse-mode differentiation of the forward loop nests, with sympy.

For a loop nest  out[I] = REDUCE_R body(..., A[f(I, R)], ...)  and an upstream
gradient dout, the contribution to dA is

    dA[a] += SUM over (I, R) with f(I, R) = a  of  dout[I] * d body / d A[f(I, R)]

The local derivative is `sympy.diff` of the body by the access symbol. The index map is
derived by solving the affine access f(I, R) = a for loop variables, one dimension at a
time: a plain variable becomes the new index (dW[i, j] from W[i, j]); `s*y + ky - p = h`
is solved for the output variable y, with a range guard and, for strides, a
divisibility guard (the flipped, strided correlation of a convolution's input
gradient); variables left unsolved are summed over (batch sums, broadcasting). A max
reduction multiplies by [position == argmax], routing to the first maximum. The same
rule serves every op, built-in or user-defined; ops register a rule only for textbook
simplifications (softmax + cross-entropy) and for relayouts whose maps use // and %.
"""
from dataclasses import dataclass

import sympy

from . import functions as F
from .errors import SymnetError
from .index_ir import (Access, Comprehension, IRError, TensorInfo, access_symbol, fdiv,
                       verify)


def grad_name(tensor):
    return f"grad:{tensor}"


@dataclass
class Backward:
    """The backward program: loop nests writing `grad:T` buffers, seeded by dloss = 1."""
    comps: list
    tensors: dict          # the gradient buffers' TensorInfos
    grads: dict            # tensor -> its gradient buffer, for every differentiated tensor
    loss: str


def differentiate(model, wrt=None, simplify=True):
    """The backward loop nests of `model.loss` with respect to `wrt` (default: params)."""
    if model.loss is None:
        raise SymnetError("the model has no loss statement, so there is nothing to differentiate")
    wrt = list(model.params) if wrt is None else list(wrt)
    active = _active_tensors(model, set(wrt))
    tensors, comps, written = {}, [], set()

    def grad_of(t):
        g = grad_name(t)
        tensors.setdefault(g, TensorInfo(g, model.tensors[t].shape, "f32", "grad"))
        return g

    def append(comp):
        comp.accumulate = comp.out in written
        written.add(comp.out)
        comps.append(comp)

    append(Comprehension(grad_of(model.loss), (), sympy.Integer(1), {}, group=model.loss))
    for c in reversed(model.forward):
        if c.out not in active or grad_name(c.out) not in written:
            continue
        rule = model.custom_vjps.get(c.out)
        if rule and (simplify or rule.always):
            for target, comp in rule.rule(grad_name(c.out), grad_of):
                if target in active:
                    comp.group = c.group
                    append(comp)
            continue
        for symbol, access in c.accesses.items():
            if access.tensor in active and access.tensor != c.out:
                comp = adjoint(c, symbol, access, grad_name(c.out), grad_of(access.tensor),
                               model.tensors)
                if comp is not None:
                    append(comp)
    for t in wrt:                       # parameters the loss does not depend on: zero
        if grad_name(t) not in written:
            append(Comprehension(grad_of(t), _fresh_index(len(model.tensors[t].shape)),
                                 sympy.Integer(0), {}))
    verify(comps, {**model.tensors, **tensors})
    return Backward(comps, tensors, {t: grad_name(t) for t in active | set(wrt)
                                     if grad_name(t) in written}, model.loss)


def _active_tensors(model, wrt):
    """Tensors on a path from a differentiated tensor to the loss."""
    depends = set(wrt)
    for c in model.forward:
        if any(r in depends for r in c.reads):
            depends.add(c.out)
    needed = {model.loss}
    for c in reversed(model.forward):
        if c.out in needed:
            needed.update(c.reads)
    return (depends & needed) | (set(wrt) & needed)


def _fresh_index(rank):
    return tuple(sympy.Symbol(f"i{k}", integer=True) for k in range(rank))


_FRESH = ["h", "w", "u", "v", "p", "q", "r", "s", "t"]


def adjoint(c, symbol, access, dout, target, tensors):
    """The loop nest adding this access's share of dout into `target` (dA)."""
    local = sympy.diff(c.body, symbol)
    if local == 0:
        return None
    reads = dict(c.accesses)
    if c.reduce is None and not (c.body.is_Symbol or c.body.is_Number) and c.body.has(*reads):
        out_symbol = access_symbol(c.out)
        replaced = in_terms_of_output(local, c.body, out_symbol)
        if replaced != local:
            local = replaced
            reads[out_symbol] = Access(c.out, c.index)
    dout_symbol = access_symbol(dout)
    reads[dout_symbol] = Access(dout, c.index)
    term = dout_symbol * local
    if c.reduce == "max":
        arg_symbol = access_symbol(c.argmax)
        reads[arg_symbol] = Access(c.argmax, c.index)
        term = term * F.eq(arg_symbol, c.window_position)

    extents = dict(zip(c.index, tensors[c.out].shape)) | dict(zip(c.rindex, c.rextent))
    new_index, solution, guards = solve_access(access.index, tensors[access.tensor].shape,
                                               list(c.index) + list(c.rindex), extents)
    remaining = tuple(v for v in list(c.index) + list(c.rindex) if v not in solution)
    term = term.xreplace(solution)
    used = term.free_symbols
    new_reads = {s: Access(a.tensor, tuple(sympy.sympify(i).xreplace(solution) for i in a.index))
                 for s, a in reads.items() if s in used}
    return Comprehension(target, tuple(new_index), term, new_reads,
                         "sum" if remaining else None, remaining,
                         tuple(extents[v] for v in remaining), tuple(guards), group=c.group)


def in_terms_of_output(local, body, out):
    """A map's local derivative reading its stored output `out` where it can: s (1 - s)
    where it repeats the body (a sigmoid), and relu's step(z) as step(out), since
    relu(z) > 0 exactly where z > 0: the textbook's "1 where h > 0", read from h
    instead of recomputing z."""
    local = local.subs(body, out)
    if isinstance(body, F.relu):
        local = local.subs(F.step(body.args[0]), F.step(out))
    return local


def solve_access(index, shape, variables, extents):
    """Invert an affine access `A[index]` for the loop variables.

    Returns (new index variables of A, {loop variable: expression}, guards)."""
    taken = {str(v) for v in variables}
    fresh = (sympy.Symbol(n, integer=True) for n in _FRESH + [f"a{k}" for k in range(16)]
             if n not in taken)
    new_index, solution, guards = [], {}, []
    for dim, f in zip(shape, index):
        f = sympy.sympify(f).xreplace(solution)
        if f.is_Symbol and f in variables and f not in solution:
            new_index.append(f)
            solution[f] = f
            if sympy.sympify(extents[f]) != sympy.sympify(dim):
                guards.append(sympy.Lt(f, extents[f]))
            continue
        a = next(fresh)
        new_index.append(a)
        free = [v for v in variables if v in f.free_symbols and v not in solution]
        if not free:
            if not (f.is_Number and dim == 1):
                guards.append(sympy.Eq(f, a))
            continue
        v = _pick_variable(f, free, variables)
        coef = sympy.diff(f, v)
        rest = sympy.expand(f - coef * v)
        if not coef.is_Integer or v in rest.free_symbols or rest.has(fdiv, sympy.Mod):
            raise IRError(f"cannot invert the index {f} (not affine)")
        numerator = a - rest if coef > 0 else rest - a
        step = abs(int(coef))
        digit = _radix_digit(rest, step, free, v, extents) if coef > 0 else None
        if digit is not None:
            # s*y + k = a with 0 <= k < s (pooling with stride = window): one solution,
            # y = (a - c) // s and k = (a - c) % s; no sum, no divisibility guard.
            k, offset = digit
            solution[k] = sympy.Mod(a - offset, step)
            value = fdiv(a - offset, step)
        else:
            value = numerator if step == 1 else fdiv(numerator, step)
            if step != 1:
                guards.append(sympy.Eq(sympy.Mod(numerator, step), 0))
        solution[v] = value
        for g in (sympy.Ge(value, 0), sympy.Lt(value, extents[v])):
            if g is sympy.false:
                raise IRError(f"access {f} never in range")
            if g is not sympy.true:
                guards.append(g)
    return new_index, solution, guards


def _radix_digit(rest, step, free, solved, extents):
    """(k, c) when rest = k + c with k a free variable ranging over exactly 0..step-1 and
    c a constant: then step*solved + k + c is a mixed-radix number, invertible."""
    if step == 1:
        return None
    for k in free:
        if k == solved or sympy.diff(rest, k) != 1:
            continue
        offset = sympy.expand(rest - k)
        if offset.is_Integer and sympy.sympify(extents[k]) == step:
            return k, offset
    return None


def _pick_variable(f, free, variables):
    """Solve for an output index first (keeps kernel offsets as the summed variables)."""
    return max(free, key=lambda v: (abs(sympy.diff(f, v)) if sympy.diff(f, v).is_Number else 0,
                                    -variables.index(v)))
