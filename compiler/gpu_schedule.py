"""GPU scheduling: which loop nests share a launch, and how a launch maps its work onto
blocks of BLOCK threads (the PTX target's counterpart of schedule.py).

Every launch is a *head* loop nest plus *tails*: elementwise loop nests over the same
output shape that read what the kernel wrote only at the element they compute (bias +
ReLU after a product, softmax's steps, an optimizer's update after its weight
gradient). Whichever thread stores an element of the head computes the tails at that
element right after, so a group is one launch and the intermediate values stay in
that thread's cache lines. The head's strategy:

  thread  each thread computes whole output elements (a grid-stride loop over them),
          running a short reduction in a register: maps, pooling, a softmax's row;
  rows    several short nests over the same rows (their first index) as one launch, a
          thread per row computing every nest along its row in turn: cross-entropy's
          maximum, exponentials, their sum and the picked logit (four launches were
          one each). A nest joins when it reads what the launch writes only in its own
          row, and each row stays short (ROW_STEPS);
  block   one block per output element: its threads split the reduction, each keeping
          a partial sum, then a tree in shared memory adds the partials (weight and
          bias gradients summed over the batch and the image: few outputs, long sums);
  split   for a block reduction with too few outputs to fill the GPU (a convolution's
          bias gradient: 6 outputs, N x 28 x 28 terms each), two launches: `split`
          gives each output several blocks, each summing one part of the terms as a
          block reduction into a scratch buffer, then `finish` adds each output's
          parts in order (a thread per output) and runs the tails;
  tile    a contraction as a matrix product C[m, n] = sum_r A[m, r] * B[r, n], where A
          is the product of the factors that read the output's "row" indices and B of
          those that read its "column" indices (a dense layer: rows (n), columns (j);
          a convolution: rows (n, y, x), columns (o), reduction (c, ky, kx), A being the
          input read through the filter window: an implicit im2col). A block computes a
          TM x TN tile of outputs, each thread an RM x RN register tile; the reduction
          runs in chunks of TK, each chunk of A and B staged in shared memory by all
          threads together and read from there RM (RN) times.

The choice uses sizes at a nominal batch (NOMINAL) and a rough model of an H100-class
GPU (SLOTS blocks resident at once); any grid computes the same result, so the model
only affects speed.
"""
import math
from dataclasses import dataclass, field

import sympy

from .index_ir import TensorInfo
from .schedule import contiguous_reads, loop_ranges

BLOCK = 256                 # threads per block, for every launch
NOMINAL = 128               # the batch size the choices are made for
SLOTS = 1024                # blocks of BLOCK threads an H100/H200 runs at once (132 SMs x 8)
TREE = 30                   # a block reduction's fixed cost (its tree), in thread steps
PART = 4 * BLOCK            # the fewest terms worth a block of their own in a split sum
TILE_PART = 16 * 16         # ... in a split tile, whose block does 256 outputs' share of them:
                            # 16 chunks (on an H200, LeNet-5's c3.W gradient in 12 parts ran
                            # at 1 block per multiprocessor, latency-bound at each chunk)
TK = 16                     # reduction chunk of a tile
ROW_STEPS = 256             # the most steps (elements x terms) a rows launch gives a thread
TILES = [(64, 64, 4, 4), (32, 32, 2, 2), (64, 16, 2, 2), (16, 16, 1, 1)]
                            # (TM, TN, RM, RN), (TM/RM) * (TN/RN) = BLOCK, most reuse first


@dataclass
class Tile:
    """A contraction seen as a matrix product (see the module's docstring)."""
    rows: tuple             # output variables flattened into the row index m (last fastest)
    cols: tuple             # output variables flattened into the column index n
    a: sympy.Expr           # the factors reading rows and reduction variables
    b: sympy.Expr           # the factors reading columns and reduction variables
    a_guards: tuple
    b_guards: tuple
    tm: int
    tn: int
    rm: int
    rn: int
    a_k_fastest: bool       # stage A with consecutive threads along the reduction
    b_k_fastest: bool       # (when memory is contiguous along it), else along m / n
    tk: int = TK            # reduction steps staged at once


