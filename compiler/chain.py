"""The chain rule written out as courses do (`symnet grad --chain`).

    dJ/dh.W = dJ/dyhat * dyhat/dyhat.dense * dyhat.dense/dh * dh/dh.dense * dh.dense/dh.W

For each parameter, the chain is read off the graph: the tensors that every path from
the parameter to the loss goes through, in order. Each factor dv/du is the local
derivative of one step, `sympy.diff` of the body of the loop nest computing v by its
read of u, written elementwise in that loop nest's indices (a sigmoid's s*(1 - s) is
written with the stored output, as the backward code computes it); a step that reads u
at two positions (`A[n, i + 1] - A[n, i]`) has no such factor. The first factor,
dJ/dT, covers the loss statement (cross-entropy's several internal paths become one
expression) and any part of the graph where paths split and join again, which is no
single product; it is the delta δT that `symnet grad` derives. The product is left
unmultiplied: that is the point of showing it.
"""
from collections import defaultdict
from dataclasses import dataclass

import networkx as nx
import sympy
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm

from .autodiff import differentiate, in_terms_of_output
from .errors import SymnetError
from .index_ir import access_symbol
from .schedule import loop_ranges
from . import functions as F
from .printing import (Formula, Inliner, parameters_to_differentiate, rename_clashing_indices, latex_name,
                       outside_reads_of, render, tidy, used_deltas)


@dataclass(frozen=True)
class Factor:
    """One factor d top / d bottom of a chain and its local derivative (elementwise)."""
    top: str            # the tensor differentiated; the loss is written J
    bottom: str
    expr: sympy.Expr
    ranges: tuple = ()  # (index variable, extent) of the expression's free indices

    def label(self, fmt="text"):
        """dtop/dbottom, ∂top/∂bottom or its LaTeX fraction."""
        if fmt == "latex":
            top = "J" if self.top == "J" else latex_name(self.top)
            return rf"\frac{{\partial {top}}}{{\partial {latex_name(self.bottom)}}}"
        d = "∂" if fmt == "unicode" else "d"
        return f"{d}{self.top}/{d}{self.bottom}"

    def render(self, fmt="text"):
        """The factor as an equation `label = local derivative` (unicode: a drawing)."""
        if fmt != "unicode":
            return f"{self.label(fmt)} = {render(self.expr, fmt)}"
        drawing = PrettyPrinter({"use_unicode": True, "wrap_line": False})._print(self.expr)
        equation = prettyForm(*prettyForm(self.label(fmt) + " = ").right(drawing))
        return "\n".join(line.rstrip() for line in equation.render(wrap_line=False).split("\n"))


def chain_formulas(model, wrt=None, simplify=True):
    """[(parameter, [Factor, ...])]: each parameter's gradient as a chain of factors,
    from dJ/dT (the loss end) down to d(first result)/d(parameter); no factors for a
    parameter the loss does not depend on (its gradient is 0)."""
    return [(p, factors) for p, factors, _ in _chains_and_deltas(model, wrt, simplify)]


def _chains_and_deltas(model, wrt, simplify):
    """[(parameter, factors, the delta Formulas the factors read)]: a chain whose first
    factor stops below a named tensor (a step reading it at two positions) reads its δ."""
    if model.loss is None:
        raise SymnetError(f"model '{model.name}' has no loss statement, so it has no chain rule")
    out = []
    for param in parameters_to_differentiate(model, wrt):
        if not _reaches_loss(model, param):
            out.append((param, [], []))
            continue
        backward = differentiate(model, wrt=[param], simplify=simplify)
        inliner = Inliner(model, backward, deltas=True)
        factors = _chain(model, param, simplify, inliner)
        deltas = used_deltas(inliner, factors, backward.comps)
        if simplify:
            deltas = [Formula(f.name, f.label, f.index, tidy(f.expr)) for f in deltas]
        out.append((param, factors, [rename_clashing_indices(model, f) for f in deltas]))
    return out


def render_chains(model, wrt=None, fmt="text", simplify=True):
    """The text `symnet grad --chain` prints: per parameter the product, then its factors."""
    comment = "% " if fmt == "latex" else ""
    times = {"text": " * ", "unicode": " · ", "latex": r" \cdot "}[fmt]
    indent = "" if fmt == "latex" else "  "
    lines = [f"{comment}the chain rule for the loss J of {model.name}: one factor per step, "
             "each a local derivative (elementwise), the product left unsimplified:"]
    every = []
    for param, factors, deltas in _chains_and_deltas(model, wrt, simplify):
        whole = Factor("J", param, sympy.S.Zero).label(fmt)
        if not factors:
            note = f"the loss does not depend on {param}"
            lines.append(f"{whole} = 0   % {note}" if fmt == "latex" else f"{indent}{whole} = 0  ({note})")
            continue
        inner = indent * 2
        if len(factors) == 1:           # the factor is dJ/dparam itself: no product to show
            inner = indent
        else:
            lines.append(indent + whole + " = " + times.join(f.label(fmt) for f in factors))
        for factor in factors:
            lines += [inner + line for line in factor.render(fmt).split("\n")]
        if deltas:
            lines.append(f"{comment}{inner}where δT = dJ/dT for the named tensors T:")
            for delta in deltas:
                lines += [inner + indent + line for line in delta.render(fmt).split("\n")]
        every += factors
    for read in outside_reads_of(model, [(f.expr, dict(f.ranges)) for f in every], fmt):
        lines.append(f"{comment}  (reads outside a tensor are 0: {read})")
    return "\n".join(lines)


