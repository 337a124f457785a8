"""Derived gradients as formulas in the source's names, and the model summary table.

`derive(model)` turns the backward loop nests (autodiff.py) back into mathematics: a
read of a tensor the user never named (`loss.pow`, a layer's pre-activation, a
`grad:` buffer) is replaced, recursively, by the loop nest that defines it, so

    grad:a[] = sum_{n<N} grad:yhat[n]*x[n]      (and grad:yhat from the loss, ...)

becomes  dJ/da = 2*Sum((a*x[n] + b - y[n])*x[n], (n, 0, N - 1))/N.  Reductions stay
sums, `Sum(body, (n, 0, N - 1))`, or maxima, `MaxOver(body, (k, 0, 9))` (printed
`max(body, (k, 0, 9))`); inputs, parameters and constants stay reads `x[n]`
(scalars plain symbols `a`).

When the fully inlined formulas get large (deep models), inlining stops at the tensors
the source names: their gradients become the chain rule's intermediates ("deltas"),
written `δh1[n, j]` = dJ/dh1[n, j] and listed in backward order, as in a textbook's
backpropagation equations. `render` prints any of these with sympy's printers.
"""
from collections import defaultdict
from dataclasses import dataclass

import sympy
from sympy.concrete.expr_with_limits import ExprWithLimits

from .autodiff import differentiate, grad_name
from .defaults import FORMULA_FORMATS as FORMATS
from .errors import SymnetError
from .index_ir import fdiv
from .ops import format_shape
from .schedule import loop_ranges

# Fully inlined formulas larger than this (nodes of the expression tree, about 30
# operations) are written with deltas instead.
INLINE_LIMIT = 90
LEAF_KINDS = ("input", "param", "const", "aux")
_INDEX_LETTERS = "ijklmpqrstuvw"


class MaxOver(ExprWithLimits):
    """max over k of body, for k in 0..hi: a max reduction, e.g. a max pool's window."""

    def doit(self, **hints):
        """sympy's Max of the terms, when every range is numeric (like Sum.doit)."""
        terms = [self.function.doit(**hints)]
        for variable, low, high in self.limits:
            if not (low.is_Integer and high.is_Integer):
                return self
            terms = [t.xreplace({variable: k}) for t in terms for k in range(low, high + 1)]
        return sympy.Max(*terms)

    def _sympystr(self, printer):
        limits = ", ".join(printer._print(tuple(lim)) for lim in self.limits)
        return f"max({printer._print(self.function)}, {limits})"

    def _latex(self, printer):
        ranges = r", ".join(rf"0 \le {printer._print(v)} \le {printer._print(hi)}"
                            for v, _, hi in self.limits)
        return rf"\max_{{{ranges}}} \left({printer._print(self.function)}\right)"

    def _pretty(self, printer):
        from sympy.printing.pretty.stringpict import prettyForm
        ranges = ", ".join(f"{v}≤{hi}" for v, _, hi in self.limits)
        body = prettyForm(*printer._print(self.function).parens())
        return prettyForm(*body.left(f"max[{ranges}]"))


@dataclass(frozen=True)
class Formula:
    """One derived equation `label[index] = expr`: a parameter's gradient or a delta."""
    name: str           # the tensor differentiated
    label: str          # left-hand side: "dJ/dW" for a parameter, "δh1" for a delta
    index: tuple        # the left-hand side's index variables
    expr: sympy.Expr

    @property
    def lhs(self):
        return _read(self.label, self.index)

    def render(self, fmt="text"):
        """The equation as text, a unicode drawing, or LaTeX."""
        if fmt == "unicode":
            return render(sympy.Eq(self.lhs, self.expr, evaluate=False), fmt)
        if fmt == "latex" and self.label.startswith("dJ/d"):
            element = render(_read(self.name, self.index), fmt)
            return rf"\frac{{\partial J}}{{\partial {element}}} = {render(self.expr, fmt)}"
        return f"{render(self.lhs, fmt)} = {render(self.expr, fmt)}"


@dataclass
class Derivation:
    """The gradient of the loss w.r.t. each parameter, and the deltas they use."""
    gradients: dict     # parameter -> Formula
    deltas: list        # Formulas for named intermediates, in backward order


