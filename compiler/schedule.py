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
"""
from dataclasses import dataclass, field

import sympy


@dataclass
class Nest:
    comp: object
    strategy: str                 # "map" | "inner" (register accumulator) | "outer"


@dataclass
class Kernel:
    extent: object                # extent of the shared outer loop, None for 0-d outputs
    nests: list = field(default_factory=list)

    @property
    def writes(self):
        out = set()
        for n in self.nests:
            out.add(n.comp.out)
            if n.comp.argmax:
                out.add(n.comp.argmax)
        return out


def schedule(comps, tensors):
    kernels = []
    for c in comps:
        nest = Nest(c, _strategy(c, tensors))
        # A nest whose only index runs innermost (a column sum) keeps all its loops.
        own_loops = not c.index or (nest.strategy == "outer" and len(c.index) == 1)
        extent = None if own_loops else tensors[c.out].shape[0]
        last = kernels[-1] if kernels else None
        if last is not None and extent is not None and _fusible(last, c, extent):
            last.nests.append(nest)
        else:
            kernels.append(Kernel(extent, [nest]))
    return kernels


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
    accesses = list(c.accesses.values()) + [_Write(c.out, c.index)]
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
    if c.reduce == "max" or not c.index:
        return "inner"
    last = c.index[-1]
    best = max(c.rindex, key=lambda r: unit_stride_score(c, r))
    out_score, red_score = unit_stride_score(c, last), unit_stride_score(c, best)
    if len(c.index) == 1:                 # a column sum (db[j] = sum_n g[n, j])
        return "outer" if out_score >= red_score + 2 else "inner"
    # On a tie (convolutions) the output row innermost wins: LLVM keeps a short row of
    # accumulators in registers across the whole reduction (measured 3-4x on LeNet).
    return "outer" if out_score >= red_score else "inner"


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
            else:
                order = inner
            lines.append(f"    [{n.strategy}] loops {', '.join(map(str, order)) or '-'}: {format_comp(c)}")
    return "\n".join(lines)