# ---- the chain of one parameter -----------------------------------------------------
def _chain(model, param, simplify, inliner):
    """The factors for `param`: walk up from it while each step is a single edge."""
    graph = _paths_graph(model, param)
    chain = _bottlenecks(graph, param, model.loss)
    loss_statement = _loss_statement(model)
    steps = []
    for bottom, top in zip(chain, chain[1:]):
        if top in loss_statement or not _single_edge(graph, bottom, top) \
                or not _one_position(model, top, bottom):
            break
        steps.append(Factor(top, bottom, _local_derivative(model, top, bottom),
                            _loop_ranges(model, top)))
    head = steps[-1].top if steps else param
    delta = inliner.formula(head)       # dJ/dhead as `symnet grad` derives it
    factors = [Factor("J", head, delta.expr, _ranges(delta.index, model.tensors[head].shape))]
    factors += steps[::-1]
    if simplify:
        factors = [Factor(f.top, f.bottom, tidy(f.expr), f.ranges) for f in factors]
    return [_clear_indices(model, f) for f in factors]


def _reaches_loss(model, param):
    return model.loss in nx.descendants(model.graph, param)


def _paths_graph(model, param):
    """The subgraph of tensors on some path from `param` to the loss."""
    graph = model.graph
    nodes = (nx.descendants(graph, param) | {param}) & (nx.ancestors(graph, model.loss) |
                                                         {model.loss})
    return graph.subgraph(nodes)


def _bottlenecks(graph, source, sink):
    """The nodes every source -> sink path passes through, in path order."""
    order = list(nx.topological_sort(graph))
    from_source = defaultdict(int, {source: 1})
    for node in order:
        for succ in graph.successors(node):
            from_source[succ] += from_source[node]
    to_sink = defaultdict(int, {sink: 1})
    for node in reversed(order):
        for succ in graph.successors(node):
            to_sink[node] += to_sink[succ]
    total = from_source[sink]
    return [n for n in order if from_source[n] * to_sink[n] == total]


def _single_edge(graph, bottom, top):
    """Whether the only way from `bottom` to `top` is the edge between them."""
    return list(graph.successors(bottom)) == [top]


def _one_position(model, top, bottom):
    """Whether top reads bottom at one index only: `A[n, i + 1] - A[n, i]` reads it at
    two, a Jacobian with two diagonals and no elementwise factor (summing the two
    reads' derivatives would print 0), so the delta covers that step."""
    positions = {tuple(a.index) for c in model.forward if c.out == top
                 for a in c.accesses.values() if a.tensor == bottom}
    return len(positions) <= 1


def _loss_statement(model):
    """The tensors the loss statement creates (a cross-entropy's internals, ...)."""
    where = model.locations.get(model.loss)
    return {t for t, loc in model.locations.items()
            if where is not None and loc is not None and t != model.loss
            and (loc.filename, loc.line) == (where.filename, where.line)
            and model.tensors[t].kind == "value"} | {model.loss}


def _local_derivative(model, top, bottom):
    """d top / d bottom: sympy.diff of top's loop-nest body by its reads of bottom."""
    comps = [c for c in model.forward if c.out == top]
    total = sympy.S.Zero
    for c in comps:
        local = sum((sympy.diff(c.body, s) for s, a in c.accesses.items()
                     if a.tensor == bottom), sympy.S.Zero)
        reads = {s: _read(a.tensor, a.index) for s, a in c.accesses.items()}
        if c.reduce is None and c.body.has(*c.accesses):
            out = access_symbol(c.out)
            local = in_terms_of_output(local, c.body, out)     # as the backward code does
            reads[out] = _read(c.out, c.index)
        if c.reduce == "max":                  # the window's maximum passes the gradient
            local *= F.eq(_read(c.argmax, c.index), c.window_position)
        total += local.xreplace(reads)
    return total


def _loop_ranges(model, top):
    """(variable, extent) of the loops computing `top`: its index and its reductions."""
    ranges = {}
    for c in model.forward:
        if c.out == top:
            ranges.update(loop_ranges(c, model.tensors))
    return _ranges(ranges.keys(), ranges.values())


def _ranges(variables, extents):
    return tuple((v, sympy.sympify(e)) for v, e in zip(variables, extents))


def _read(tensor, index):
    return sympy.IndexedBase(tensor)[tuple(index)] if index else sympy.Symbol(tensor)


def _clear_indices(model, factor):
    """Rename index variables named like a tensor (a convolution's x and the input x),
    in the factor's expression and its ranges alike."""
    variables = tuple(v for v, _ in factor.ranges)
    renamed = rename_clashing_indices(model, Formula("", "", variables, factor.expr))
    ranges = tuple(zip(renamed.index, (e for _, e in factor.ranges)))
    return Factor(factor.top, factor.bottom, renamed.expr, ranges)
