"""Scheduling: which loops, in which order, fused into which kernels.

Lowering says *what* each loop nest computes; this module only decides loop
structure (Halide's algorithm/schedule split):
  * Kernels: consecutive loop nests over the same leading dimension share one outer
    loop when each reads what the others write only in the same row (bias + ReLU
    epilogue after a matrix product, softmax's four steps, an optimizer update after
    its weight gradient).
  * Loop order inside a row: a sum whose last output index runs along memory in more
    reads than any reduction index accumulates into the output row with that index
    innermost (vectorizable `out[n, j] += x[n, i] * W[i, j]`); otherwise the reduction
    is innermost with a register accumulator (`dx[n, i] = sum_j g[n, j] * W[i, j]`).
  * A max over a window (pooling) runs "outer" too when its row vectorizes: each lane
    its own window, the maximum and its position kept in vector registers.
  * Vector lanes along a reduction ("wide", CPU only): when the output row is too short
    to fill a vector (a 5-wide filter's weight gradient) or the reduction is innermost
    anyway, the sum runs with vector accumulators along a unit-stride reduction index,
    `tile` neighbouring outputs at once sharing each load, summed across lanes at the end.
  * Vector lanes along an outer output index ("across", CPU only): a convolution
    whose rows fill a vector's lanes clearly worse than its filters do (16 filters,
    rows of 10) runs with the lanes along the filters, the weights packed
    filter-minor and the input broadcast (see `_across`).
  * Register epilogues (CPU): maps that read a row reduction's output only at their own
    point (a bias + ReLU, an optimizer update after its weight gradient) are applied to
    the accumulators before they are stored; a gradient that nothing else reads is then
    never written to memory at all (see `keep_stores`).
"""
from dataclasses import dataclass, field
from functools import lru_cache

import sympy

from .index_ir import fdiv


@dataclass
class Nest:
    comp: object
    strategy: str                 # "map" | "inner" (register accumulator) | "outer" | "wide" | "across"
    along: object = None          # wide: the reduction index in vector lanes; across: the output index
    tile: int = 1                 # wide: outputs along the last index computed together
    epilogue: list = field(default_factory=list)   # maps applied to each output in registers
    store: bool = True            # False: comp.out lives only in registers (read by the epilogue)

    @property
    def comps(self):
        return [self.comp] + self.epilogue

    @property
    def buffers(self):
        return list(dict.fromkeys(t for c in self.comps for t in c.buffers))

    @property
    def loops_key(self):
        """The nest's loops and what they compute, whether or not comp.out is stored."""
        return (id(self.comp), self.strategy, self.along, self.tile, tuple(id(c) for c in self.epilogue))

    @property
    def key(self):
        """What the emitted code depends on: kernels with equal keys are compiled once."""
        return self.loops_key + (self.store,)


@dataclass
class Kernel:
    extent: object                # extent of the shared outer loop, None for 0-d outputs
    nests: list = field(default_factory=list)

    @property
    def writes(self):
        out = set()
        for n in self.nests:
            for c in n.comps:
                out.add(c.out)
                if c.argmax:
                    out.add(c.argmax)
        return out

    @property
    def reads(self):
        return {t for n in self.nests for c in n.comps for t in c.reads}


def schedule(comps, tensors, lanes=None):
    """Kernels for a list of loop nests; lanes: the target's vector width (None: no
    vector schedule, as for PTX, where a thread computes one output)."""
    kernels = []
    for c in comps:
        nest = Nest(c, _strategy(c, tensors))
        if lanes:
            nest = _widen(nest, tensors, lanes)
        # A nest whose only index runs innermost (a column sum) keeps all its loops.
        own_loops = not c.index or (nest.strategy == "outer" and len(c.index) == 1)
        extent = None if own_loops else tensors[c.out].shape[0]
        last = kernels[-1] if kernels else None
        if last is not None and extent is not None and _fusible(last, c, extent):
            last.nests.append(nest)
        else:
            kernels.append(Kernel(extent, [nest]))
    if lanes:
        for kernel in kernels:
            kernel.nests = [_across(n, tensors, lanes) for n in _fold_epilogues(kernel.nests, tensors)]
    return kernels


