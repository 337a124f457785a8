"""Scheduled kernels -> LLVM IR (llvmlite.ir) for the host CPU.

Layout of the generated module:
  * one internal function per kernel, `void kernel_K(i64* sizes, ptr noalias b0, ...)`,
    taking each distinct buffer it touches as its own noalias pointer (so the loop
    vectorizer needs no runtime alias checks);
  * one exported entry per program entry point,
    `void ENTRY(i64* sizes, ptr* buffers, i64 part, i64 parts, i64* barrier)`, which loads
    the buffer pointers from the table and calls its kernels in order: one native call
    runs a whole training step. With parts > 1, that many threads call the entry at
    once; each kernel takes its share of rows (kernels without rows run on part 0) and
    a spin barrier separates kernels.
Tensors are dense row-major arrays. Reads that interval analysis cannot prove in bounds
are clamped into the buffer and then zeroed (zero padding) — generated code never reads
or writes outside its buffers; the runtime checks shapes before every call.
"""
import re

import llvmlite.binding as llvm
import llvmlite.ir as ir
import sympy

from runtime.jit import function_cost

from ..index_ir import Access
from ..schedule import vectorizable
from .kernel import FAST, I1, I32, I64, PTR, KernelEmitter, Splat, as_i64

_LOCAL_DEFINE = re.compile(r"^define (?:(?:internal|private) )?")


def finite_where_reads_vanish(expr):
    """Whether expr stays finite whatever finite values its reads take, 0 included:
    no division, no power but whole nonnegative ones, no log."""
    if expr.atoms(sympy.log):
        return False
    return all(p.exp.is_Integer and p.exp >= 0 for p in expr.atoms(sympy.Pow))