# ---- public API ---------------------------------------------------------------------
def gradient_formulas(model, wrt=None, simplify=True):
    """Parameter name -> sympy expression of dJ/dparameter (index formula)."""
    return {name: f.expr for name, f in derive(model, wrt, simplify).gradients.items()}


def delta_formulas(model, wrt=None, simplify=True):
    """[(tensor name, expression of dJ/dtensor)] for the deltas, in backward order.

    Empty when the gradients are small enough to print fully inlined."""
    return [(f.name, f.expr) for f in derive(model, wrt, simplify).deltas]


def derive(model, wrt=None, simplify=True):
    """Inline the backward program into formulas; see the module docstring."""
    wrt = parameters_to_differentiate(model, wrt)
    backward = differentiate(model, wrt=wrt, simplify=simplify)
    try:
        inliner = Inliner(model, backward, deltas=False)
        derivation = Derivation({p: inliner.formula(p) for p in wrt}, [])
    except _TooLarge:
        inliner = Inliner(model, backward, deltas=True)
        gradients = {p: inliner.formula(p) for p in wrt}
        derivation = Derivation(gradients, used_deltas(inliner, list(gradients.values()),
                                                        backward.comps))
    if simplify:
        derivation = _map(derivation, tidy)
    return _map_formulas(derivation, lambda f: rename_clashing_indices(model, f))


def render(expr, fmt="text"):
    """Print an expression: `text` (sympy's str), `unicode` (2-D) or `latex`."""
    if fmt not in FORMATS:
        raise SymnetError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    expr = expr.replace(fdiv, lambda a, b: sympy.floor(sympy.factor_terms(a / b)))
    if fmt == "text":
        return sympy.sstr(expr)
    labels = {s: s.name for s in expr.atoms(sympy.Symbol) if _is_label(s)}
    if fmt == "unicode":
        pretty = {s: sympy.Symbol(name.replace("dJ/d", "∂J/∂", 1))
                  for s, name in labels.items()}
        drawing = sympy.pretty(expr.xreplace(pretty), use_unicode=True, wrap_line=False)
        return "\n".join(line.rstrip() for line in drawing.split("\n"))
    return sympy.latex(expr, symbol_names={s: latex_name(name) for s, name in labels.items()})


def latex_name(name):
    """A tensor name in LaTeX: h1.W -> W_{h_{1}}, δh1 -> \\delta_{h_{1}}, yhat -> \\hat{y}."""
    if name.startswith("dJ/d"):
        return rf"\frac{{\partial J}}{{\partial {latex_name(name[4:])}}}"
    if name.startswith("δ"):
        return rf"\delta_{{{latex_name(name[1:])}}}"
    owner, _, last = name.rpartition(".")
    word = _latex_word(last)
    return f"{word}_{{{latex_name(owner)}}}" if owner else word


def _latex_word(word):
    if "_" in word:
        return r"\mathrm{" + word.replace("_", r"\_") + "}"
    sympy_form = sympy.latex(sympy.Symbol(word))
    if len(word) > 1 and sympy_form == word:
        return r"\mathrm{" + word + "}"
    return sympy_form


# ---- the summary table --------------------------------------------------------------
def summary_table(model):
    """One row per tensor a user cares about: name, op, shape, parameter count."""
    rows = [("name", "op", "shape", "params")]
    for name, info in model.tensors.items():
        if info.kind == "aux":
            continue
        shape = format_shape(info.shape) if info.shape else "scalar"
        if info.dtype == "i32":
            shape += " : i32"
        count = f"{model.params[name].size:,}" if name in model.params else ""
        rows.append((name, model.graph.nodes[name].get("op", info.kind), shape, count))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = [f"model {model.name} ({model.filename})"]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:3], widths)] + [row[3].rjust(widths[3])]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"Total learnable parameters: {model.param_count():,}")
    return "\n".join(lines)


# ---- inlining -----------------------------------------------------------------------
class _TooLarge(Exception):
    """A fully inlined formula grew past INLINE_LIMIT nodes."""


