"""The GPU kernels run on the CPU, to test the grid mapping where no GPU is present.

Each PTX kernel is emitted for the host as a function computing one *block*:
`kernel(sizes, buffers..., ctaid, nctaid, stamp_table)` (the table: below). Its phases
(ptx.py) become loops over the block's BLOCK threads, run one after another, so a
barrier between phases holds by construction; shared memory is an array on the stack of the block's call, and values
a thread keeps across phases (a tile's accumulators) are arrays indexed by thread.
Each entry point calls every launch's kernel for each of a small grid of blocks (so
grid-stride loops wrap), in launch order: an ordinary host module with the CPU
Program's entry signature, checked against the reference evaluator like the CPU backend.

The emulation also checks what compute-sanitizer checks on a GPU, and a little more:
  * races: the phases run in sequence, so a missing barrier would not change the
    results; instead every shared slot, and every element of a tensor the launch
    writes, keeps a stamp (barrier epoch, block, thread) of its last writer and of its
    last reader (or "several threads of this block", or "several blocks"). Two
    accesses are ordered if one thread made both, or one block made them with a
    barrier between; blocks are never ordered with each other. A read unordered with
    the last write, or a write unordered with the last read or write, is a race: in
    shared memory (a missing barrier) or in global memory (a tail fused into a launch
    where another thread reads or writes the same element);
  * memcheck: every address into a tensor lies inside that tensor.
The global stamps are arrays the entry allocates, zeroed, per launch: the kernel's last
argument `stamp_table` holds one per buffer it writes (null for the others; a null
table turns the global check off). Each kind of failure is counted in the module with the
name of the first kernel it happened in (`symnet_shared_races()`,
`symnet_first_shared_races()`, ...); `sanitizer_report` reads them.
"""
import ctypes
from contextlib import contextmanager

import llvmlite.ir as ir
import sympy

from ..gpu_schedule import BLOCK
from .kernel import I64, PTR, KernelEmitter
from .llvm import LLVMEmitter
from .ptx import GPUKernelEmitter, PTXEmitter

GRID = 3
CHECKS = ("shared_races", "global_races", "out_of_bounds")
WHAT = {"shared_races": "races in shared memory", "global_races": "races in global memory",
        "out_of_bounds": "out-of-bounds accesses"}
# A stamp: the epoch in the high 32 bits, 1 + block * (BLOCK + 1) + thread in the low
# ones; 0 is "never", thread MANY "several threads of the block", ALL "several blocks".
MANY, ALL = BLOCK, -1


def element_count(shape):
    return sympy.Mul(*[sympy.sympify(d) for d in shape])