@dataclass
class GPUKernel:
    head: object            # Comprehension
    strategy: str           # "thread" | "rows" | "block" | "tile" | "split" | "finish"
    tails: list = field(default_factory=list)
    tile: Tile = None
    splits: int = 1         # split, a split tile, finish: parts of the terms per output
    scratch: str = None     # ... and the parts' sums, [element, part] flattened

    @property
    def comps(self):
        return [self.head] + self.tails

    @property
    def parts(self):
        """Whether this launch sums parts of the terms into the scratch buffer (a split,
        or a tile split over the reduction), leaving its output to a finish launch."""
        return self.splits > 1 and self.strategy != "finish"

    @property
    def buffers(self):
        """Every tensor the kernel takes, in order: its nests', then the scratch buffer."""
        if self.parts:
            used = self.head.reads
        else:
            used = [t for c in self.comps for t in c.buffers]
        return list(dict.fromkeys(used + ([self.scratch] if self.scratch else [])))

    @property
    def written(self):
        """The tensors this launch writes."""
        if self.parts:
            return {self.scratch}           # its output is the finish launch's to store
        return {c.out for c in self.comps} | {c.argmax for c in self.comps if c.argmax}

    def blocks(self, tensors):
        """The grid this launch wants, as an int or a Python expression in the sizes:
        threads for every element (thread, finish), a block per element, a block per
        part of each element's sum (split), or a block per tile (and part)."""
        if self.strategy == "tile":
            ranges = loop_ranges(self.head, tensors)
            rows, cols = _extent(self.tile.rows, ranges), _extent(self.tile.cols, ranges)
            tiles = _product(_ceil(rows, self.tile.tm), _ceil(cols, self.tile.tn))
            return _product(tiles, self.splits) if self.splits > 1 else tiles
        if self.strategy == "rows":
            return _ceil(loop_ranges(self.head, tensors)[self.head.index[0]], BLOCK)
        elements = _elements(self.head, tensors)
        if self.strategy == "block":
            return int(elements) if elements.is_Integer else str(elements)
        if self.strategy == "split":
            return int(elements) * self.splits
        return _ceil(elements, BLOCK)

    def positions(self, tensors):
        """What the kernel numbers through its 32-bit index arithmetic, as ints or Python
        expressions in the sizes: its output elements, and the terms of its sum where
        threads or blocks share them out (block, split, tile); the runtime refuses
        sizes that make one 2**32 or more."""
        counts = [_elements(self.head, tensors)]
        if self.strategy in ("block", "split", "tile"):
            counts.append(sympy.Mul(*[sympy.sympify(e) for e in self.head.rextent]))
        return [int(n) if n.is_Integer else str(n) for n in counts]


def gpu_schedule(comps, tensors):
    """The launches for a list of loop nests, in order."""
    kernels = []
    for c in comps:
        last = kernels[-1] if kernels else None
        if last is not None and c.reduce is None and last.strategy != "rows" \
                and _elementwise_fusible(last, c, tensors):
            last.tails.append(c)
            continue
        strategy, tile = choose_strategy(c, tensors)
        if last is not None and strategy == "thread" and _row_fusible(last, c, tensors):
            last.strategy = "rows"
            last.tails.append(c)
            continue
        splits = 1
        if strategy == "block":
            splits = split_count(c, tensors)
        elif strategy == "tile":
            splits = tile_split_count(c, tile, tensors)
        if splits > 1:
            scratch = f"split:{c.out}:{splits}"
            size = _elements(c, tensors) * splits          # a split tile's may grow with N
            tensors[scratch] = TensorInfo(scratch, (int(size) if size.is_Integer else size,),
                                          "f32", "aux")
            kernels.append(GPUKernel(c, "split" if strategy == "block" else "tile",
                                     tile=tile, splits=splits, scratch=scratch))
            kernels.append(GPUKernel(c, "finish", splits=splits, scratch=scratch))
        else:
            kernels.append(GPUKernel(c, strategy, [], tile))
    return kernels


def _elementwise_fusible(kernel, c, tensors):
    """c can run at the head's elements: same shape, and it reads what the kernel writes
    only at its own element, and overwrites nothing the kernel reads elsewhere."""
    shape = [sympy.sympify(d) for d in tensors[c.out].shape]
    if shape != [sympy.sympify(d) for d in tensors[kernel.head.out].shape]:
        return False
    written = kernel.written          # a property that builds a set: once, not per access
    if any(a.tensor in written and tuple(a.index) != tuple(c.index) for a in c.accesses.values()):
        return False
    for n in kernel.comps:
        if any(a.tensor == c.out and tuple(a.index) != tuple(n.index) for a in n.accesses.values()):
            return False
    return True


