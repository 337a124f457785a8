"""The GPU kernels run on the CPU, to test the grid mapping where no GPU is present.

Each PTX kernel is emitted for the host as a function computing one *block*:
`kernel(sizes, buffers..., ctaid, nctaid)`. Its phases (ptx.py) become loops over the
block's BLOCK threads, run one after another, so a barrier between phases holds by
construction; shared memory is an array on the stack of the block's call, and values
a thread keeps across phases (a tile's accumulators) are arrays indexed by thread.
Each entry point calls every launch's kernel for each of a small grid of blocks (so
grid-stride loops wrap), in launch order: an ordinary host module with the CPU
Program's entry signature, checked against the reference evaluator like the CPU backend.

The emulation also checks what compute-sanitizer checks on a GPU:
  * racecheck: the phases run in sequence, so a missing barrier would go unseen in the
    results. Each shared slot keeps stamps (epoch, thread) of its last writer and last
    reader, the epoch counting the block's barriers so far; touching a slot that
    another thread wrote in the same epoch, or writing one that another thread read in
    it, is a race;
  * memcheck: every address into a tensor lies inside that tensor.
Each kind is counted in the module, with the number of the first kernel it happened in
(`symnet_races()`, `symnet_first_race()`, and `..._out_of_bounds`); `sanitizer_report`
reads them.
"""
from contextlib import contextmanager

import llvmlite.ir as ir
import sympy

from ..gpu_schedule import BLOCK
from .llvm import I64, PTR, KernelEmitter, LLVMEmitter
from .ptx import GPUKernelEmitter, PTXEmitter

GRID = 3
CHECKS = ("races", "out_of_bounds")
WHAT = {"races": "races", "out_of_bounds": "out-of-bounds accesses"}
MANY = BLOCK                       # a reader stamp's thread part: read by several threads


class EmulatedKernelEmitter(GPUKernelEmitter):
    def __init__(self, *args):
        super().__init__(*args)
        self.tid = None            # the thread of the phase being emitted
        self.stamps = {}           # shared array -> (last writer's, last reader's) stamps
        with self.b.goto_entry_block():
            self.epoch = self.b.alloca(I64)
            self.b.store(ir.Constant(I64, 0), self.epoch)

    def special(self, name):
        return {"ctaid": self.fn.args[-2], "nctaid": self.fn.args[-1]}[name]

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
            for s in stamps:       # all bits set: stamp -1, before any epoch
                self.b.call(memset, [s, ir.Constant(ir.IntType(8), 255), ir.Constant(I64, 8 * count),
                                     ir.Constant(ir.IntType(1), 0)])
        self.stamps[memory] = stamps
        return memory

    # ---- racecheck ----------------------------------------------------------------------------
    def access(self, memory, k, write):
        """Check this thread's access to slot k, then stamp it."""
        assert self.tid is not None, "shared memory is touched only inside a phase"
        b = self.b
        writer, reader = (b.gep(s, [k], inbounds=True, source_etype=I64) for s in self.stamps[memory])
        base = b.mul(b.load(self.epoch, typ=I64), ir.Constant(I64, BLOCK + 1))
        mine = b.add(base, self.tid)

        def other(slot):           # stamped in this epoch by another thread
            stamp = b.load(slot, typ=I64)
            return b.and_(b.icmp_signed(">=", stamp, base), b.icmp_signed("!=", stamp, mine))
        racy = other(writer)
        if write:
            racy = b.or_(racy, other(reader))
            b.store(mine, writer)
        else:
            b.store(b.select(other(reader), b.add(base, ir.Constant(I64, MANY)), mine), reader)
        self.report("races", racy)

    def report(self, check, failed):
        """Where `failed` holds, count one failure of `check` (one of CHECKS)."""
        b = self.b
        with b.if_then(failed, likely=False):
            count, first = self.m.counters[check]
            b.store(b.add(b.load(count, typ=I64), ir.Constant(I64, 1)), count)
            number = ir.Constant(I64, int(self.fn.name[1:].split("_")[0]))
            unset = b.icmp_signed("<", b.load(first, typ=I64), ir.Constant(I64, 0))
            b.store(b.select(unset, number, b.load(first, typ=I64)), first)

    # ---- memcheck -----------------------------------------------------------------------------
    def address(self, tensor, index, env):
        ptr, etype = super().address(tensor, index, env)
        b, shape = self.b, self.m.tensors[tensor].shape
        count = self.dim(sympy.Mul(*[sympy.sympify(d) for d in shape]))
        offset = b.sub(b.ptrtoint(ptr, I64), b.ptrtoint(self.pointers[tensor], I64))
        bytes_ = b.mul(count, ir.Constant(I64, 4))
        self.report("out_of_bounds", b.or_(b.icmp_signed("<", offset, ir.Constant(I64, 0)),
                                           b.icmp_signed(">=", offset, bytes_)))
        return ptr, etype

    def load_shared(self, memory, k):
        self.access(memory, k, write=False)
        return super().load_shared(memory, k)

    def store_shared(self, value, memory, k):
        self.access(memory, k, write=True)
        super().store_shared(value, memory, k)

    def private(self, count):
        base = self.array(BLOCK * count)
        return lambda tid, k: self.at(base, self.b.add(self.b.mul(tid, ir.Constant(I64, count)),
                                                       ir.Constant(I64, k)))