class EmulatedKernelEmitter(GPUKernelEmitter):
    def __init__(self, *args):
        super().__init__(*args)
        self.tid = None            # the thread of the phase being emitted
        self.shared_stamps = {}    # shared array -> (last writer's, last reader's) stamps
        self.global_stamps = {}    # written tensor -> its stamps (writers', then readers'), or null
        self.written = self.kernel.written
        with self.b.goto_entry_block():
            self.epoch = self.b.alloca(I64)
            self.b.store(ir.Constant(I64, 0), self.epoch)

    def special(self, name):
        return {"ctaid": self.fn.args[-3], "nctaid": self.fn.args[-2]}[name]

    @contextmanager
    def threads(self):
        with self.loop(ir.Constant(I64, BLOCK), "thread") as tid:
            self.tid = tid
            yield tid
        self.tid = None

    def sync(self):
        # The phases run one after another anyway; a barrier only opens a new epoch.
        assert self.tid is None, "a barrier inside a phase: not every thread might reach it"
        self.b.store(self.b.add(self.b.load(self.epoch, typ=I64), ir.Constant(I64, 1)), self.epoch)

    def shared(self, count):
        memory = self.array(count)
        memset = self.m.declare("llvm.memset.p0.i64", ir.VoidType(), [PTR, ir.IntType(8), I64, ir.IntType(1)])
        with self.b.goto_entry_block():
            stamps = [self.b.alloca(I64, size=ir.Constant(I64, count)) for _ in "wr"]
            for s in stamps:
                self.b.call(memset, [s, ir.Constant(ir.IntType(8), 0), ir.Constant(I64, 8 * count),
                                     ir.Constant(ir.IntType(1), 0)])
        self.shared_stamps[memory] = stamps
        return memory

    # ---- races --------------------------------------------------------------------------------
    def stamp(self, thread):
        b = self.b
        low = b.add(b.add(b.mul(self.special("ctaid"), ir.Constant(I64, BLOCK + 1)), thread), ir.Constant(I64, 1))
        return b.or_(b.shl(b.load(self.epoch, typ=I64), ir.Constant(I64, 32)), low)

    def access(self, writer, reader, check, write):
        """Check this thread's access against the slot's stamps, then stamp it."""
        assert self.tid is not None, "memory is touched only inside a phase"
        racy = self.b.call(self.m.stamp_checker(write), [writer, reader, self.stamp(self.tid)])
        self.report(check, racy)

    def report(self, check, failed):
        """Where `failed` holds, count one failure of `check` (one of CHECKS)."""
        b = self.b
        with b.if_then(failed, likely=False):
            count, first = self.m.counters[check]
            b.store(b.add(b.load(count, typ=I64), ir.Constant(I64, 1)), count)
            unset = b.icmp_unsigned("==", b.load(first, typ=PTR), ir.Constant(PTR, None))
            b.store(b.select(unset, self.m.kernel_name(self.fn.name), b.load(first, typ=PTR)), first)

    # ---- memcheck, and races on what the launch writes --------------------------------------
    def address(self, tensor, index, env):
        ptr, etype = super().address(tensor, index, env)
        b, shape = self.b, self.m.tensors[tensor].shape
        count = self.dim(element_count(shape))
        element = b.sdiv(b.sub(b.ptrtoint(ptr, I64), b.ptrtoint(self.pointers[tensor], I64)),
                         ir.Constant(I64, 4))                  # f32 and i32 alike
        outside = b.or_(b.icmp_signed("<", element, ir.Constant(I64, 0)), b.icmp_signed(">=", element, count))
        self.report("out_of_bounds", outside)
        if tensor in self.written:
            stamps = self.global_stamps_of(tensor)
            checked = b.and_(b.not_(outside), b.icmp_unsigned("!=", stamps, ir.Constant(PTR, None)))
            with b.if_then(checked):
                writer = b.gep(stamps, [element], inbounds=True, source_etype=I64)
                reader = b.gep(stamps, [b.add(count, element)], inbounds=True, source_etype=I64)
                self.access(writer, reader, "global_races", self.storing)
        return ptr, etype

    storing = False                # set while a store computes its address

    @contextmanager
    def writing(self):
        self.storing = True
        try:
            yield
        finally:
            self.storing = False

    def store(self, c, env, value):
        with self.writing():
            super().store(c, env, value)

    def store_argmax(self, c, env, position):
        with self.writing():
            super().store_argmax(c, env, position)

    def store_part(self, value, position):
        with self.writing():
            super().store_part(value, position)

    def global_stamps_of(self, tensor):
        """The stamps of a written tensor (null where the caller passed no table)."""
        if tensor not in self.global_stamps:
            b, table = self.b, self.fn.args[-1]
            with b.goto_entry_block():
                null = b.alloca(PTR)
                b.store(ir.Constant(PTR, None), null)
                k = ir.Constant(I64, list(self.pointers).index(tensor))
                given = b.icmp_unsigned("!=", table, ir.Constant(PTR, None))
                slot = b.select(given, b.gep(table, [k], inbounds=True, source_etype=PTR), null)
                self.global_stamps[tensor] = b.load(slot, typ=PTR)
        return self.global_stamps[tensor]

    def load_shared(self, memory, k):
        self.access(*self.shared_slot(memory, k), "shared_races", write=False)
        return super().load_shared(memory, k)

    def store_shared(self, value, memory, k):
        self.access(*self.shared_slot(memory, k), "shared_races", write=True)
        super().store_shared(value, memory, k)

    def shared_slot(self, memory, k):
        """The writer's and the reader's stamp of shared slot k."""
        return [self.b.gep(s, [k], inbounds=True, source_etype=I64) for s in self.shared_stamps[memory]]

    def private(self, count):
        base = self.array(BLOCK * count)
        return lambda tid, k: self.at(base, self.b.add(self.b.mul(tid, ir.Constant(I64, count)),
                                                       ir.Constant(I64, k)))