class Inliner:
    """Expands tensor reads into their defining loop nests (see the module docstring).

    deltas=False inlines every computed tensor, giving up with _TooLarge past the limit;
    deltas=True keeps the source's named values and their gradients as leaves."""

    def __init__(self, model, backward, deltas):
        self.model = model
        self.definitions = defaultdict(list)
        for c in model.forward + backward.comps:
            self.definitions[c.out].append(c)
        self.tensors = {**model.tensors, **backward.tensors}
        self.deltas = deltas
        self.gradient_of = {grad_name(t): t for t in model.tensors}

    def formula(self, tensor):
        """The Formula for dJ/dtensor (a parameter) or δtensor (a named value)."""
        comps = self.definitions[grad_name(tensor)]
        index = comps[0].index
        label = f"dJ/d{tensor}" if tensor in self.model.params else f"δ{tensor}"
        expr = self.definition(grad_name(tensor), index, frozenset(index))
        return Formula(tensor, label, index, expr)

    def definition(self, tensor, index, scope):
        """tensor[index] as the sum of the loop nests writing it.

        `scope` holds the index variables in use around this read; new summation
        variables avoid them, so that no sum shadows an outer index."""
        value = sympy.Add(*[self.comprehension(c, index, scope)
                            for c in self.definitions[tensor]])
        if not self.deltas and _size(value) > INLINE_LIMIT:
            raise _TooLarge(tensor)
        return value

    def read(self, tensor, index, scope):
        if self.is_leaf(tensor):
            return _read(self.label(tensor), index)
        return self.definition(tensor, index, scope)

    def is_leaf(self, tensor):
        """Whether a read of `tensor` stays a read rather than being expanded."""
        if tensor not in self.definitions:
            return True
        if tensor in self.gradient_of:
            return self.deltas and self.is_named(self.gradient_of[tensor])
        if self.model.tensors[tensor].kind in LEAF_KINDS:
            return True
        return self.deltas and self.is_named(tensor)

    def is_named(self, tensor):
        """A value the source names (`h1 = ...`); internal tensors have dotted names."""
        info = self.model.tensors[tensor]
        return info.kind == "value" and "." not in tensor and tensor != self.model.loss

    def label(self, tensor):
        return f"δ{self.gradient_of[tensor]}" if tensor in self.gradient_of else tensor

    def comprehension(self, c, index, scope):
        """One loop nest's value at `index`: its body, guarded, summed or maximised."""
        taken = set(scope).union(*[sympy.sympify(i).free_symbols for i in index])
        mapping = dict(zip(c.index, index))
        for r in c.rindex:
            mapping[r] = _fresh(r, taken)
            taken.add(mapping[r])
        inner = frozenset(taken)
        ranges = loop_ranges(c, self.tensors)
        reads = {s: self.read(a.tensor, tuple(_drop_idle_mod(sympy.sympify(i), ranges)
                                              .xreplace(mapping) for i in a.index), inner)
                 for s, a in c.accesses.items()}
        body = c.body.xreplace({**mapping, **reads})
        guards = [g for g in c.guards if not _always_true(g, ranges)]
        if guards:
            condition = sympy.And(*[g.xreplace(mapping) for g in guards])
            body = sympy.Piecewise((body, condition), (0, True))
        limits = [(mapping[r], 0, sympy.sympify(e) - 1) for r, e in zip(c.rindex, c.rextent)]
        if c.reduce == "sum":
            return sympy.Sum(body, *limits)
        if c.reduce == "max":
            return MaxOver(body, *limits)
        return body


def _always_true(guard, ranges):
    """Whether a linear guard holds at every point of its loops' ranges (a gradient's
    `i - 1 < 8` for i < 8), so that printing it would only add noise."""
    if not isinstance(guard, sympy.core.relational._Inequality):
        return False
    bounds = _bounds(guard.lhs - guard.rhs, ranges)
    if bounds is None:
        return False
    low, high = bounds
    holds = {sympy.StrictLessThan: high < 0, sympy.LessThan: high <= 0,
             sympy.StrictGreaterThan: low > 0, sympy.GreaterThan: low >= 0}[type(guard)]
    return holds is sympy.true


