"""The GPU kernels run on the CPU, to test the grid mapping where no GPU is present.

Each PTX kernel is emitted for the host as a function computing one *block*:
`kernel(sizes, buffers..., ctaid, nctaid)`. Its phases (ptx.py) become loops over the
block's BLOCK threads, run one after another, so a barrier between phases holds by
construction; shared memory is an array on the stack of the block's call, and values
a thread keeps across phases (a tile's accumulators) are arrays indexed by thread.
Each entry point calls every launch's kernel for each of a small grid of blocks (so
grid-stride loops wrap), in launch order: an ordinary host module with the CPU
Program's entry signature, checked against the reference evaluator like the CPU backend.
"""
from contextlib import contextmanager

import llvmlite.ir as ir

from ..gpu_schedule import BLOCK
from .llvm import I64, PTR, KernelEmitter, LLVMEmitter
from .ptx import GPUKernelEmitter, PTXEmitter

GRID = 3


class EmulatedKernelEmitter(GPUKernelEmitter):
    def special(self, name):
        return {"ctaid": self.fn.args[-2], "nctaid": self.fn.args[-1]}[name]

    @contextmanager
    def threads(self):
        with self.loop(ir.Constant(I64, BLOCK), "thread") as tid:
            yield tid

    def sync(self):
        pass                       # phases run one after another

    def shared(self, count):
        return self.array(count)

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
