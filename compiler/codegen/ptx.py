"""The same loop nests for NVIDIA GPUs: LLVM IR for nvptx64-nvidia-cuda, then PTX text.

Only what differs from the CPU's module emitter (llvm.py) is here; a kernel's values,
reads and loops come from the shared core (kernel.py):
  * each launch of the GPU schedule (compiler/gpu_schedule.py: a head loop nest and
    its elementwise tails) is one `.entry` kernel; grid and block indices replace the
    outer loops, by the head's strategy: a thread per element, a block per element
    (a reduction split over the block's threads, added up by a tree in shared
    memory), or a block per tile of a contraction (operands staged in shared memory);
  * an entry point is not a function but a launch list, run by runtime/cuda.py with
    every buffer resident on the device;
  * exp and log use the hardware's ex2/lg2 (there is no libm on the device).

A kernel is written as *phases* (`with self.threads() as tid:`), separated by block
barriers (`self.sync()`); what lies outside a phase is the same for every thread of
the block (the tile, the reduction chunk). On the GPU a phase is just this thread's
code; gpu_emulation.py runs each phase as a loop over the block's threads, which is
what lets the same kernels run, barriers and shared memory included, on the CPU.
"""
import functools
import math
from contextlib import ExitStack, contextmanager

import llvmlite.binding as llvm
import llvmlite.ir as ir
import sympy

from ..gpu_schedule import BLOCK
from .kernel import FAST, I32, I64, PTR, KernelEmitter
from .llvm import LLVMEmitter

ARCHES = ("sm_80", "sm_90")
PTX_VERSION = "+ptx80"
SHARED = 3                        # NVPTX's address space of shared memory
PART_INDEX = sympy.Symbol("part")  # the position in a split's scratch buffer
WINDOW = 8                        # a sum's loops up to this long run whole, guards as masks


class PTXEmitter(LLVMEmitter):
    triple = "nvptx64-nvidia-cuda"

    def __init__(self, tensors, size_names, dtype="f32", name="symnet", arch="sm_80"):
        if dtype != "f32":
            raise ValueError("the PTX target computes in float32 (dtype='f32')")
        if arch not in ARCHES:
            raise ValueError(f"unsupported GPU architecture {arch!r}; expected one of {', '.join(ARCHES)}")
        super().__init__(tensors, size_names, dtype, name)
        self.module.data_layout = str(target_machine(arch).target_data)   # LLVM's own, per version
        self.arch = arch
        self.launches = {}

    def vector_lanes(self):
        return None               # a GPU thread computes scalars; the grid is the vector

    def entry(self, name, kernels, buffer_index):
        """The launch list of an entry point: one launch per GPU kernel, in order."""
        self.launches[name] = [self.gpu_kernel(k) for k in kernels]

    kernel_emitter = None        # set below: GPUKernelEmitter
    extra_args = []

    def gpu_kernel(self, kernel):
        # The forward pass appears in several entries: its kernels are emitted once.
        key = (tuple(id(c) for c in kernel.comps), kernel.strategy)
        if key in self.emitted:
            return self.emitted[key]
        buffers = kernel.buffers
        args = [PTR] * (1 + len(buffers)) + self.extra_args
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), args),
                         f"k{self.kernel_count}_{_identifier(kernel.head.out)}")
        self.kernel_count += 1
        self.mark_kernel(fn)
        for arg in fn.args[1:1 + len(buffers)]:
            arg.add_attribute("noalias")
        self.kernel_emitter(self, fn, dict(zip(buffers, fn.args[1:])), kernel).emit()
        self.emitted[key] = {"kernel": fn.name, "buffers": buffers, "strategy": kernel.strategy,
                             "blocks": kernel.blocks(self.tensors),
                             "positions": kernel.positions(self.tensors)}
        return self.emitted[key]

    def mark_kernel(self, fn):
        fn.calling_convention = "ptx_kernel"

    # ---- device math ------------------------------------------------------------------
    def _nvvm(self, name):
        if name in self.module.globals:
            return self.module.globals[name]
        return ir.Function(self.module, ir.FunctionType(self.float, [self.float]), name)

    def exp2(self, b, x):
        return b.call(self._nvvm("llvm.nvvm.ex2.approx.f"), [x])

    def log2(self, b, x):
        return b.call(self._nvvm("llvm.nvvm.lg2.approx.f"), [x])

    def exp(self, b, x):
        return self.exp2(b, b.fmul(x, ir.Constant(self.float, 1.0 / math.log(2.0))))

    def log(self, b, x):
        return b.fmul(self.log2(b, x), ir.Constant(self.float, math.log(2.0)))

    def pow(self, b, x, y):
        """pow from ex2 and lg2 with C's rules for a negative base: |x|^y, negated for an
        odd integer y, NaN for any other non-integer y; and 1 for y = 0 (ex2(0 * lg2 0)
        is NaN). Rarer IEEE cases (1^NaN, (-1)^inf, bases -0 and -inf) are not C's."""
        def const(value):
            return ir.Constant(self.float, value)
        fabs, floor = self.intrinsic("fabs"), self.intrinsic("floor")
        magnitude = self.exp2(b, b.fmul(y, self.log2(b, b.call(fabs, [x]))))
        integer = b.fcmp_ordered("==", b.call(floor, [y]), y)
        half = b.fmul(y, const(0.5))
        odd = b.and_(integer, b.fcmp_ordered("!=", b.call(floor, [half]), half))
        negative = b.fcmp_ordered("<", x, const(0.0))
        signed = b.select(b.and_(negative, odd), b.fneg(magnitude), magnitude)
        real = b.select(b.and_(negative, b.not_(integer)), const(math.nan), signed)
        return b.select(b.fcmp_ordered("==", y, const(0.0)), const(1.0), real)

    def ptx(self, opt_level=2):
        return emit_ptx(self.ir(), self.arch, opt_level)