def _row_fusible(kernel, c, tensors):
    """c, a nest a thread would compute, can join a thread (or rows) launch as a thread
    per row: every nest runs over the same rows (its first index, of one extent), reads
    what the launch writes only in its own row, and a row takes at most ROW_STEPS steps
    at the nominal batch."""
    if kernel.strategy not in ("thread", "rows"):
        return False
    comps = kernel.comps + [c]
    if not all(n.index for n in comps):
        return False
    rows = {sympy.sympify(loop_ranges(n, tensors)[n.index[0]]) for n in comps}
    if len(rows) != 1:
        return False
    written = {n.out for n in comps} | {n.argmax for n in comps if n.argmax}
    for n in comps:
        if any(a.tensor in written and (not a.index or a.index[0] != n.index[0])
               for a in n.accesses.values()):
            return False
    steps = sum(_elements(n, tensors, NOMINAL) * max(_terms(n, NOMINAL), 1) for n in comps)
    return steps <= ROW_STEPS * _nominal(rows.pop(), NOMINAL)


# ---- strategies ---------------------------------------------------------------------------
def choose_strategy(c, tensors):
    """("thread" | "block" | "tile", Tile or None) for one loop nest."""
    if c.reduce is None:
        return "thread", None
    elements, terms = _elements(c, tensors, NOMINAL), _terms(c, NOMINAL)
    if c.reduce == "sum":
        tile = contraction_tile(c, tensors)
        if tile is not None:
            return "tile", tile
        # Thread: `terms` steps in waves of SLOTS * BLOCK threads; block: terms / BLOCK
        # steps and a tree, in waves of SLOTS blocks (worth it only for sums long enough
        # to keep half a block busy).
        per_thread = terms * math.ceil(elements / (SLOTS * BLOCK))
        per_block = (terms / BLOCK + TREE) * math.ceil(elements / SLOTS)
        if terms >= BLOCK // 2 and per_block < per_thread:
            return "block", None
    return "thread", None


def split_count(c, tensors):
    """Blocks per output for a block reduction whose outputs (a fixed number) leave most
    of the GPU idle: 1 (no split) for more than half of SLOTS, else _parts."""
    elements = _elements(c, tensors)
    if not elements.is_Integer or 2 * int(elements) > SLOTS:
        return 1
    return _parts(c, int(elements))


def tile_split_count(c, tile, tensors):
    """Parts of the reduction for a contraction whose tiles leave most of the GPU idle
    at the nominal batch (a convolution's weight gradient: 16 x 150 outputs, N x 10 x 10
    terms; MLP's first layer: N x 128 outputs, 784 terms): 1 for a block per
    multiprocessor or more (SLOTS / 8), else _parts."""
    ranges = loop_ranges(c, tensors)
    tiles = math.ceil(_extent(tile.rows, ranges, NOMINAL) / tile.tm) * \
        math.ceil(_extent(tile.cols, ranges, NOMINAL) / tile.tn)
    return 1 if tiles >= SLOTS // 8 else _parts(c, tiles, TILE_PART)