class LLVMEmitter:
    """Emits one module. Subclasses (PTX) override the target hooks at the bottom."""

    triple = ""

    def __init__(self, tensors, size_names, dtype="f32", name="symnet"):
        self.tensors = tensors
        self.size_names = list(size_names)
        self.float = ir.FloatType() if dtype == "f32" else ir.DoubleType()
        self.float_bytes = 4 if dtype == "f32" else 8
        self.suffix = "f32" if dtype == "f32" else "f64"
        self.module = ir.Module(name=name)
        self.module.triple = self.triple
        self.kernel_count = 0
        self.lanes = self.vector_lanes()
        self.tile_rows, self.registers = self.register_tile()
        self.emitted = {}       # kernel identity -> (function, buffers): entries share kernels
        self.row_functions = {}  # (nest identity, block?) -> a fused kernel's nest, out of line
        # Streaming (`stream_to`): functions handed on, those waiting to make a part.
        self.stream, self.shipped, self.pending, self.pending_cost = None, set(), [], 0
        self.building = set()   # functions being written: not to be handed on yet

    def vector_lanes(self):
        """Floats per vector register of the host: 16 (f32) with AVX-512, 8 with AVX2."""
        features = llvm.get_host_cpu_features().flatten()
        width = 64 if "+avx512f" in features else 32 if "+avx2" in features else 16
        return width // (4 if self.suffix == "f32" else 8)

    def register_tile(self):
        """(rows, vector accumulators) of a register tile. AVX-512's 32 registers hold 6
        rows x 4 vectors and leave 8 for loads (against 4 x 4, measured side by side: the
        MLP step at batch 256 1.11-1.20x, at batch 64 1.06x); AVX2's 16 hold 4 x 4."""
        features = llvm.get_host_cpu_features().flatten()
        return (6, 24) if "+avx512f" in features else (4, 16)

    # ---- module level ----------------------------------------------------------------
    def entry(self, name, kernels, buffer_index):
        """An exported function running `kernels` in order over the buffer table."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, PTR]), name)
        sizes, table, part, parts, barrier = fn.args
        kernel_fns = [self.kernel(k) for k in kernels]
        self.worker_loop()
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        written, read = set(), set()        # by the kernels since the last barrier
        for kernel, (kernel_fn, buffers) in zip(kernels, kernel_fns):
            writes = kernel.writes
            reads = kernel.reads
            # A barrier only where this kernel touches what those kernels wrote, or
            # writes what they read: independent kernels (a bias's column sum on part
            # 0, the next layer's gradient on all parts) run side by side.
            if (reads | writes) & written or writes & read:
                b.call(self.barrier(), [barrier, parts])
                written, read = set(), set()
            written |= writes
            read |= reads
            args = [sizes, part, parts]
            for t in buffers:
                slot = b.gep(table, [ir.Constant(I64, buffer_index[t])], inbounds=True, source_etype=PTR)
                args.append(b.load(slot, typ=PTR))
            b.call(kernel_fn, args)
        # Every part returns only when all are done: the caller's return means the step is over.
        b.call(self.barrier(), [barrier, parts])
        b.ret_void()
        return fn

    def worker_loop(self):
        """Exported `i64 symnet_work(i64* job, i64 part, i64 seen, i64 polls)`, the loop of
        the runtime's worker threads, and `void symnet_post(i64* job, ptr entry, ptr sizes,
        ptr table, i64 parts, ptr barrier)`, which posts a step to them.

        job[0] counts the steps posted, job[1..5] describe the last (entry, sizes, table,
        parts, barrier). A worker runs part `part` of each new step, then polls for the
        next; it returns (the last step it saw) after `polls` polls with none, to sleep.
        Between steps it never needs Python's lock: a worker waiting for the GIL sleeps,
        and waking it costs tens of microseconds, more than a small step."""
        if "symnet_work" in self.module.globals:
            return
        entry_type = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, PTR])
        post = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, I64, PTR]),
                           "symnet_post")
        job = post.args[0]
        b = ir.IRBuilder(post.append_basic_block("entry"))
        for k, value in enumerate(post.args[1:], start=1):
            word = value if value.type == I64 else b.ptrtoint(value, I64)
            b.store(word, b.gep(job, [ir.Constant(I64, k)], source_etype=I64))
        b.atomic_rmw("add", job, ir.Constant(I64, 1), "release")     # after the fields
        b.ret_void()

        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR, I64, I64, I64]), "symnet_work")
        job, part, seen, polls = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        head, wait, run, idle = (fn.append_basic_block(n) for n in ("head", "wait", "run", "idle"))
        b.branch(head)
        b.position_at_end(head)
        last = b.phi(I64, name="last")                  # the step seen so far
        k = b.phi(I64, name="polls")
        last.add_incoming(seen, fn.entry_basic_block)
        k.add_incoming(ir.Constant(I64, 0), fn.entry_basic_block)
        now = b.load_atomic(job, "acquire", 8, typ=I64)
        b.cbranch(b.icmp_signed("!=", now, last), run, wait)
        b.position_at_end(wait)
        if llvm.get_process_triple().startswith("x86_64"):
            b.call(self.declare("llvm.x86.sse2.pause", ir.VoidType(), []), [])
        next_k = b.add(k, ir.Constant(I64, 1))
        b.cbranch(b.icmp_signed(">=", next_k, polls), idle, head)
        last.add_incoming(last, wait)
        k.add_incoming(next_k, wait)
        b.position_at_end(idle)
        b.ret(last)
        b.position_at_end(run)
        field = [b.load(b.gep(job, [ir.Constant(I64, n)], source_etype=I64), typ=I64) for n in range(1, 6)]
        mine, call = fn.append_basic_block("mine"), fn.append_basic_block("next")
        b.cbranch(b.icmp_signed("<", part, field[3]), mine, call)
        b.position_at_end(mine)
        entry = b.inttoptr(field[0], entry_type.as_pointer())     # a pointer that knows its signature
        b.call(entry, [b.inttoptr(field[1], PTR), b.inttoptr(field[2], PTR), part, field[3],
                       b.inttoptr(field[4], PTR)])
        b.branch(call)
        b.position_at_end(call)
        last.add_incoming(now, call)
        k.add_incoming(ir.Constant(I64, 0), call)
        b.branch(head)

    def barrier(self):
        """`barrier(i64* state, i64 parts)`: all parts wait here until every part arrived.

        state[0] counts arrivals, state[8] (another cache line) is the generation the
        waiters spin on; the last to arrive resets the count and bumps the generation."""
        if "symnet_barrier" in self.module.globals:
            return self.module.globals["symnet_barrier"]
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64]), "symnet_barrier")
        fn.linkage = "internal"
        state, parts = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        alone, work = fn.append_basic_block("alone"), fn.append_basic_block("work")
        b.cbranch(b.icmp_signed("<=", parts, ir.Constant(I64, 1)), alone, work)
        b.position_at_end(alone)
        b.ret_void()
        b.position_at_end(work)
        generation = b.gep(state, [ir.Constant(I64, 8)], source_etype=I64)
        seen = b.load_atomic(generation, "acquire", 8, typ=I64)
        arrived = b.atomic_rmw("add", state, ir.Constant(I64, 1), "acq_rel")
        last, wait = fn.append_basic_block("last"), fn.append_basic_block("wait")
        b.cbranch(b.icmp_signed("==", arrived, b.sub(parts, ir.Constant(I64, 1))), last, wait)
        b.position_at_end(last)
        # Atomic stores as exchanges (llvmlite's store_atomic predates opaque pointers).
        b.atomic_rmw("xchg", state, ir.Constant(I64, 0), "monotonic")
        b.atomic_rmw("xchg", generation, b.add(seen, ir.Constant(I64, 1)), "release")
        b.ret_void()
        # Spin briefly, then give the core away: on a busy machine the part we wait for
        # may be waiting for this very core.
        b.position_at_end(wait)
        spins = ir.IRBuilder(fn.entry_basic_block)
        spins.position_at_start(fn.entry_basic_block)
        counter = spins.alloca(I64)
        spins.store(ir.Constant(I64, 0), counter)
        spin, poll, done = (fn.append_basic_block(n) for n in ("spin", "poll", "done"))
        b.branch(spin)
        b.position_at_end(spin)
        count = b.add(b.load(counter, typ=I64), ir.Constant(I64, 1))
        b.store(count, counter)
        yield_block = fn.append_basic_block("yield")
        b.cbranch(b.icmp_signed(">", count, ir.Constant(I64, 200)), yield_block, poll)
        b.position_at_end(yield_block)
        b.call(self.declare("sched_yield", I32, []), [])
        b.branch(poll)
        b.position_at_end(poll)
        now = b.load_atomic(generation, "acquire", 8, typ=I64)
        b.cbranch(b.icmp_signed("==", now, seen), spin, done)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def kernel(self, kernel):
        # The same loop nests in several entries (the forward pass) compile once.
        key = tuple(n.key for n in kernel.nests)
        if key not in self.emitted:
            self.emitted[key] = self.new_kernel(kernel)
        return self.emitted[key]

    def new_kernel(self, kernel):
        buffers = list(dict.fromkeys(t for nest in kernel.nests for t in nest.buffers))
        fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, I64] + [PTR] * len(buffers))
        fn = ir.Function(self.module, fnty, f"kernel_{self.kernel_count}")
        self.kernel_count += 1
        fn.linkage = "internal"
        # Kept out of line: inlined into one huge entry, LLVM optimises them worse
        # (measured 2-4x slower on LeNet) and far more slowly.
        fn.attributes.add("noinline")
        for arg in fn.args[3:]:
            arg.add_attribute("noalias")
        self.building.add(fn.name)
        CPUKernelEmitter(self, fn, dict(zip(buffers, fn.args[3:])), kernel).emit()
        self.building.discard(fn.name)
        if self.stream is not None:
            self.ship()
        return fn, buffers

    def intrinsic(self, name, nargs=1, typ=None):
        """An LLVM math intrinsic for a float or float-vector type, e.g. llvm.exp.v16f32."""
        typ = typ or self.float
        if isinstance(typ, ir.VectorType):
            mangled = f"v{typ.count}{self.suffix}"
        else:
            mangled = self.suffix
        full = f"llvm.{name}.{mangled}"
        if full in self.module.globals:
            return self.module.globals[full]
        return ir.Function(self.module, ir.FunctionType(typ, [typ] * nargs), full)

    def declare(self, name, ret, args):
        if name in self.module.globals:
            return self.module.globals[name]
        return ir.Function(self.module, ir.FunctionType(ret, args), name)

    # Target hooks: the math a backend provides natively (PTX overrides these).
    def exp(self, b, x):
        return b.call(self.intrinsic("exp", 1, x.type), [x])

    def log(self, b, x):
        return b.call(self.intrinsic("log", 1, x.type), [x])

    def pow(self, b, x, y):
        return b.call(self.intrinsic("pow", 2, x.type), [x, y])

    def ir(self):
        # Quick after streaming: llvmlite keeps each instruction's text once written.
        return str(self.module)

    # ---- streaming to LLVM ---------------------------------------------------------------
    # About a ninth of LeNet-5's module (runtime/jit.py's function_cost): parts large
    # enough that a worker's start and the declarations are small beside them.
    PART_COST = 512 * 1024

    def stream_to(self, stream):
        """Hand finished functions to `stream` (runtime.jit.PartStream) as modules of their
        own while the rest is written, so that LLVM works meanwhile (the front end and
        LLVM had taken about as long, one after the other). Only for modules of
        functions: a module that gains a global variable (which one part alone must
        define) abandons the stream and compiles whole."""
        self.stream = stream

    def ship(self, final=False):
        """Submit the functions finished since the last call once they make a part (all
        of them when final). Called after a kernel or a nest out of line: every function
        with a body is finished then but the kernel being written (`building`); the
        entry being written has no body yet."""
        if any(not isinstance(v, ir.Function) for v in self.module.globals.values()):
            self.stream.abandon()       # a global must be defined in one part alone
            self.stream = None
            return
        for fn in self.module.functions:
            if fn.blocks and fn.name not in self.shipped and fn.name not in self.building:
                self.shipped.add(fn.name)
                self.pending.append(fn.name)
                self.pending_cost += function_cost(str(fn))
        if self.pending and (final or self.pending_cost >= self.PART_COST):
            self.stream.submit(self.part(set(self.pending)), self.pending_cost)
            self.pending, self.pending_cost = [], 0

    def part(self, names):
        """A module defining the functions `names` and declaring every other one; internal
        functions become external, so that the parts link."""
        lines = [f'target triple = "{self.module.triple}"', ""]
        for fn in self.module.functions:
            if fn.name in names:
                lines.append(_LOCAL_DEFINE.sub("define ", str(fn), count=1))
            else:
                # The prototype alone: llvmlite caches each instruction's text once
                # written, so a function still being built must not be written whole.
                head = []
                fn.descr_prototype(head)
                lines.append(_LOCAL_DEFINE.sub("declare ", head[0].rstrip("\n"), count=1))
        return "\n".join(lines) + "\n"


class CPUKernelEmitter(KernelEmitter):
    """The host CPU's strategies for a kernel's nests: rows shared among threads, blocks
    of rows, register tiles of vectors, column panels, lanes along a reduction."""

    # ---- nests ---------------------------------------------------------------------------
    def emit(self):
        b = self.b
        part, parts = self.fn.args[1], self.fn.args[2]
        if self.kernel.extent is None:              # no rows to share: part 0 does it all
            work, skip = self.fn.append_basic_block("work"), self.fn.append_basic_block("skip")
            b.cbranch(b.icmp_signed("==", part, ir.Constant(I64, 0)), work, skip)
            b.position_at_end(skip)
            b.ret_void()
            b.position_at_end(work)
            for nest in self.kernel.nests:
                self.nest(nest, {}, list(nest.comp.index))
        else:                                       # rows [extent*part/parts, extent*(part+1)/parts)
            extent = self.dim(self.kernel.extent)
            first = b.sdiv(b.mul(extent, part), parts)
            stop = b.sdiv(b.mul(extent, b.add(part, ir.Constant(I64, 1))), parts)
            width = self.panel_width()
            if width is None:
                self.rows(first, stop)
            else:
                # A weight matrix larger than the cache, in panels of columns: all of
                # this part's rows sweep one panel while it stays in the L2 cache.
                c = self.kernel.nests[0].comp
                self.enter(c)
                operand = self.packable(c, width)
                copy = self.panel_copy(c, width, first, stop) if operand else None
                with self.loop(self.dim(self.ranges[c.index[-1]]), "panel", step=ir.Constant(I64, width)) as base:
                    self.columns = [b.add(base, ir.Constant(I64, k)) for k in range(0, width, self.m.lanes)]
                    if operand is None:
                        self.rows(first, stop)
                    else:
                        self.packed_rows(first, stop, operand, base, width, copy)
                self.columns = None
                if copy is not None:
                    b.call(self.m.declare("free", ir.VoidType(), [PTR]), [copy])
        b.ret_void()

    def rows(self, first, stop):
        """The kernel's nests for rows first .. stop - 1."""
        b = self.b
        if self.m.lanes and any(self.tileable(n) for n in self.kernel.nests):
            # Blocks of rows: a register tile reuses each weight vector it loads for
            # every row of the block; the leftover rows go one at a time.
            rows = ir.Constant(I64, self.block_rows())
            blocked = b.add(first, b.mul(b.sdiv(b.sub(stop, first), rows), rows))
            with self.loop(blocked, "rows", start=first, step=rows) as row0:
                for nest in self.kernel.nests:
                    self.per_row(nest, row0, block=True)
            first = blocked
        with self.loop(stop, "row", start=first) as row:
            for nest in self.kernel.nests:
                self.per_row(nest, row, block=False)

    def per_row(self, nest, row, block):
        """One nest at one row (or, with block, at the tile_rows rows from there). In a fused
        kernel each nest is a function of its own, called here: one function holding
        LeNet-5's whole forward pass, twice, was 400,000 characters of IR that LLVM took
        1.4 s to compile on one core; split, the parts go to every core."""
        # A lone nest with an epilogue goes out of line too: its block and row versions
        # in one function were 150,000 characters of IR for LeNet-5's f5 gradient.
        if len(self.kernel.nests) == 1 and not nest.epilogue or self.columns is not None:
            return self.nest_at(nest, row, block)
        buffers = nest.buffers
        key = (nest.key, block and self.block_rows())
        if key not in self.m.row_functions:
            fnty = ir.FunctionType(ir.VoidType(), [PTR, I64] + [PTR] * len(buffers))
            fn = ir.Function(self.m.module, fnty, f"{self.fn.name}_{'block' if block else 'row'}"
                                                   f"{len(self.m.row_functions)}")
            fn.linkage = "internal"
            fn.attributes.add("noinline")
            for arg in fn.args[2:]:
                arg.add_attribute("noalias")
            inner = CPUKernelEmitter(self.m, fn, dict(zip(buffers, fn.args[2:])), self.kernel)
            inner.nest_at(nest, fn.args[1], block)
            inner.b.ret_void()
            self.m.row_functions[key] = fn
            if self.m.stream is not None:
                self.m.ship()
        self.b.call(self.m.row_functions[key], [self.fn.args[0], row] + [self.pointers[t] for t in buffers])

    def nest_at(self, nest, row, block):
        if block:
            return self.nest_block(nest, row)
        return self.nest(nest, {nest.comp.index[0]: row}, list(nest.comp.index[1:]))

    PANEL_BYTES = 512 * 1024    # half of a typical per-core L2 cache

    def panel_width(self):
        """Columns per panel for a lone matrix-product-like nest whose row-independent
        operand (K x row length) exceeds PANEL_BYTES; None to run whole rows."""
        nests = self.kernel.nests
        if len(nests) != 1 or len(nests[0].comp.index) != 2 or not self.m.lanes \
                or not self.tileable(nests[0]):
            return None
        c = nests[0].comp
        extent, depth = self.ranges[c.index[-1]], 1
        for e in c.rextent:
            depth = depth * e if isinstance(e, int) and isinstance(depth, int) else None
        width = self.m.lanes * (self.m.registers // self.m.tile_rows)
        if depth is None or extent % width or extent == width \
                or depth * extent * self.m.float_bytes <= self.PANEL_BYTES:
            return None
        return width

    PACK_BYTES = 1 << 20        # the largest panel copied
    PACK_MIN_ROWS = 16          # fewer rows in a part: copying would cost more than it saves

    def packable(self, c, width):
        """The operand B of out[n, j] = sum_i A[n, i] B[i, j] whose panel is worth a
        contiguous copy (None if none): rows of B a multiple of 4 KiB apart (1024 floats)
        fall into a few cache sets and evict each other, so reading the panel in place
        runs at half the speed of reading a copy."""
        if len(c.rindex) != 1 or not isinstance(c.rextent[0], int) \
                or c.rextent[0] * width * self.m.float_bytes > self.PACK_BYTES:
            return None
        for access in c.accesses.values():
            if tuple(access.index) == (c.rindex[0], c.index[-1]) \
                    and self.m.tensors[access.tensor].dtype != "i32":
                return access
        return None

    def panel_copy(self, c, width, first, stop):
        """Room for one panel's copy, or a null pointer: when the part has fewer than
        PACK_MIN_ROWS rows, or memory runs out. On the heap, not the stack: the caller's
        thread may have a small stack (musl gives 128 KiB); after the first call glibc
        serves it from its heap, without a system call."""
        b = self.b
        size = c.rextent[0] * width * self.m.float_bytes         # a multiple of 64
        slot = self.alloca(PTR)
        b.store(ir.Constant(PTR, None), slot)
        with b.if_then(b.icmp_signed(">=", b.sub(stop, first), ir.Constant(I64, self.PACK_MIN_ROWS))):
            allocate = self.m.declare("aligned_alloc", PTR, [I64, I64])
            b.store(b.call(allocate, [ir.Constant(I64, 64), ir.Constant(I64, size)]), slot)
        return b.load(slot, typ=PTR)

    def packed_rows(self, first, stop, operand, base, width, copy):
        """rows(first, stop) for one panel, reading the access `operand` (B[i, j]) from a
        contiguous copy of the panel (depth x width floats, made here in `copy`), or in
        place where `copy` is null."""
        b, lanes = self.b, self.m.lanes
        depth = self.kernel.nests[0].comp.rextent[0]
        vtype = ir.VectorType(self.m.float, lanes)
        chunks = width // lanes                 # vectors per row of the copy
        extent = self.dim(self.m.tensors[operand.tensor].shape[1])
        with b.if_else(b.icmp_unsigned("!=", copy, ir.Constant(PTR, None))) as (packed, direct):
            with packed:
                with self.loop(ir.Constant(I64, depth), "pack") as i:
                    row = b.add(b.mul(i, extent), base)
                    for k in range(chunks):
                        source = b.gep(self.pointers[operand.tensor], [b.add(row, ir.Constant(I64, k * lanes))],
                                       inbounds=True, source_etype=self.m.float)
                        target = b.gep(copy, [b.add(b.mul(i, ir.Constant(I64, chunks)), ir.Constant(I64, k))],
                                       inbounds=True, source_etype=vtype)
                        b.store(b.load(source, typ=vtype, align=4), target, align=64)
                self.packed = (operand, copy, base)
                self.rows(first, stop)
                self.packed = None
            with direct:
                self.rows(first, stop)

    def tileable(self, nest):
        """A row reduction computed for a block of rows at once: vectorized along its row
        (outer) or along a reduction (wide), with no guard on the row index."""
        c = nest.comp
        if len(c.index) < 2 or nest.strategy not in ("outer", "wide", "across") or c.reduce != "sum":
            return False
        guards = self.enter(c)
        if any(c.index[0] in g.free_symbols for g in guards):
            return False
        return nest.strategy in ("wide", "across") or self.vectorizable(c, c.index[-1], guards)

    WIDE_OUTPUTS = 12           # the accumulators of a wide block; 24 gained nothing more
                                # measured, and made the IR a tenth larger (LeNet-5)

    def wide_rows(self, nest):
        """Rows a wide nest computes together: 2 of a 5-wide filter gradient (10
        accumulators), 3 of a dense input gradient's tile of 4."""
        budget = min(self.m.registers, self.WIDE_OUTPUTS)
        return next(g for g in (6, 5, 4, 3, 2, 1) if g * nest.tile <= budget)

    def block_rows(self):
        """Rows per block of the kernel: a register tile's (tile_rows), or where only wide
        nests are tiled, the rows they compute together (16 filters on two threads are
        two blocks of 4, not a block of 6 and two rows alone)."""
        tiled = [n for n in self.kernel.nests if self.tileable(n)]
        if tiled and all(n.strategy == "wide" for n in tiled):
            return min(self.wide_rows(n) for n in tiled)
        return self.m.tile_rows

    def nest_block(self, nest, row0):
        """One loop nest for the block of rows from row0 (block_rows of them)."""
        c, b, count = nest.comp, self.b, self.block_rows()
        row_var, loops = c.index[0], list(c.index[1:])
        if not self.tileable(nest):
            with self.loop(ir.Constant(I64, count), "r") as r:
                self.nest(nest, {row_var: b.add(row0, r)}, loops)
            return
        rows = [b.add(row0, ir.Constant(I64, r)) for r in range(count)]
        if nest.strategy == "across":
            self.across_nest(nest, {}, loops, (row_var, rows))
            return
        if nest.strategy == "wide":
            group = self.wide_rows(nest)
            for first in range(0, count, group):
                self.wide_nest(nest, {}, loops, (row_var, rows[first:first + group]))
            return
        self.tiled_outer(nest, {}, loops, self.enter(c), [(row_var, rows)])

    def nest(self, nest, env, loops):
        c = nest.comp
        guards = self.enter(c)
        vector_row = nest.strategy == "outer" and self.m.lanes and self.vectorizable(c, loops[-1], guards)
        if vector_row and c.reduce == "max":
            # No tile: a window's loads serve only its own outputs, nothing to share.
            self.loops(loops[:-1], env, lambda env, guards: self.vector_outer_reduction(
                nest, env, loops[-1], guards), guards)
        elif vector_row:
            self.tiled_outer(nest, env, loops, guards, [])
        elif nest.strategy == "outer" and c.reduce == "sum":
            assert not nest.epilogue        # the schedule folds maps only into vector tiles
            self.loops(loops[:-1], env, lambda env, guards: self.scalar_outer_reduction(
                c, env, loops[-1], guards), guards)
        elif nest.strategy == "wide" and self.m.lanes:
            self.wide_nest(nest, env, loops)
        elif nest.strategy == "across" and self.m.lanes:
            self.across_nest(nest, env, loops)
        elif nest.strategy == "map" and self.m.lanes and loops and self.m.tensors[c.out].dtype != "i32" \
                and self.vectorizable(c, loops[-1], guards):
            self.loops(loops[:-1], env, lambda env, guards: self.vector_map(c, env, loops[-1], guards),
                       guards)
        else:
            self.loops(loops, env, lambda env, guards: self.point(c, env, guards), guards)

    OUTPUT_TILES = (4, 3, 2)

    def tiled_outer(self, nest, env, loops, guards, tiles):
        """The loops over loops[:-1], one of them stepping by a tile of outputs computed
        together (see output_tile), each point a vector_outer_reduction along loops[-1]."""
        outer, last = loops[:-1], loops[-1]
        per_point = len(tiles[0][1]) if tiles else 1
        var, size = self.output_tile(outer, guards, self.m.registers // per_point)
        if var is None:
            self.loops(outer, env, lambda env, guards: self.vector_outer_reduction(
                nest, env, last, guards, tiles), guards)
            return
        with self.loop(self.dim(self.ranges[var]), str(var), step=ir.Constant(I64, size)) as base:
            values = [self.b.add(base, ir.Constant(I64, t)) for t in range(size)]
            self.loops([v for v in outer if v != var], env, lambda env, guards: self.vector_outer_reduction(
                nest, env, last, guards, tiles + [(var, values)]), guards)

    def output_tile(self, variables, guards, budget):
        """(variable, size): neighbouring outputs along an outer index computed together,
        so more accumulators hide the FMA latency and a load that does not depend on
        the index (the input row, for a filter index) serves all of them; (None, 1) if none."""
        for v in variables:
            extent = self.ranges[v]
            if isinstance(extent, int) and not any(v in g.free_symbols for g in guards):
                for size in self.OUTPUT_TILES:
                    if size <= budget and extent % size == 0:
                        return v, size
        return None, 1

    def vectorizable(self, c, var, guards):
        return vectorizable(c, var, guards, self.ranges, self.m.tensors)

    def vector_outer_reduction(self, nest, env, last, guards, tiles=()):
        """Chunks of the output row as vector accumulators, kept in registers across the
        whole reduction (a register tile), then stored with a masked store (see
        finish_chunk).

        tiles = [(variable, [values]), ...] computes every combination at once (several
        rows, several filters): a read that does not depend on a tiled variable (the
        weights, for rows) is loaded once for all of its values."""
        c, b, lanes, extent = nest.comp, self.b, self.m.lanes, self.ranges[last]
        vtype = ir.VectorType(self.m.float, lanes)
        guards = self.unmasked(c, guards, last)
        starts = self.columns or list(range(0, extent, lanes))      # first lane of each chunk
        envs = [env]
        for var, values in tiles:
            envs = [{**e, var: value} for e in envs for value in values]
        maximum = c.reduce == "max"
        group_size = max(1, self.m.registers // len(envs) // (2 if maximum else 1))
        itype = ir.VectorType(I32, lanes)
        for group in range(0, len(starts), group_size):
            members = [(k, r) for k in range(group, min(len(starts), group + group_size))
                       for r in range(len(envs))]
            self.ftype = vtype
            slots, where = {}, {}
            for k, r in members:
                slots[k, r] = self.alloca(vtype)
                self.vector = (last, starts[k], lanes)
                start = (self.vector_read(_out_access(c), envs[r]) if c.accumulate else
                         self.const(float("-inf") if maximum else 0.0))
                b.store(start, slots[k, r])
                if c.argmax:
                    where[k, r] = self.alloca(itype)
                    b.store(Splat(itype, 0), where[k, r])

            def body(inner, guards):
                position = self.splat_int(b.trunc(self.int_expr(c.window_position, inner), I32),
                                          lanes) if c.argmax else None
                for k, r in members:
                    self.vector = (last, starts[k], lanes)
                    term = self.term(c, {**inner, **envs[r]}, guards)
                    old = b.load(slots[k, r], typ=vtype)
                    if not maximum:
                        b.store(b.fadd(old, term, flags=FAST), slots[k, r])
                        continue
                    better = self.maximum_wins(term, old)
                    b.store(b.select(better, term, old), slots[k, r])
                    if c.argmax:
                        b.store(b.select(better, position, b.load(where[k, r], typ=itype)), where[k, r])
            self.loops(list(c.rindex), env, body, guards)
            for k, r in members:
                at = {**envs[r], last: as_i64(starts[k])}
                if c.argmax:
                    self.masked_store(b.load(where[k, r], typ=itype), self.address(c.argmax, c.index, at)[0],
                                      starts[k], extent)
                self.finish_chunk(nest, at, b.load(slots[k, r], typ=vtype), starts[k])
            self.vector, self.ftype = None, self.m.float

    ACROSS_TILES = (6, 5, 4, 3, 2)

    def across_nest(self, nest, env, loops, rows=None):
        """A sum with vector lanes along the outer output index nest.along (schedule's
        "across": a convolution's filters, where its rows are short: 10 of 16 lanes).
        The filter weights are first packed filter-minor on the stack, a vector of V
        filters per reduction step (W'[c, ky, kx, o..o+V-1], gathered once per call,
        lanes past the filter count 0): gathered in the inner loop instead, they took
        longer than its FMAs (0.78 against 0.58 ms for LeNet-5's c3). Each step then
        loads one weight vector and multiplies it by one broadcast input element per
        accumulator (an FMA with an embedded broadcast on AVX-512), for a register tile
        of rows x positions (the other output indices, each in steps of a divisor of its
        extent: 6 images x 2 x 2 pixels). Each finished vector is one output point of V
        filters: stored, and its epilogue applied, by scatters (stride Y*X), one per
        150 FMAs in LeNet-5."""
        c, b, lanes = nest.comp, self.b, self.m.lanes
        self.enter(c)
        along, extent = nest.along, self.ranges[nest.along]
        vtype = ir.VectorType(self.m.float, lanes)
        row_envs = [{rows[0]: r} for r in rows[1]] if rows else [{}]
        spatial = [v for v in loops if v != along]
        # AVX2 (16 registers, no embedded broadcast) also needs one for the weights and
        # one for each broadcast: 2 fewer accumulators than its output tiles.
        accumulators = self.m.registers if self.m.registers > 16 else self.m.registers - 2
        budget, sizes = max(1, accumulators // len(row_envs)), {}
        for v in reversed(spatial):
            size = next((t for t in self.ACROSS_TILES if t <= budget and self.ranges[v] % t == 0), 1)
            sizes[v], budget = size, max(1, budget // size)
        weight = next(s for s, a in c.accesses.items() if along in a.index)
        steps, chunks = 1, -(-extent // lanes)
        for e in c.rextent:
            steps *= e
        with b.goto_entry_block():
            packed = b.alloca(vtype, size=ir.Constant(I64, steps * chunks))

        def step_index(inner, chunk):
            flat = ir.Constant(I64, 0)
            for r, e in zip(c.rindex, c.rextent):
                flat = b.add(b.mul(flat, ir.Constant(I64, e)), inner[r])
            return b.add(b.mul(flat, ir.Constant(I64, chunks)), chunk)

        def pack(first):
            chunk = b.udiv(as_i64(first), ir.Constant(I64, lanes))
            self.loops(list(c.rindex), env, lambda inner, _: b.store(
                self.lane_gather(c.accesses[weight], {**inner, along: as_i64(first)}, along),
                b.gep(packed, [step_index(inner, chunk)], inbounds=True, source_etype=vtype)))
        self.chunks(extent, str(along), pack)

        def tile(first, env):
            envs = [{**env, **r} for r in row_envs]
            for v in spatial:
                envs = [{**e, v: b.add(e[v], ir.Constant(I64, t))} for e in envs for t in range(sizes[v])]
            self.ftype = vtype
            slots = [self.alloca(vtype) for _ in envs]
            for slot in slots:
                b.store(self.const(0.0), slot)
            chunk = b.udiv(first, ir.Constant(I64, lanes))

            def body(inner, guards):
                self.vector = (along, first, lanes)
                at = b.gep(packed, [step_index(inner, chunk)], inbounds=True, source_etype=vtype)
                self.preloaded = {weight: b.load(at, typ=vtype)}
                for slot, e in zip(slots, envs):
                    term = self.term(c, {**inner, **e}, guards)
                    b.store(b.fadd(b.load(slot, typ=vtype), term, flags=FAST), slot)
                self.preloaded, self.vector = {}, None
            self.loops(list(c.rindex), env, body, ())
            self.ftype = self.m.float
            for slot, e in zip(slots, envs):
                self.finish_across(nest, {**e, along: first}, b.load(slot, typ=vtype), first, extent)

        def positions(variables, env, first):
            if not variables:
                return tile(first, env)
            v = variables[0]
            with self.loop(self.dim(self.ranges[v]), str(v), step=ir.Constant(I64, sizes[v])) as i:
                positions(variables[1:], {**env, v: i}, first)
        self.chunks(extent, str(along), lambda first: positions(spatial, env, as_i64(first)))

    def lane_pointers(self, tensor, index, env, var, extent):
        """(lane pointers, mask) of tensor[index] at env, var being first + lane in lane
        `lane` (first = env[var]), for the lanes whose var is below extent: var is a plain
        index of the tensor (any dimension)."""
        b, lanes, first = self.b, self.m.lanes, env[var]
        shape = self.m.tensors[tensor].shape
        k = [sympy.sympify(e) for e in index].index(var)
        stride = self.stride(shape, k) or ir.Constant(I64, 1)
        ptr, _ = self.address(tensor, index, env)
        iota = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        bytes_ = b.mul(stride, ir.Constant(I64, self.m.float_bytes))
        offsets = b.mul(self.splat_int(bytes_, lanes), iota)
        pointers = b.inttoptr(b.add(self.splat_int(b.ptrtoint(ptr, I64), lanes), offsets),
                              ir.VectorType(PTR, lanes))
        mask = b.icmp_signed("<", b.add(self.splat_int(as_i64(first), lanes), iota),
                             self.splat_int(ir.Constant(I64, extent), lanes))
        return pointers, mask

    def lane_gather(self, access, env, var):
        """access (var a plain index) with var = first + lane in each lane, by a gather."""
        vtype = ir.VectorType(self.m.float, self.m.lanes)
        pointers, mask = self.lane_pointers(access.tensor, access.index, env, var, self.ranges[var])
        gather = self.m.declare(f"llvm.masked.gather.v{self.m.lanes}{self.m.suffix}.v{self.m.lanes}p0", vtype,
                                [pointers.type, I32, mask.type, vtype])
        return self.b.call(gather, [pointers, ir.Constant(I32, self.m.float_bytes), mask, Splat(vtype, 0)])

    def lane_scatter(self, value, tensor, index, env, var, extent):
        pointers, mask = self.lane_pointers(tensor, index, env, var, extent)
        scatter = self.m.declare(f"llvm.masked.scatter.v{self.m.lanes}{self.m.suffix}.v{self.m.lanes}p0",
                                 ir.VoidType(), [value.type, pointers.type, I32, mask.type])
        self.b.call(scatter, [value, pointers, ir.Constant(I32, self.m.float_bytes), mask])

    def finish_across(self, nest, env, value, first, extent):
        """finish_chunk for an across tile's vector: one output point, lanes along
        nest.along, each stored with the stride of that index (a scatter)."""
        c = nest.comp
        if nest.store:
            self.lane_scatter(value, c.out, c.index, env, nest.along, extent)
        position = c.index.index(nest.along)
        self.epilogue(nest, env, value, first, position, lambda e, v, at: self.lane_scatter(
            v, e.out, e.index, at, e.index[position], extent))

    def finish_chunk(self, nest, env, value, first):
        """A register tile's finished chunk (the lanes from `first` of one output row):
        stored unless only the epilogue reads it, then each epilogue map computed from
        it in registers (its reads of the chunk preloaded), and stored."""
        c = nest.comp
        extent = self.ranges[c.index[-1]]
        if nest.store:
            self.masked_store(value, self.address(c.out, c.index, env)[0], first, extent)
        self.epilogue(nest, env, value, first, -1, lambda e, v, at: self.masked_store(
            v, self.address(e.out, e.index, at)[0], first, extent))

    def epilogue(self, nest, env, value, first, position, store):
        """Each map of nest's epilogue computed from the finished vector `value` (lanes
        from `first` along the output index at `position`), then store(map, its vector,
        its point)."""
        c, lanes = nest.comp, self.m.lanes
        values = {c.out: value}
        saved = (self.ranges, self.preloaded, self.vector, self.ftype, self.packed,
                 self.facts_lo, self.facts_hi)
        # The panel's copy serves the reduction only; its bounds facts are about its own
        # variables, which may share a name with an epilogue's.
        self.packed, self.facts_lo, self.facts_hi = None, set(), set()
        self.ftype = value.type
        for e in nest.epilogue:
            renamed = dict(zip(c.index, e.index))
            at = {renamed[v]: i for v, i in env.items()}
            self.ranges = {**saved[0], **{renamed[v]: saved[0][v] for v in c.index}}
            self.preloaded = {**saved[1], **{s: values[a.tensor] for s, a in e.accesses.items()
                                             if a.tensor in values}}
            self.vector = (e.index[position], first, lanes)
            values[e.out] = self.term(e, at, ())
            self.vector = None
            store(e, values[e.out], at)
        (self.ranges, self.preloaded, self.vector, self.ftype, self.packed,
         self.facts_lo, self.facts_hi) = saved

    def vector_map(self, c, env, last, guards):
        """A map along its row in vector chunks: masked loads, one masked store each."""
        b, lanes, extent = self.b, self.m.lanes, self.ranges[last]
        vtype = ir.VectorType(self.m.float, lanes)
        guards = self.unmasked(c, guards, last)

        def chunk(first):
            self.vector, self.ftype = (last, first, lanes), vtype
            value = self.term(c, env, guards)
            if c.accumulate:
                value = b.fadd(self.vector_read(_out_access(c), env), value, flags=FAST)
            ptr, _ = self.address(c.out, c.index, {**env, last: as_i64(first)})
            self.masked_store(value, ptr, first, extent)
            self.vector, self.ftype = None, self.m.float
        self.chunks(extent, str(last), chunk)

    def chunks(self, extent, name, chunk):
        """chunk(first lane) for each vector of a row of constant length: unrolled when
        short (lane masks fold to constants), else a loop."""
        lanes = self.m.lanes
        count = -(-extent // lanes)
        if count <= 4:
            for k in range(count):
                chunk(k * lanes)
        else:
            with self.loop(ir.Constant(I64, extent), name, step=ir.Constant(I64, lanes)) as first:
                chunk(first)

    def masked_store(self, value, ptr, first, extent):
        """Store the lanes of `value` whose row position first + lane is below extent."""
        b, lanes = self.b, self.m.lanes
        vtype = value.type
        suffix = "i32" if vtype.element == I32 else self.m.suffix
        store = self.m.declare(f"llvm.masked.store.v{lanes}{suffix}.p0", ir.VoidType(),
                               [vtype, PTR, I32, ir.VectorType(I1, lanes)])
        if isinstance(first, int):
            count = min(lanes, extent - first)
            mask = ir.Constant(ir.VectorType(I1, lanes), [1] * count + [0] * (lanes - count))
        else:
            iota = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
            mask = b.icmp_signed("<", b.add(self.splat_int(first, lanes), iota),
                                 self.splat_int(ir.Constant(I64, extent), lanes))
        b.call(store, [value, ptr, ir.Constant(I32, 4), mask])

    def wide_nest(self, nest, env, loops, rows=None):
        """A wide nest's loops over its outputs (the last one in tiles of nest.tile),
        for one row (in env) or for rows = (row variable, [row values]) together."""
        guards = self.enter(nest.comp)
        tiled = loops[-1:] if nest.tile > 1 else []
        self.loops(loops[:len(loops) - len(tiled)], env, lambda env, guards: self.wide_reduction(
            nest.comp, env, nest, tiled[0] if tiled else None, guards, rows), guards)

    def wide_reduction(self, c, env, nest, last, guards, rows=None):
        """A sum with vector lanes along the reduction index `nest.along`: one vector
        accumulator per output of a tile of `nest.tile` neighbours along `last` (they
        share every load that does not depend on `last`), for each row of `rows` (they
        share every load that does not depend on the row), summed across lanes at the end."""
        row_envs = [{rows[0]: r} for r in rows[1]] if rows else [{}]
        if last is None:
            self.wide_tile(c, env, [{**env, **r} for r in row_envs], nest.along, guards)
            return
        step = ir.Constant(I64, nest.tile)
        with self.loop(self.dim(self.ranges[last]), str(last), step=step) as base:
            outputs = [{**env, **r, last: self.b.add(base, ir.Constant(I64, t))}
                       for r in row_envs for t in range(nest.tile)]
            self.wide_tile(c, env, outputs, nest.along, guards, last, nest.tile,
                           rows[0] if rows else None)

    def wide_tile(self, c, env, outputs, along, guards, last=None, tile=1, row=None):
        """The sums of `outputs` (rows x tile of them, the tile's position fastest)."""
        b, lanes, extent = self.b, self.m.lanes, self.ranges[along]
        vtype = ir.VectorType(self.m.float, lanes)
        guards = self.unmasked(c, guards, along)
        self.ftype = vtype
        slots = [self.alloca(vtype) for _ in outputs]
        for slot in slots:
            b.store(self.const(0.0), slot)

        zero_beyond = self.zero_beyond_extent(c, along, extent)
        shifts = self.shifted_accesses(c, along, last, row)

        def body(inner, guards):
            def chunk(first):
                self.vector = (along, first, lanes)
                shifted = self.shifted_reads(c, shifts, {**inner, **outputs[0]}, tile)
                # Lanes past the sum's extent must add nothing.
                inside = None if zero_beyond else self.lane_condition(sympy.StrictLessThan(along, extent), {}, "<")
                for t, (slot, out) in enumerate(zip(slots, outputs)):
                    self.preloaded = {sym: values[t % tile] for sym, values in shifted.items()}
                    term = self.term(c, {**inner, **out}, guards)
                    if inside is not None:
                        term = b.select(inside, term, self.const(0.0))
                    b.store(b.fadd(b.load(slot, typ=vtype), term, flags=FAST), slot)
                self.preloaded = {}
            self.chunks(extent, str(along), chunk)
        self.loops([r for r in c.rindex if r != along], env, body, guards)
        self.vector, self.ftype = None, self.m.float
        for slot, out in zip(slots, outputs):
            total = self.lane_sum(b.load(slot, typ=vtype), lanes)
            ptr, etype = self.address(c.out, c.index, out)
            if c.accumulate:
                total = b.fadd(b.load(ptr, typ=etype), total, flags=FAST)
            b.store(total, ptr)

    def factor_rows(self, c):
        """(last index, last dimension) of each read the body is a multiple of: where
        such a read's masked load gives 0, so does the body. None when the body
        divides or takes a log: the other reads' masked loads give 0 there too, and
        0 * (x / 0) is NaN (a convolution's bias gradient fused with sqrt's derivative)."""
        if not finite_where_reads_vanish(c.body):
            return
        for sym in c.body.args if c.body.is_Mul else (c.body,):
            a = c.accesses.get(sym)
            if a is not None:
                yield sympy.expand(a.index[-1]), sympy.sympify(self.m.tensors[a.tensor].shape[-1])

    def unmasked(self, c, guards, var):
        """The guards on vector index var still needed: one saying only `i >= 0` or
        `i < dim` of a factor read's last index i is already its masked load's work (a
        convolution's input gradient, `w - kx` inside the gradient's row). Dropping it
        changes the result only where another factor is inf or NaN: a diverged step."""
        def restated(g):
            if var not in g.free_symbols or not isinstance(g, (sympy.GreaterThan, sympy.StrictLessThan)):
                return False
            difference = sympy.expand(g.lhs - g.rhs)
            return any(difference == last if isinstance(g, sympy.GreaterThan) else difference == last - dim
                       for last, dim in self.factor_rows(c))
        return tuple(g for g in guards if not restated(g))

    def zero_beyond_extent(self, c, along, extent):
        """Whether a factor of the body reads 0 in every lane past the sum's extent: a
        read indexed by `along` alone in a last dimension of exactly that extent."""
        return any(last == along and dim == extent for last, dim in self.factor_rows(c))

    def shifted_accesses(self, c, along, last, row=None):
        """Reads of a tile along `last` whose last index is along + last (+ const): the
        tile's vectors are one row shifted by 0..T-1 lanes (a filter's columns). With
        rows computed together, only reads that do not depend on the row: they serve all."""
        if last is None:
            return []
        out = []
        for sym, a in c.accesses.items():
            index = [sympy.expand(e) for e in a.index]
            if sympy.diff(index[-1], along) == 1 and sympy.diff(index[-1], last) == 1 \
                    and not any(last in e.free_symbols for e in index[:-1]) \
                    and not any(row in e.free_symbols for e in index):
                out.append(sym)
        return out

    def shifted_reads(self, c, shifts, env, count):
        """{access symbol: [vector for tile member t]}: one row read as two vectors and
        shifted t lanes by shuffles, instead of `count` unaligned loads."""
        b, lanes = self.b, self.m.lanes
        variable, first, _ = self.vector
        out = {}
        for sym in shifts:
            low = self.vector_read(c.accesses[sym], env)
            self.vector = (variable, b.add(as_i64(first), ir.Constant(I64, lanes)), lanes)
            high = self.vector_read(c.accesses[sym], env)
            self.vector = (variable, first, lanes)
            out[sym] = [low] + [b.shuffle_vector(low, high, ir.Constant(ir.VectorType(I32, lanes),
                                                                         list(range(t, t + lanes))))
                                for t in range(1, count)]
        return out

    def lane_sum(self, v, lanes):
        """The sum of a vector's lanes by halving shuffles."""
        b = self.b
        while lanes > 1:
            half = lanes // 2
            low = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half))))
            high = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half, lanes))))
            v, lanes = b.fadd(low, high, flags=FAST), half
        return b.extract_element(v, ir.Constant(I32, 0))

    def scalar_outer_reduction(self, c, env, last, guards):
        if not c.accumulate:
            def zero(env, _):
                ptr, _ = self.address(c.out, c.index, env)
                self.b.store(ir.Constant(self.m.float, 0.0), ptr)
            self.loops([last], env, zero)

        def body(env, guards):
            ptr, etype = self.address(c.out, c.index, env)
            self.b.store(self.b.fadd(self.b.load(ptr, typ=etype), self.term(c, env, guards), flags=FAST), ptr)
        self.loops(list(c.rindex) + [last], env, body, guards)


def _out_access(c):
    return Access(c.out, c.index)