class GPUKernelEmitter(KernelEmitter):
    """Emits one launch: its head by the head's strategy, the tails at each head element."""

    # ---- the hooks the emulation replaces ------------------------------------------------
    def special(self, name):
        """An index register: tid (this thread), ctaid (this block), nctaid (blocks in the grid)."""
        full = f"llvm.nvvm.read.ptx.sreg.{name}.x"
        fn = self.m.module.globals.get(full) or ir.Function(self.m.module, ir.FunctionType(I32, []), full)
        return self.b.zext(self.b.call(fn, []), I64)

    @contextmanager
    def threads(self):
        """A phase run by every thread of the block; yields the thread's index."""
        yield self.special("tid")

    def sync(self):
        """A block barrier: every thread has finished the phase before."""
        self.b.call(self.m.declare("llvm.nvvm.barrier0", ir.VoidType(), []), [])

    def shared(self, count):
        """`count` floats of the block's shared memory."""
        array = ir.ArrayType(self.m.float, count)
        name = self.m.module.get_unique_name(f"{self.fn.name}_shared")
        memory = ir.GlobalVariable(self.m.module, array, name, addrspace=SHARED)
        memory.linkage = "internal"
        memory.initializer = ir.Constant(array, ir.Undefined)
        memory.align = 16
        with self.b.goto_entry_block():
            return self.b.addrspacecast(memory, PTR)

    def load_shared(self, memory, k):
        """Slot k of shared memory (the emulation also checks the access for races)."""
        return self.b.load(self.at(memory, k), typ=self.m.float)

    def store_shared(self, value, memory, k):
        self.b.store(value, self.at(memory, k))

    def private(self, count):
        """`count` floats per thread kept across phases; returns slot(tid, k) -> pointer.
        On the GPU, registers (constant k after unrolling)."""
        base = self.array(count)
        return lambda tid, k: self.at(base, ir.Constant(I64, k))

    # ---- kernel -----------------------------------------------------------------------------
    def emit(self):
        {"thread": self.thread_strategy, "rows": self.rows_strategy, "block": self.block_strategy,
         "tile": self.tile_strategy, "split": self.split_strategy,
         "finish": self.finish_strategy}[self.kernel.strategy]()
        self.b.ret_void()

    def element(self, linear, variables):
        """Index values of a row-major linear position over `variables` (the first one
        is not reduced: the position is in range). In 32 bits: a GPU divides 64-bit
        integers in several instructions, and the runtime allows no kernel positions
        past 2**32 (spec["launches"]: "positions")."""
        b = self.b
        env, rest = {}, b.trunc(linear, I32)
        for k, v in reversed(list(enumerate(variables))):
            if k == 0:
                env[v] = b.zext(rest, I64)
            else:
                extent = b.trunc(self.dim(self.ranges[v]), I32)
                env[v], rest = b.zext(b.urem(rest, extent), I64), b.udiv(rest, extent)
        return env

    whole_windows = False            # while a sum's point is emitted (see bounds)

    def point(self, c, env, guards):
        self.whole_windows = c.reduce == "sum"     # (a masked term is 0: right for sums only)
        try:
            return super().point(c, env, guards)
        finally:
            self.whole_windows = False

    def bounds(self, v, env, guards):
        """A sum's short loop (a filter window's row or column, up to WINDOW steps) runs
        its whole constant range, its guards left as masks on the terms: LLVM unrolls it,
        the threads of a warp run the same steps (bounds from guards differ from thread
        to thread at an image's border) and the reads' addresses are constant offsets.
        On an H200 the guarded bounds kept the input gradient of LeNet-5's second
        convolution at 24 of 32 active threads and ~10 instructions per term."""
        extent = sympy.sympify(self.ranges[v])
        if self.whole_windows and extent.is_Integer and int(extent) <= WINDOW:
            return ir.Constant(I64, 0), self.dim(extent), guards
        return super().bounds(v, env, guards)

    def term(self, c, env, guards):
        """With guards as masks, a product masks its windowed read (an index like h - ky,
        the read the guards are about; its address is clamped, so the read is safe) and
        multiplies: the sum then adds with one fma per term. Guards that only say the
        read is inside its tensor need no mask: such a read is zero outside already."""
        factors = sympy.Mul.make_args(c.body)
        windowed = [f for f in factors if f in c.accesses and any(
            len(sympy.sympify(e).free_symbols) > 1 for e in c.accesses[f].index)]
        if not (self.whole_windows and guards and len(factors) > 1 and len(windowed) == 1):
            return super().term(c, env, guards)
        access = c.accesses[windowed[0]]
        inside = {r for e, d in zip(access.index, self.m.tensors[access.tensor].shape)
                  for r in (sympy.Ge(e, 0), sympy.Lt(e, sympy.sympify(d)))}
        if all(g in inside for g in guards):
            return self.value(c.body, env, c.accesses, {})
        memo = {}
        read = self.value(windowed[0], env, c.accesses, memo)
        read = self.b.select(self.condition(sympy.And(*guards), env), read, self.const(0.0))
        rest = self.value(sympy.Mul(*[f for f in factors if f is not windowed[0]]), env, c.accesses, memo)
        return self.b.fmul(read, rest, flags=FAST)

    def extent(self, variables):
        out = ir.Constant(I64, 1)
        for v in variables:
            out = self.b.mul(out, self.dim(self.ranges[v]))
        return out

    def tails(self, env):
        """The tails at the head element `env`, in order (each its own variables)."""
        head = self.kernel.head
        for c in self.kernel.tails:
            at = {v: env[h] for v, h in zip(c.index, head.index)}
            self.point(c, at, self.enter(c))
        self.enter(head)

    @contextmanager
    def each_element(self, c):
        """A phase in which each thread strides over c's elements (over the whole grid);
        yields (linear position, index values) of the element being computed."""
        b, block = self.b, ir.Constant(I64, BLOCK)
        with self.threads() as tid:
            first = b.add(b.mul(self.special("ctaid"), block), tid)
            with self.loop(self.extent(c.index), "element", start=first,
                           step=b.mul(self.special("nctaid"), block)) as linear:
                yield linear, self.element(linear, c.index)

    @contextmanager
    def thread_zero(self):
        """A phase in which thread 0 alone works (stores a block's sum)."""
        with self.threads() as tid:
            with self.b.if_then(self.b.icmp_unsigned("==", tid, ir.Constant(I64, 0))):
                yield

    def part_range(self, part, share, total):
        """(first, stop) of part `part` of a sum of `total` terms in shares of `share`."""
        b = self.b
        first = b.mul(part, share)
        end = b.add(first, share)
        return first, b.select(b.icmp_unsigned("<", end, total), end, total)

    def thread_strategy(self):
        """Each thread strides over the head's elements, computing each whole."""
        c = self.kernel.head
        guards = self.enter(c)
        with self.each_element(c) as (_, env):
            self.point(c, env, guards)
            self.tails(env)

    def rows_strategy(self):
        """Each thread strides over rows (the head's first index) and computes every nest
        of the launch along its row, one after the other: a nest reads what the launch
        wrote only in its own row (gpu_schedule), so this thread wrote it before."""
        b, block, head = self.b, ir.Constant(I64, BLOCK), self.kernel.head
        self.enter(head)
        rows = self.dim(self.ranges[head.index[0]])
        with self.threads() as tid:
            first = b.add(b.mul(self.special("ctaid"), block), tid)
            with self.loop(rows, "row", start=first, step=b.mul(self.special("nctaid"), block)) as row:
                for c in self.kernel.comps:
                    guards = self.enter(c)
                    with self.along_row(c, row) as env:
                        self.point(c, env, guards)
        self.enter(head)

    @contextmanager
    def along_row(self, c, row):
        """Loops over c's elements in the row `row`; yields their index values. Every
        element is stored, guards or not (a guard zeroes a term, it skips no element)."""
        env = {c.index[0]: row}
        with ExitStack() as stack:
            for v in c.index[1:]:
                env[v] = stack.enter_context(self.loop(self.dim(self.ranges[v]), str(v)))
            yield env

    def block_strategy(self):
        """Each block strides over the head's elements; for each, its threads take every
        BLOCK-th term of the reduction, then add their partial sums in a tree."""
        c = self.kernel.head
        guards = self.enter(c)
        partial = self.shared(BLOCK)
        with self.loop(self.extent(c.index), "element", start=self.special("ctaid"),
                       step=self.special("nctaid")) as linear:
            env = self.element(linear, c.index)
            total = self.block_sum(c, env, guards, partial, ir.Constant(I64, 0), self.extent(c.rindex))
            with self.thread_zero():
                self.store(c, env, total())
                self.tails(env)

    def split_strategy(self):
        """Each block strides over (element, part) pairs: a block sum of the part's share
        of the element's terms, which thread 0 stores in the scratch buffer at the pair."""
        c, b, splits = self.kernel.head, self.b, ir.Constant(I64, self.kernel.splits)
        guards = self.enter(c)
        partial = self.shared(BLOCK)
        terms = self.extent(c.rindex)
        share = b.udiv(b.add(terms, ir.Constant(I64, self.kernel.splits - 1)), splits)
        with self.loop(b.mul(self.extent(c.index), splits), "pair", start=self.special("ctaid"),
                       step=self.special("nctaid")) as pair:
            # pair < outputs x splits <= the GPU's resident blocks: 32 bits suffice
            element, part = (b.zext(f(b.trunc(pair, I32), b.trunc(splits, I32)), I64)
                             for f in (b.udiv, b.urem))
            env = self.element(element, c.index)
            total = self.block_sum(c, env, guards, partial, *self.part_range(part, share, terms))
            with self.thread_zero():
                self.store_part(total(), pair)

    def finish_strategy(self):
        """Each thread strides over the head's elements, adding each one's parts (stored by
        the split launch before) in order, then stores it and runs the tails there."""
        c, b, splits = self.kernel.head, self.b, self.kernel.splits
        self.enter(c)
        with self.each_element(c) as (linear, env):
            acc = self.alloca(self.m.float)
            b.store(ir.Constant(self.m.float, 0.0), acc)
            base = b.mul(linear, ir.Constant(I64, splits))
            with self.loop(ir.Constant(I64, splits), "part") as part:
                value = self.load_part(b.add(base, part))
                b.store(b.fadd(b.load(acc, typ=self.m.float), value, flags=FAST), acc)
            self.store(c, env, b.load(acc, typ=self.m.float))
            self.tails(env)

    def block_sum(self, c, env, guards, partial, first, stop):
        """The block's sum of c's terms first .. stop - 1 at the element `env`: each thread
        adds every BLOCK-th, then a tree in shared memory adds the threads' sums. Returns
        a function giving the total, to be called in a later phase."""
        b = self.b
        with self.threads() as tid:
            acc = self.alloca(self.m.float)
            b.store(ir.Constant(self.m.float, 0.0), acc)
            with self.loop(stop, "term", start=b.add(first, tid), step=ir.Constant(I64, BLOCK)) as r:
                term = self.term(c, {**env, **self.element(r, c.rindex)}, guards)
                b.store(b.fadd(b.load(acc, typ=self.m.float), term, flags=FAST), acc)
            self.store_shared(b.load(acc, typ=self.m.float), partial, tid)
        self.sync()
        half = BLOCK // 2
        while half:
            with self.threads() as tid:
                with b.if_then(b.icmp_unsigned("<", tid, ir.Constant(I64, half))):
                    other = self.load_shared(partial, b.add(tid, ir.Constant(I64, half)))
                    mine = self.load_shared(partial, tid)
                    self.store_shared(b.fadd(mine, other, flags=FAST), partial, tid)
            self.sync()
            half //= 2
        return lambda: self.load_shared(partial, ir.Constant(I64, 0))

    def store_part(self, value, position):
        """Store one part's sum in the scratch buffer (a split launch)."""
        self.b.store(value, self.scratch_at(position))

    def load_part(self, position):
        return self.b.load(self.scratch_at(position), typ=self.m.float)

    def scratch_at(self, position):
        return self.address(self.kernel.scratch, (PART_INDEX,), {PART_INDEX: position})[0]

    def tile_strategy(self):
        """Each block strides over TM x TN tiles of the output (and, split, over parts of
        the reduction: (tile, part) pairs); per chunk of TK reduction steps, all threads
        stage A's and B's chunk in shared memory, then each thread multiplies out its
        RM x RN register tile from there. A split tile stores its part's sums in the
        scratch buffer, for the finish launch."""
        c, t, b = self.kernel.head, self.kernel.tile, self.b
        needed = self.enter(c)
        a_guards = tuple(g for g in t.a_guards if g in needed)
        b_guards = tuple(g for g in t.b_guards if g in needed)
        # Rows of width + 1 floats: staging along k then writes 16 different banks.
        a_tile, b_tile = self.shared(t.tk * (t.tm + 1)), self.shared(t.tk * (t.tn + 1))
        acc = self.private(t.rm * t.rn)
        rows, cols, depth = self.extent(t.rows), self.extent(t.cols), self.extent(c.rindex)
        col_tiles = b.udiv(b.add(cols, ir.Constant(I64, t.tn - 1)), ir.Constant(I64, t.tn))
        row_tiles = b.udiv(b.add(rows, ir.Constant(I64, t.tm - 1)), ir.Constant(I64, t.tm))
        splits = ir.Constant(I64, self.kernel.splits)
        if self.kernel.parts:
            # A part's share of the reduction: whole chunks, so that parts never share one.
            chunks = b.udiv(b.add(depth, ir.Constant(I64, t.tk - 1)), ir.Constant(I64, t.tk))
            share = b.mul(b.udiv(b.add(chunks, ir.Constant(I64, self.kernel.splits - 1)), splits),
                          ir.Constant(I64, t.tk))
        zero = ir.Constant(self.m.float, 0.0)
        across = t.tn // t.rn                      # threads along a tile's columns

        def place(tid):                            # (row, column) of a thread in the tile
            return b.udiv(tid, ir.Constant(I64, across)), b.urem(tid, ir.Constant(I64, across))
        with self.loop(b.mul(b.mul(row_tiles, col_tiles), splits), "tile",
                       start=self.special("ctaid"), step=self.special("nctaid")) as pair:
            tile, part, first, stop = pair, None, ir.Constant(I64, 0), depth
            if self.kernel.parts:
                tile, part = b.udiv(pair, splits), b.urem(pair, splits)
                first, stop = self.part_range(part, share, depth)
            m0 = b.mul(b.udiv(tile, col_tiles), ir.Constant(I64, t.tm))
            n0 = b.mul(b.urem(tile, col_tiles), ir.Constant(I64, t.tn))
            with self.threads() as tid:
                for k in range(t.rm * t.rn):
                    b.store(zero, acc(tid, k))
            with self.loop(stop, "chunk", start=first, step=ir.Constant(I64, t.tk)) as k0:
                with self.threads() as tid:
                    self.stage(a_tile, t.a, a_guards, t.rows, t.tm, t.a_k_fastest, m0, rows, k0, stop, tid)
                    self.stage(b_tile, t.b, b_guards, t.cols, t.tn, t.b_k_fastest, n0, cols, k0, stop, tid)
                self.sync()
                with self.threads() as tid:
                    ty, tx = place(tid)
                    for k in range(t.tk):
                        a = [self.load_shared(a_tile, b.add(ty, ir.Constant(I64, k * (t.tm + 1) + i * (t.tm // t.rm))))
                             for i in range(t.rm)]
                        w = [self.load_shared(b_tile, b.add(tx, ir.Constant(I64, k * (t.tn + 1) + j * across)))
                             for j in range(t.rn)]
                        for i in range(t.rm):
                            for j in range(t.rn):
                                slot = acc(tid, i * t.rn + j)
                                b.store(b.fadd(b.load(slot, typ=self.m.float), b.fmul(a[i], w[j], flags=FAST),
                                               flags=FAST), slot)
                self.sync()
            with self.threads() as tid:
                ty, tx = place(tid)
                for i in range(t.rm):
                    for j in range(t.rn):
                        m = b.add(m0, b.add(ty, ir.Constant(I64, i * (t.tm // t.rm))))
                        n = b.add(n0, b.add(tx, ir.Constant(I64, j * across)))
                        inside = b.and_(b.icmp_unsigned("<", m, rows), b.icmp_unsigned("<", n, cols))
                        with b.if_then(inside):
                            env = {**self.element(m, t.rows), **self.element(n, t.cols)}
                            value = b.load(acc(tid, i * t.rn + j), typ=self.m.float)
                            if self.kernel.parts:
                                position = b.add(b.mul(self.position(env, c.index), splits), part)
                                self.store_part(value, position)
                            else:
                                self.store(c, env, value)
                                self.tails(env)

    def position(self, env, variables):
        """The row-major linear position of index values `env` over `variables`."""
        b, out = self.b, ir.Constant(I64, 0)
        for v in variables:
            out = b.add(b.mul(out, self.dim(self.ranges[v])), env[v])
        return out

    def stage(self, tile, side, guards, variables, width, k_fastest, first, extent, k0, depth, tid):
        """This thread's share of a TK x width chunk of one side, into shared memory laid
        out [k][position] (rows padded to width + 1): the side's factors at (first + position, k0 + k), 0 past
        the output's end or `depth` (the reduction's, or its part's)."""
        b, c, tk = self.b, self.kernel.head, self.kernel.tile.tk
        for s in range(tk * width // BLOCK):
            e = b.add(tid, ir.Constant(I64, s * BLOCK))
            if k_fastest:
                k, position = b.urem(e, ir.Constant(I64, tk)), b.udiv(e, ir.Constant(I64, tk))
            else:
                position, k = b.urem(e, ir.Constant(I64, width)), b.udiv(e, ir.Constant(I64, width))
            slot = b.add(b.mul(k, ir.Constant(I64, width + 1)), position)
            outer, r = b.add(first, position), b.add(k0, k)
            inside = b.and_(b.icmp_unsigned("<", outer, extent), b.icmp_unsigned("<", r, depth))
            with b.if_else(inside) as (then, otherwise):
                with then:
                    env = {**self.element(outer, variables), **self.element(r, c.rindex)}
                    value = self.value(side, env, c.accesses, {})
                    if guards:
                        value = b.select(self.condition(sympy.And(*guards), env), value, self.const(0.0))
                    self.store_shared(value, tile, slot)
                with otherwise:
                    self.store_shared(ir.Constant(self.m.float, 0.0), tile, slot)

    def array(self, count):
        """`count` floats on the stack (in registers where the indices are constants)."""
        with self.b.goto_entry_block():
            return self.b.alloca(self.m.float, size=ir.Constant(I64, count))

    def at(self, memory, k):
        return self.b.gep(memory, [k], inbounds=True, source_etype=self.m.float)


PTXEmitter.kernel_emitter = GPUKernelEmitter


def _identifier(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name)[:40]


@functools.lru_cache(maxsize=None)
def target_machine(arch, opt_level=2):
    """LLVM's NVPTX target machine for `arch` (its backend initialised on first use)."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    target = llvm.Target.from_triple(PTXEmitter.triple)
    return target.create_target_machine(cpu=arch, features=PTX_VERSION, opt=opt_level)


def emit_ptx(ir_text, arch="sm_80", opt_level=2):
    """Optimise the NVVM IR and let LLVM's NVPTX backend print PTX text."""
    machine = target_machine(arch, opt_level)
    module = llvm.parse_assembly(ir_text)
    module.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
    return machine.emit_assembly(module)