def _parts(c, units, part=PART):
    """Parts of c's terms for each of `units` blocks' worth of work: enough to fill the
    GPU (SLOTS blocks), each with at least `part` terms at the nominal batch."""
    return max(1, min(SLOTS // units, _terms(c, NOMINAL) // part))


def contraction_tile(c, tensors):
    """A Tile for a sum whose body is (factors of rows, reduction) x (factors of columns,
    reduction), with enough outputs and terms to fill tiles; else None."""
    if c.reduce != "sum" or len(c.index) < 2 or c.argmax:
        return None
    ranges = loop_ranges(c, tensors)
    outs = set(c.index)
    factors = sympy.Mul.make_args(c.body)
    uses = [_variables(f, c) for f in factors]
    guard_uses = [g.free_symbols & (outs | set(c.rindex)) for g in c.guards]
    # Output variables that appear together in a factor or a guard must be on one side.
    groups = []
    for used in uses + guard_uses:
        joined = [g for g in groups if g & used & outs]
        merged = set(used & outs).union(*joined)
        groups = [g for g in groups if g not in joined] + ([merged] if merged else [])
    reduction = set(c.rindex)
    sided = [g for g in groups if any(u & g and u & reduction for u in uses)]
    if len(sided) != 2:
        return None
    second = sided[0] if c.index[0] in sided[1] else sided[1]      # the batch index in rows
    rows = tuple(v for v in c.index if v not in second)
    cols = tuple(v for v in c.index if v in second)
    a = sympy.Mul(*[f for f, u in zip(factors, uses) if not u & second])
    b = sympy.Mul(*[f for f, u in zip(factors, uses) if u & second])
    a_guards = tuple(g for g, u in zip(c.guards, guard_uses) if not u & second)
    b_guards = tuple(g for g, u in zip(c.guards, guard_uses) if u & second)
    rows_n, cols_n = _extent(rows, ranges, NOMINAL), _extent(cols, ranges, NOMINAL)
    if not worth_tiling(rows_n, cols_n, _terms(c, NOMINAL)) and \
            not worth_splitting(rows_n, cols_n, _terms(c, NOMINAL)):
        return None
    tm, tn, rm, rn = tile_shape(rows_n, cols_n)
    return Tile(rows, cols, a, b, a_guards, b_guards, tm, tn, rm, rn,
                _k_fastest(c, a, rows), _k_fastest(c, b, cols))


def worth_tiling(rows, cols, terms):
    """Enough columns to fill most of a 16-wide tile, outputs for many tiles, and a
    reduction of at least one chunk; a narrower product runs a thread per element."""
    return cols >= 12 and rows >= 16 and terms >= TK and rows * cols >= 4096


def worth_splitting(rows, cols, terms):
    """Too few outputs to tile for their number, but sums long enough to split the tiles
    over the reduction (tile_split_count): a convolution's weight gradient."""
    return cols >= 12 and rows >= 16 and terms >= 2 * PART


def tile_shape(rows, cols):
    """The shape with the most reuse that still gives every multiprocessor a block
    (SLOTS / 8); failing that, the one with the most blocks."""
    def tiles(shape):
        return math.ceil(rows / shape[0]) * math.ceil(cols / shape[1])
    for shape in TILES:
        if tiles(shape) >= SLOTS // 8 and cols > shape[1] // 2:
            return shape
    return max(TILES, key=lambda shape: (tiles(shape), -shape[2]))


def _k_fastest(c, side, outer):
    """Stage a side with the reduction index fastest when its reads walk memory along the
    last reduction variable more than along the last of its own output variables."""
    reads = [a for s, a in c.accesses.items() if s in side.free_symbols]
    return contiguous_reads(reads, c.rindex[-1]) > contiguous_reads(reads, outer[-1])


# ---- sizes ----------------------------------------------------------------------------------
def _variables(factor, c):
    """Index variables a factor depends on, through its reads or directly."""
    out = set()
    for s in factor.free_symbols:
        if s in c.accesses:
            for e in c.accesses[s].index:
                out |= sympy.sympify(e).free_symbols
        else:
            out.add(s)
    return out & (set(c.index) | set(c.rindex))


def _extent(variables, ranges, batch=None):
    out = sympy.Mul(*[sympy.sympify(ranges[v]) for v in variables])
    return _nominal(out, batch) if batch is not None else out


def _nominal(expr, batch):
    """An extent's value with every size (N, and any other the model declares) at `batch`."""
    return int(expr.subs({s: batch for s in expr.free_symbols}))


def _elements(c, tensors, batch=None):
    return _extent(c.index, loop_ranges(c, tensors), batch)


def _terms(c, batch):
    return _nominal(sympy.Mul(*[sympy.sympify(e) for e in c.rextent]), batch)


def _ceil(expr, divisor):
    """ceil(expr / divisor) as an int, or as Python text when expr has sizes in it."""
    expr = sympy.sympify(expr)
    return -(-int(expr) // divisor) if expr.is_Integer else f"({expr} + {divisor - 1}) // {divisor}"


def _product(x, y):
    return x * y if isinstance(x, int) and isinstance(y, int) else f"({x}) * ({y})"


def format_gpu_schedule(kernels, tensors):
    """The launches as text: strategy, grid, and the loop nests of each."""
    from .index_ir import format_comp
    lines = []
    for k, kernel in enumerate(kernels):
        how = kernel.strategy
        if kernel.strategy == "rows":
            how += f" (a thread per {kernel.head.index[0]}, each nest along its row in turn)"
        if kernel.tile is not None:
            t = kernel.tile
            how += (f" {t.tm}x{t.tn} (rows {', '.join(map(str, t.rows))}; columns "
                    f"{', '.join(map(str, t.cols))}), {t.rm}x{t.rn} per thread, chunks of {t.tk}")
        if kernel.strategy == "split":
            how += f" into {kernel.splits} parts per output"
        elif kernel.parts:
            how += f", the reduction in {kernel.splits} parts"
        if kernel.strategy == "finish":
            how += f" (adds the {kernel.splits} parts of each output)"
        lines.append(f"launch {k}: {how}, blocks {kernel.blocks(tensors)}")
        for c in kernel.comps:
            lines.append(f"    {format_comp(c)}")
    return "\n".join(lines)