def _drop_idle_mod(index, ranges):
    """Mod(e, m) -> e where 0 <= e < m over the loops' ranges: a flatten's
    s4[n, Mod(floor(i/25), 16), ...] for i < 400 reads s4[n, floor(i/25), ...]. Whole
    multiples leave a division first: floor((400*n + i)/25) = 16*n + floor(i/25)."""
    def split(a, b):
        whole = sympy.Add(*[t for t in sympy.Add.make_args(sympy.expand(a))
                            if (t.as_coeff_Mul()[0] % b) == 0 and t.is_integer])
        return whole / b + fdiv(a - whole, b)

    def idle(mod):
        bounds = _bounds(mod.args[0], ranges)
        return bounds is not None and (bounds[0] >= 0) is sympy.true \
            and (bounds[1] < mod.args[1]) is sympy.true
    index = index.replace(lambda e: isinstance(e, fdiv) and e.args[1].is_Integer,
                          lambda e: split(*e.args))
    return index.replace(lambda e: isinstance(e, sympy.Mod) and idle(e), lambda e: e.args[0])


def outside_reads(model, formulas, fmt="text"):
    """Per tensor that `formulas` can read outside its bounds, unguarded, one such read
    and where: "x[n, i + 1] where i + 1 >= 8". The language makes such reads 0 (zero
    padding, a user op's shifted access); a reader of the formula should be told."""
    return outside_reads_of(model, [(f.expr, dict(zip(f.index, model.tensors[f.name].shape)))
                                    for f in formulas], fmt)


def outside_reads_of(model, exprs, fmt="text"):
    """outside_reads for [(expression, {free index variable: extent})]."""
    found = {}
    for expr, ranges in exprs:
        _collect_outside(model, expr, ranges, found)
    fmt = "unicode" if fmt == "unicode" else "text"       # a note on one line (LaTeX: a comment)
    return [f"{render(read, fmt)} where {' or '.join(render(c, fmt) for c in conditions)}"
            for read, conditions in found.values()]


def _collect_outside(model, expr, ranges, found):
    if isinstance(expr, sympy.Piecewise):
        return                          # guarded: the condition says where it applies
    if isinstance(expr, ExprWithLimits):
        ranges = {**ranges, **{v: hi + 1 for v, lo, hi in expr.limits}}
    if isinstance(expr, sympy.Indexed):
        name = str(expr.base)
        info = model.tensors.get(name[1:] if name.startswith("δ") else name)
        if info is None or name in found:
            return
        conditions = []
        for e, size in zip(expr.indices, info.shape):
            bounds = _bounds(e, ranges)
            if bounds and (bounds[0] < 0) is sympy.true:
                conditions.append(sympy.StrictLessThan(e, 0))
            if bounds and (bounds[1] >= sympy.sympify(size)) is sympy.true:
                conditions.append(sympy.GreaterThan(e, size))
        if conditions:
            found[name] = (expr, conditions)
        return
    for a in expr.args:
        _collect_outside(model, a, ranges, found)


def _bounds(e, ranges):
    """(least, greatest) of an index expression over the loop ranges (variable ->
    extent), or None: linear in the variables and in floor divisions of such."""
    e = sympy.expand(e)
    ranges = dict(ranges)
    for division in e.atoms(fdiv):
        inner = _bounds(division.args[0], ranges)
        if inner is None:
            return None
        low, high = (fdiv(b, division.args[1]) for b in inner)
        part = sympy.Dummy(integer=True)            # division = low + part, part <= high - low
        ranges[part] = high - low + 1
        e = e.xreplace({division: low + part})
    variables = [v for v in e.free_symbols if v in ranges]
    if e.free_symbols - set(variables) or not e.is_polynomial(*variables) \
            or (variables and sympy.Poly(e, *variables).total_degree() > 1):
        return None
    low = high = e.subs({v: 0 for v in variables})
    for v in variables:
        ends = (0, e.coeff(v) * (sympy.sympify(ranges[v]) - 1))
        low, high = low + sympy.Min(*ends), high + sympy.Max(*ends)
    return low, high


def _size(expr):
    """Nodes of the expression tree: how big a formula looks when printed."""
    return sum(1 for _ in sympy.preorder_traversal(expr))


def _read(label, index):
    """label[index], or the plain symbol `label` for a scalar."""
    if not index:
        return sympy.Symbol(label)
    return sympy.IndexedBase(label)[tuple(index)]


def _fresh(variable, taken):
    """`variable` itself, or a primed copy (k', k'') that no symbol in `taken` uses."""
    name = variable.name
    while any(s.name == name for s in taken if isinstance(s, sympy.Symbol)):
        name += "'"
    return variable if name == variable.name else sympy.Symbol(name, integer=True)