class EmulatedGPUEmitter(PTXEmitter):
    triple = LLVMEmitter.triple
    kernel_emitter = EmulatedKernelEmitter
    extra_args = [I64] * 2

    def __init__(self, tensors, size_names, dtype="f32", name="symnet"):
        super().__init__(tensors, size_names, dtype, name, arch="sm_80")
        self.module.data_layout = ""
        self.counters = {check: (self.counter(f"symnet_{check}", 0), self.counter(f"symnet_first_{check}", -1))
                         for check in CHECKS}

    def counter(self, name, initial):
        """A module-wide i64, and a function of the same name that reads it."""
        value = ir.GlobalVariable(self.module, I64, f"{name}_value")
        value.initializer = ir.Constant(I64, initial)
        fn = ir.Function(self.module, ir.FunctionType(I64, []), name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(b.load(value, typ=I64))
        return value

    def mark_kernel(self, fn):
        fn.linkage = "internal"
        fn.attributes.add("noinline")          # keeps the emulation module quick to compile

    def exp(self, b, x):
        return LLVMEmitter.exp(self, b, x)

    def log(self, b, x):
        return LLVMEmitter.log(self, b, x)

    def pow(self, b, x, y):
        return LLVMEmitter.pow(self, b, x, y)

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
        for launch in self.launches[name]:
            kernel = self.module.globals[launch["kernel"]]
            pointers = []
            for t in launch["buffers"]:
                slot = b.gep(table, [ir.Constant(I64, buffer_index[t])], inbounds=True, source_etype=PTR)
                pointers.append(b.load(slot, typ=PTR))
            with host.loop(ir.Constant(I64, GRID), "block") as block:
                b.call(kernel, [sizes] + pointers + [block, ir.Constant(I64, GRID)])
        b.ret_void()


def sanitizer_report(program):
    """None, or a line on the races and out-of-bounds accesses a program of this
    backend has met so far (over all its modules: entries compiled later have their
    own counters)."""
    import ctypes
    found = []
    for check in CHECKS:
        count, first = 0, None
        for library in program.libraries:
            seen = library.function(f"symnet_{check}", ctypes.c_int64, [])()
            if seen and first is None:
                number = library.function(f"symnet_first_{check}", ctypes.c_int64, [])()
                first = next(launch["kernel"] for launches in program.spec["launches"].values()
                             for launch in launches if launch["kernel"].startswith(f"k{number}_"))
            count += seen
        if count:
            found.append(f"{count} {WHAT[check]} (the first in kernel {first})")
    return "; ".join(found) or None