def lane_use(extent, lanes):
    """The share of vector lanes that work when `extent` values are spread over vectors."""
    return extent / (-(-extent // lanes) * lanes)


ACROSS_PACK_VECTORS = 512     # the packed weights on the stack: 32 KiB of 64-byte vectors


def _across(nest, tensors, lanes):
    """An "outer" sum as "across" (lanes along an outer output index, `along`) where that
    index fills the vector lanes clearly better than the row does: a convolution's 16
    filters against its 10-wide rows (10 of 16 lanes; LeNet-5's c3 forward measured
    about 1.3x, see codegen/llvm.py's across_nest). Only the filter-weight read may
    use the index, as a plain variable with reduction variables only (so every lane's
    element lies inside the weights, packed by gathers); every other read is broadcast.
    The epilogue's reads other than the outputs' own point may use it only as their
    last index (a bias: a contiguous vector)."""
    c = nest.comp
    if nest.strategy != "outer" or c.reduce != "sum" or c.accumulate or c.argmax or c.guards \
            or len(c.index) < 3 or tensors[c.out].dtype == "i32":
        return nest
    ranges = loop_ranges(c, tensors)
    last, steps = c.index[-1], 1
    for e in c.rextent:
        steps = steps * e if isinstance(e, int) and isinstance(steps, int) else None
    if not isinstance(ranges[last], int) or steps is None:
        return nest
    for k, v in enumerate(c.index[1:-1], start=1):
        extent = ranges[v]
        if not isinstance(extent, int) or lane_use(extent, lanes) < 1.2 * lane_use(ranges[last], lanes) \
                or v in c.body.free_symbols or steps * -(-extent // lanes) > ACROSS_PACK_VECTORS:
            continue
        users = [a for a in c.accesses.values() if any(v in sympy.sympify(e).free_symbols for e in a.index)]
        if len(users) != 1 or not _weight_read(users[0], v, c, tensors):
            continue
        if all(_lane_epilogue(e, e.index[k], nest.comps) for e in nest.epilogue):
            return Nest(c, "across", v, epilogue=list(nest.epilogue), store=nest.store)
    return nest


def _weight_read(a, v, c, tensors):
    """a reads a tensor at plain variables: v once, the others reduction variables, each
    over exactly its dimension."""
    shape = [sympy.sympify(d) for d in tensors[a.tensor].shape]
    index = [sympy.sympify(e) for e in a.index]
    extents = dict(zip(c.rindex, c.rextent))
    extents[v] = tensors[c.out].shape[c.index.index(v)]
    if tensors[a.tensor].dtype == "i32" or len(set(index)) != len(index) or v not in index:
        return False
    return all(e.is_Symbol and e in extents and sympy.sympify(extents[e]) == d for e, d in zip(index, shape))


def _lane_epilogue(e, v, comps):
    produced = {x.out for x in comps}
    if v in e.body.free_symbols:
        return False
    for a in e.accesses.values():
        if a.tensor in produced:
            continue
        index = [sympy.sympify(i) for i in a.index]
        if any(v in i.free_symbols for i in index[:-1]) or (index and v in index[-1].free_symbols
                                                             and index[-1] != v):
            return False
    return True


def _fold_epilogues(nests, tensors):
    """Each map that can run on a row reduction's accumulators joins its epilogue."""
    out = []
    for nest in nests:
        last = out[-1] if out else None
        if last is not None and _epilogue_fits(last, nest.comp, tensors):
            last.epilogue.append(nest.comp)
        else:
            out.append(nest)
    return out


def _epilogue_fits(nest, m, tensors):
    """Map m can run on the accumulators of `nest` (an "outer" row reduction in vector
    chunks along its last index, each complete at once in registers): same shape, no
    guards, vectorizable along the same last index; it reads what the nest writes only
    at its own point, and writes nothing the nest reads except where its earlier
    epilogue reads it at that same point."""
    c = nest.comp
    if nest.strategy != "outer" or len(c.index) < 2 or c.accumulate or c.argmax \
            or not vectorizable(c, c.index[-1], c.guards, loop_ranges(c, tensors), tensors) \
            or m.reduce is not None or m.accumulate or m.guards or len(m.index) != len(c.index) \
            or tensors[m.out].dtype == "i32":
        return False
    if [sympy.sympify(d) for d in tensors[m.out].shape] != [sympy.sympify(d) for d in tensors[c.out].shape]:
        return False
    produced = {e.out for e in nest.comps}
    if m.out in produced or m.out in c.reads \
            or not vectorizable(m, m.index[-1], (), loop_ranges(m, tensors), tensors):
        return False
    return _at_own_point(m, produced) and all(_at_own_point(e, {m.out}) for e in nest.epilogue)


def _at_own_point(c, tensors):
    return all(tuple(a.index) == tuple(c.index) for a in c.accesses.values() if a.tensor in tensors)


TRANSIENT = ("value", "grad")       # kinds of buffer whose store may be left out


def keep_stores(kernels_by_entry, observed, tensors):
    """Decide which nests with a register epilogue still store their own output: those
    whose output another nest reads or writes, or the runtime reads back after the entry
    (observed: entry -> names), in any entry where the same nest runs. A weight gradient
    of the train step, consumed by the update in registers, is never written. Returns
    entry -> the outputs left in registers."""
    live = {}
    for entry, kernels in kernels_by_entry.items():
        nests = [n for k in kernels for n in k.nests]
        for n in nests:
            if n.epilogue:
                out = n.comp.out
                elsewhere = any(out in c.buffers for other in nests if other is not n for c in other.comps)
                needed = elsewhere or out in observed[entry] or tensors[out].kind not in TRANSIENT
                live[n.loops_key] = live.get(n.loops_key, False) or needed
    in_registers = {}
    for entry, kernels in kernels_by_entry.items():
        for n in (n for k in kernels for n in k.nests if n.epilogue):
            n.store = live[n.loops_key]
            if not n.store:
                in_registers.setdefault(entry, set()).add(n.comp.out)
    return in_registers


def _fusible(kernel, c, extent):
    if kernel.extent is None or sympy.sympify(kernel.extent) != sympy.sympify(extent):
        return False
    written = kernel.writes
    # c may read rows of the kernel's outputs only in its own row ...
    for a in c.accesses.values():
        if a.tensor in written and (not a.index or a.index[0] != c.index[0]):
            return False
    # ... and must not overwrite what the kernel reads in other rows.
    produced = {c.out} | ({c.argmax} if c.argmax else set())
    for n in kernel.nests:
        for a in n.comp.accesses.values():
            if a.tensor in produced and (not a.index or a.index[0] != n.comp.index[0]):
                return False
    return True


def unit_stride_score(c, var):
    """How many reads (and the write) walk memory contiguously as `var` grows."""
    return contiguous_reads(list(c.accesses.values()) + [_Write(c.out, c.index)], var)


def contiguous_reads(accesses, var):
    """How many of `accesses` walk memory contiguously as `var` grows."""
    score = 0
    for a in accesses:
        if a.index:
            last = sympy.sympify(a.index[-1])
            if last.is_Symbol and last == var or (var in last.free_symbols and sympy.diff(last, var) == 1
                                                  and not last.has(sympy.Mod)):
                score += 1
    return score


@dataclass
class _Write:
    tensor: str
    index: tuple


def _strategy(c, tensors):
    if c.reduce is None:
        return "map"
    if not c.index:
        return "inner"
    if c.reduce == "max":
        # Lanes along the output row compare whole windows at once (pooling: each lane
        # its own window, read every other element); a row max stays scalar.
        along_row = len(c.index) >= 2 and vectorizable(c, c.index[-1], c.guards,
                                                       loop_ranges(c, tensors), tensors)
        return "outer" if along_row else "inner"
    last = c.index[-1]
    best = max(c.rindex, key=lambda r: unit_stride_score(c, r))
    # A read of every s-th element along the row (a strided convolution's input) still
    # fills vector lanes, with one load of s vectors' worth.
    strided = sum(1 for a in c.accesses.values() if a.index and lane_stride(a.index[-1], last))
    out_score, red_score = unit_stride_score(c, last) + strided, unit_stride_score(c, best)
    if len(c.index) == 1:                 # a column sum (db[j] = sum_n g[n, j])
        return "outer" if out_score >= red_score + 2 else "inner"
    # On a tie (convolutions) the output row innermost wins: LLVM keeps a short row of
    # accumulators in registers across the whole reduction (measured 3-4x on LeNet).
    return "outer" if out_score >= red_score else "inner"


def loop_ranges(c, tensors):
    """Extent of every loop variable of a nest: output dims, then reduction extents."""
    ranges = {v: e for v, e in zip(c.index, tensors[c.out].shape)}
    ranges.update(zip(c.rindex, c.rextent))
    return ranges


def vectorizable(c, var, guards, ranges, tensors):
    """Lanes along `var` work: a constant extent; every read walks its last dimension
    with unit stride in var, at half or quarter rate (`fdiv(var + c, 2)`: pooling's
    gradient), at a stride of 2 to 4 (`2*x + kx`: pooling, strided convolutions), or
    does not use var; var appears in the body only in integer index arithmetic
    (evaluated per lane); guards in var are linear, slope +-1."""
    if not isinstance(ranges[var], int) or not _only_in_integer_parts(c.body, var):
        return False
    for g in guards:
        if var in g.free_symbols:
            difference = sympy.expand(g.lhs - g.rhs)
            slope = sympy.diff(difference, var)
            if isinstance(g, (sympy.Eq, sympy.Ne)) or difference.has(fdiv, sympy.Mod) \
                    or slope not in (1, -1):
                return False
    for a in c.accesses.values():
        for k, e in enumerate(a.index):
            e = sympy.sympify(e)
            if var not in e.free_symbols:
                continue
            if k != len(a.index) - 1 or (lane_step(e, var) is None and lane_stride(e, var) is None):
                return False
    return True


# Both are asked of every read, at every use of a lane (code generation asks again per
# unrolled register tile): cached, as sympy's expand and diff cost about half a
# millisecond each time (0.3 s of LeNet-5's code generation).
@lru_cache(maxsize=4096)
def lane_step(e, var):
    """1 if index e is var + (terms without var), k if it is fdiv(var + c, k) with k in
    (2, 4) (a divisor of every vector width) and an integer c; else None."""
    if isinstance(e, fdiv) and e.args[1] in (2, 4):
        offset = sympy.expand(e.args[0] - var)
        return int(e.args[1]) if offset.is_Integer else None
    offset = sympy.expand(e - var)
    return 1 if var not in offset.free_symbols and not offset.has(fdiv, sympy.Mod) else None


def lane_stride(e, var):
    """s if index e is s*var + (terms without var) with s in 2..4: lanes read every s-th
    element of a row, loaded as s vectors' worth and picked out by a shuffle; else None."""
    return _lane_stride(sympy.sympify(e), var)


@lru_cache(maxsize=4096)
def _lane_stride(e, var):
    if e.has(fdiv, sympy.Mod):
        return None
    s = sympy.diff(e, var)
    if s.is_Integer and 2 <= s <= 4 and var not in sympy.expand(e - s * var).free_symbols:
        return int(s)
    return None


def _only_in_integer_parts(e, var):
    if var not in e.free_symbols:
        return True
    if e.is_integer and all(s.is_integer for s in e.free_symbols):
        return True               # index arithmetic (`Mod(w, 2)`, `k`): computed per lane
    return all(_only_in_integer_parts(a, var) for a in e.args) if e.args else False


def _widen(nest, tensors, lanes):
    """Nest as "wide" when lanes along a reduction index beat the plain strategy: an
    "outer" row shorter than half a vector, or an "inner" sum along unit stride."""
    c = nest.comp
    if c.reduce != "sum" or not c.index:
        return nest
    ranges = loop_ranges(c, tensors)
    along = [r for r in c.rindex if isinstance(ranges[r], int) and ranges[r] >= lanes // 2
             and unit_stride_score(c, r) > 0 and vectorizable(c, r, c.guards, ranges, tensors)]
    if not along:
        return nest
    along = max(along, key=lambda r: (unit_stride_score(c, r), c.rindex.index(r)))
    last = c.index[-1]
    free_last = len(c.index) >= 2 and isinstance(ranges[last], int) \
        and not any(last in g.free_symbols for g in c.guards)
    if nest.strategy == "outer":
        if not free_last or ranges[last] * 2 > lanes or ranges[last] > 8:
            return nest
        return Nest(c, "wide", along, ranges[last])
    if nest.strategy == "inner":
        tile = next((t for t in (4, 2) if free_last and ranges[last] % t == 0), 1)
        return Nest(c, "wide", along, tile)
    return nest


def format_schedule(kernels):
    """The loop nests as indented text, like Halide's print_loop_nest."""
    from .index_ir import format_comp
    lines = []
    for k, kernel in enumerate(kernels):
        lines.append(f"kernel {k}:" + (f" for row < {kernel.extent}:" if kernel.extent is not None else ""))
        for n in kernel.nests:
            c = n.comp
            inner = list(c.index[1:] if kernel.extent is not None else c.index)
            if n.strategy == "inner":
                order = inner + list(c.rindex)
            elif n.strategy == "outer":
                order = inner[:-1] + list(c.rindex) + inner[-1:]
            elif n.strategy == "across":
                order = [v for v in inner if v != n.along] + list(c.rindex) + [f"{n.along} (vector)"]
            elif n.strategy == "wide":
                tiled = [f"{inner[-1]} (x{n.tile})"] if n.tile > 1 else []
                order = (inner[:-1] if n.tile > 1 else inner) + [r for r in c.rindex if r != n.along] \
                    + tiled + [f"{n.along} (vector)"]
            else:
                order = inner
            kept = "" if n.store else "   (in registers only)"
            lines.append(f"    [{n.strategy}] loops {', '.join(map(str, order)) or '-'}: {format_comp(c)}{kept}")
            for e in n.epilogue:
                lines.append(f"        [epilogue] {format_comp(e)}")
    return "\n".join(lines)