def used_deltas(inliner, formulas, backward_comps):
    """The delta Formulas the given formulas need, transitively, in backward order."""
    needed, pending = {}, list(formulas)
    while pending:
        for label in _labels(pending.pop().expr):
            if label.startswith("δ") and label[1:] not in needed:
                needed[label[1:]] = inliner.formula(label[1:])
                pending.append(needed[label[1:]])
    order = [inliner.gradient_of[c.out] for c in backward_comps if c.out in inliner.gradient_of]
    return sorted(needed.values(), key=lambda f: order.index(f.name))


def _labels(expr):
    return {s.name for s in expr.atoms(sympy.Symbol) if _is_label(s)}


def _is_label(symbol):
    """Tensor labels are plain symbols; index variables are integers, sizes positive."""
    return not symbol.is_integer


# ---- simplification -----------------------------------------------------------------
def tidy(expr):
    """Light simplification that keeps textbook forms such as s*(1 - s).

    Cancels the max shift of a stable softmax (exp(z - m) / sum exp(z - m) is
    exp(z) / sum exp(z)), drops one-term ranges and pulls constant factors out of sums."""
    expr = expr.replace(lambda e: isinstance(e, ExprWithLimits), _drop_one_term_ranges)
    expr = _unify_bound_copies(expr)
    expr = expr.replace(lambda e: isinstance(e, sympy.Sum), _pull_constant_exponent)
    expr = expr.replace(lambda e: e.is_Mul, sympy.powsimp)
    return sympy.factor_terms(expr)


def _drop_one_term_ranges(e):
    """Sum(x[n, c], (c, 0, 0)) -> x[n, 0]: a reduction over one value is that value."""
    single = {v: lo for v, lo, hi in e.limits if lo == hi}
    if not single:
        return e
    body = e.function.xreplace(single)
    rest = [limit for limit in e.limits if limit[0] not in single]
    return type(e)(body, *rest) if rest else body


def _unify_bound_copies(expr):
    """Write sums and maxima that differ only in their bound variable's name alike,
    so that equal terms cancel (the softmax shift m appears as max over k and k')."""
    seen = {}
    return expr.replace(lambda e: isinstance(e, ExprWithLimits),
                        lambda e: seen.setdefault(e.as_dummy(), e))


def _pull_constant_exponent(s):
    """Sum(exp(a + c)) -> exp(c) * Sum(exp(a)) where c does not depend on the summed index."""
    if not isinstance(s.function, sympy.exp):
        return s
    exponent = s.function.args[0]
    bound = set(s.variables)
    constant = sympy.Add(*[t for t in sympy.Add.make_args(exponent)
                           if not t.free_symbols & bound])
    if constant == 0:
        return s
    return sympy.exp(constant) * sympy.Sum(sympy.exp(exponent - constant), *s.limits)


def rename_clashing_indices(model, formula):
    """Rename index variables that share a name with a tensor (conv's x vs input x)."""
    names = {s.name for s in formula.expr.atoms(sympy.Symbol)} | set(model.tensors)
    clashing = [s for s in formula.expr.atoms(sympy.Symbol) | set(formula.index)
                if s.is_integer and s.name in model.tensors]
    spare = (sympy.Symbol(letter, integer=True) for letter in _INDEX_LETTERS
             if letter not in names)
    renaming = {s: next(spare) for s in sorted(clashing, key=str)}
    if not renaming:
        return formula
    return Formula(formula.name, formula.label, tuple(sympy.sympify(i).xreplace(renaming)
                                                      for i in formula.index),
                   formula.expr.xreplace(renaming))


def _map(derivation, fn):
    return _map_formulas(derivation, lambda f: Formula(f.name, f.label, f.index, fn(f.expr)))


def _map_formulas(derivation, fn):
    return Derivation({p: fn(f) for p, f in derivation.gradients.items()},
                      [fn(f) for f in derivation.deltas])


def parameters_to_differentiate(model, wrt):
    """The parameters to differentiate by: all, one name, or a list of names."""
    if wrt is None:
        return list(model.params)
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    for name in names:
        if name not in model.params:
            known = ", ".join(model.params) or "none"
            raise SymnetError(f"'{name}' is not a parameter of {model.name}; "
                              f"the parameters are: {known}")
    return names
