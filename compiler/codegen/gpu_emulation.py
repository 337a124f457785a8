"""The GPU kernels run on the CPU, to test the grid mapping where no GPU is present.

Each PTX kernel is emitted for the host with its four index registers (tid, ntid,
ctaid, nctaid) as arguments; each entry point loops over a small grid (few blocks and
threads, so that the grid-stride loop wraps) and calls the kernels in launch order.
The result is an ordinary host module with the CPU Program's entry signature, so it
is checked against the reference evaluator exactly like the CPU backend.
"""
import llvmlite.ir as ir

from .llvm import I64, PTR, KernelEmitter, LLVMEmitter
from .ptx import GPUKernelEmitter, PTXEmitter

GRID, BLOCK = 3, 32


class EmulatedKernelEmitter(GPUKernelEmitter):
    def special(self, name):
        position = {"tid": 0, "ntid": 1, "ctaid": 2, "nctaid": 3}[name]
        return self.fn.args[-4 + position]


class EmulatedGPUEmitter(PTXEmitter):
    triple = LLVMEmitter.triple
    kernel_emitter = EmulatedKernelEmitter
    extra_args = [I64] * 4

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
                with host.loop(ir.Constant(I64, BLOCK), "thread") as thread:
                    b.call(kernel, [sizes] + pointers + [thread, ir.Constant(I64, BLOCK), block,
                                                         ir.Constant(I64, GRID)])
        b.ret_void()