class EmulatedGPUEmitter(PTXEmitter):
    triple = LLVMEmitter.triple
    kernel_emitter = EmulatedKernelEmitter
    extra_args = [I64, I64, PTR]

    def __init__(self, tensors, size_names, dtype="f32", name="symnet"):
        super().__init__(tensors, size_names, dtype, name, arch="sm_80")
        self.module.data_layout = ""
        self.counters = {check: (self.counter(f"symnet_{check}", I64, ir.Constant(I64, 0)),
                                 self.counter(f"symnet_first_{check}", PTR, ir.Constant(PTR, None)))
                         for check in CHECKS}

    def stamp_checker(self, write):
        """The function (writer's slot, reader's slot, this access's stamp) -> racy,
        which also stamps the slot: one per module, so an access costs a call, not
        thirty instructions of IR at every shared load."""
        name = "symnet_stamp_" + ("write" if write else "read")
        if name in self.module.globals:
            return self.module.globals[name]
        fn = ir.Function(self.module, ir.FunctionType(ir.IntType(1), [PTR, PTR, I64]), name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        writer, reader, mine = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        low = ir.Constant(I64, 0xFFFFFFFF)

        def same(part, x, y):
            return b.icmp_unsigned("==", part(x), part(y))

        def thread(stamp):
            return b.and_(stamp, low)

        def block(stamp):
            return b.udiv(b.sub(thread(stamp), ir.Constant(I64, 1)), ir.Constant(I64, BLOCK + 1))

        def epoch(stamp):
            return b.lshr(stamp, ir.Constant(I64, 32))

        def ordered(stamp):        # that access happened before this one, for sure
            never = b.icmp_unsigned("==", stamp, ir.Constant(I64, 0))
            earlier_phase = b.and_(same(block, stamp, mine), b.not_(same(epoch, stamp, mine)))
            return b.or_(never, b.or_(same(thread, stamp, mine), earlier_phase))
        last_write, last_read = b.load(writer, typ=I64), b.load(reader, typ=I64)
        racy = b.not_(ordered(last_write))
        if write:
            racy = b.or_(racy, b.not_(ordered(last_read)))
            b.store(mine, writer)
        else:
            # Several readers: "several threads of this block" in this phase, else "several blocks".
            many = b.or_(b.shl(epoch(mine), ir.Constant(I64, 32)),
                         b.add(b.mul(block(mine), ir.Constant(I64, BLOCK + 1)), ir.Constant(I64, 1 + MANY)))
            this_phase = b.and_(same(block, last_read, mine), same(epoch, last_read, mine))
            b.store(b.select(ordered(last_read), mine,
                             b.select(this_phase, many, ir.Constant(I64, ALL))), reader)
        b.ret(racy)
        return fn

    def counter(self, name, type, initial):
        """A module-wide variable, and a function of the same name that reads it."""
        value = ir.GlobalVariable(self.module, type, f"{name}_value")
        value.initializer = initial
        fn = ir.Function(self.module, ir.FunctionType(type, []), name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(b.load(value, typ=type))
        return value

    def kernel_name(self, kernel):
        """A kernel's name as a C string in the module, for the sanitizer's report."""
        name = f"{kernel}_name"
        if name not in self.module.globals:
            text = bytearray(kernel.encode() + b"\0")
            value = ir.GlobalVariable(self.module, ir.ArrayType(ir.IntType(8), len(text)), name)
            value.initializer = ir.Constant(value.value_type, text)
            value.global_constant = True    # not internal: runtime/jit.py may split the module
        return self.module.globals[name]

    def mark_kernel(self, fn):
        fn.linkage = "internal"
        fn.attributes.add("noinline")          # keeps the emulation module quick to compile

    def exp(self, b, x):
        return LLVMEmitter.exp(self, b, x)

    def log(self, b, x):
        return LLVMEmitter.log(self, b, x)

    def exp2(self, b, x):           # the GPU's pow formula, with the host's exp2 and log2
        return b.call(self.intrinsic("exp2", 1, x.type), [x])

    def log2(self, b, x):
        return b.call(self.intrinsic("log2", 1, x.type), [x])

    def entry(self, name, kernels, buffer_index):
        super().entry(name, kernels, buffer_index)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, PTR]), name)
        sizes, table, part = fn.args[:3]
        host = KernelEmitter(self, fn, {}, None)     # for its loop builder
        b = host.b
        # The emulation is sequential: part 0 runs every launch, other parts return.
        work, idle = fn.append_basic_block("work"), fn.append_basic_block("idle")
        b.cbranch(b.icmp_signed("==", part, ir.Constant(I64, 0)), work, idle)
        b.position_at_end(idle)
        b.ret_void()
        b.position_at_end(work)
        calloc = self.declare("calloc", PTR, [I64, I64])
        free = self.declare("free", ir.VoidType(), [PTR])
        for k, launch in zip(kernels, self.launches[name]):
            kernel = self.module.globals[launch["kernel"]]
            pointers = []
            for t in launch["buffers"]:
                slot = b.gep(table, [ir.Constant(I64, buffer_index[t])], inbounds=True, source_etype=PTR)
                pointers.append(b.load(slot, typ=PTR))
            # Zeroed stamps (writers', then readers') for each tensor the launch writes.
            with b.goto_entry_block():
                stamp_table = b.alloca(PTR, size=ir.Constant(I64, len(pointers)))
            arrays, written = [], k.written
            for j, t in enumerate(launch["buffers"]):
                array = ir.Constant(PTR, None)
                if t in written:
                    count = host.int_expr(element_count(self.tensors[t].shape), {})
                    array = b.call(calloc, [b.mul(count, ir.Constant(I64, 2)), ir.Constant(I64, 8)])
                    arrays.append(array)
                b.store(array, b.gep(stamp_table, [ir.Constant(I64, j)], inbounds=True, source_etype=PTR))
            with host.loop(ir.Constant(I64, GRID), "block") as block:
                b.call(kernel, [sizes] + pointers + [block, ir.Constant(I64, GRID), stamp_table])
            for array in arrays:
                b.call(free, [array])
        b.ret_void()


def sanitizer_report(program):
    """None, or a line on the races and out-of-bounds accesses a program of this
    backend has met so far (over all its modules: entries compiled later have their
    own counters)."""
    found = []
    for check in CHECKS:
        count, first = 0, None
        for library in program.libraries:
            seen = library.function(f"symnet_{check}", ctypes.c_int64, [])()
            if seen and first is None:
                first = ctypes.string_at(library.function(f"symnet_first_{check}",
                                                          ctypes.c_void_p, [])()).decode()
            count += seen
        if count:
            found.append(f"{count} {WHAT[check]} (the first in kernel {first})")
    return "; ".join(found) or None
