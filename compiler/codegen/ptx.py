"""The same loop nests for NVIDIA GPUs: LLVM IR for nvptx64-nvidia-cuda, then PTX text.

Only what differs from the CPU emitter is here:
  * each loop nest is its own `.entry` kernel; its output elements are spread over
    the grid (a grid-stride loop over the flattened output index), and each thread
    runs the nest's reduction in registers — so every launch is fully parallel and
    needs no synchronisation (accumulating nests run as later launches);
  * an entry point is not a function but a launch list, run by runtime/cuda.py with
    every buffer resident on the device;
  * exp and log use the hardware's ex2/lg2 (there is no libm on the device).
"""
import math

import llvmlite.binding as llvm
import llvmlite.ir as ir
import sympy

from .llvm import I64, PTR, KernelEmitter, LLVMEmitter

I32 = ir.IntType(32)
DATA_LAYOUT = "e-i64:64-i128:128-v16:16-v32:32-n16:32:64"
ARCHES = ("sm_80", "sm_90")
PTX_VERSION = "+ptx80"
BLOCK = 256


class PTXEmitter(LLVMEmitter):
    triple = "nvptx64-nvidia-cuda"

    def __init__(self, tensors, size_names, dtype="f32", name="symnet", arch="sm_80"):
        if dtype != "f32":
            raise ValueError("the PTX target computes in float32 (dtype='f32')")
        if arch not in ARCHES:
            raise ValueError(f"unsupported GPU architecture {arch!r}; expected one of {', '.join(ARCHES)}")
        super().__init__(tensors, size_names, dtype, name)
        self.module.data_layout = DATA_LAYOUT
        self.arch = arch
        self.launches = {}

    def entry(self, name, kernels, buffer_index):
        launches = []
        for kernel in kernels:
            for nest in kernel.nests:
                launches.append(self.gpu_kernel(nest))
        self.launches[name] = launches

    kernel_emitter = None        # set below: GPUKernelEmitter
    extra_args = []

    def gpu_kernel(self, nest):
        c = nest.comp
        buffers = []
        for t in [c.out] + c.reads + ([c.argmax] if c.argmax else []):
            if t not in buffers:
                buffers.append(t)
        args = [PTR] * (1 + len(buffers)) + self.extra_args
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), args),
                         f"k{self.kernel_count}_{_identifier(c.out)}")
        self.kernel_count += 1
        self.mark_kernel(fn)
        for arg in fn.args[1:1 + len(buffers)]:
            arg.add_attribute("noalias")
        self.kernel_emitter(self, fn, dict(zip(buffers, fn.args[1:])), None).emit_nest(c)
        total = sympy.Mul(*[sympy.sympify(d) for d in self.tensors[c.out].shape])
        return {"kernel": fn.name, "buffers": buffers,
                "total": int(total) if total.is_Integer else str(total)}

    def mark_kernel(self, fn):
        fn.calling_convention = "ptx_kernel"

    # ---- device math ------------------------------------------------------------------
    def _nvvm(self, name):
        if name in self.module.globals:
            return self.module.globals[name]
        return ir.Function(self.module, ir.FunctionType(self.float, [self.float]), name)

    def exp(self, b, x):
        scaled = b.fmul(x, ir.Constant(self.float, 1.0 / math.log(2.0)))
        return b.call(self._nvvm("llvm.nvvm.ex2.approx.f"), [scaled])

    def log(self, b, x):
        return b.fmul(b.call(self._nvvm("llvm.nvvm.lg2.approx.f"), [x]), ir.Constant(self.float, math.log(2.0)))

    def pow(self, b, x, y):
        return b.call(self._nvvm("llvm.nvvm.ex2.approx.f"), [b.fmul(y, b.call(self._nvvm("llvm.nvvm.lg2.approx.f"), [x]))])

    def ptx(self, opt_level=2):
        return emit_ptx(self.ir(), self.arch, opt_level)


class GPUKernelEmitter(KernelEmitter):
    def special(self, name):
        """A thread/block index register (tid, ntid, ctaid, nctaid)."""
        full = f"llvm.nvvm.read.ptx.sreg.{name}.x"
        fn = self.m.module.globals.get(full) or ir.Function(self.m.module, ir.FunctionType(I32, []), full)
        return self.b.zext(self.b.call(fn, []), I64)

    def emit_nest(self, c):
        self.ranges = {v: e for v, e in zip(c.index, self.m.tensors[c.out].shape)}
        self.ranges.update(zip(c.rindex, c.rextent))
        self.facts_lo, self.facts_hi = set(), set()
        b = self.b
        block = self.special("ntid")
        first = b.add(b.mul(self.special("ctaid"), block), self.special("tid"))
        stride = b.mul(self.special("nctaid"), block)
        total = ir.Constant(I64, 1)
        for d in self.m.tensors[c.out].shape:
            total = b.mul(total, self.dim(d))
        with self.loop(total, "element", start=first, step=stride) as linear:
            env = {}
            rest = linear
            for v, d in reversed(list(zip(c.index, self.m.tensors[c.out].shape))):
                env[v] = b.urem(rest, self.dim(d))
                rest = b.udiv(rest, self.dim(d))
            self.point(c, env, c.guards)
        b.ret_void()


PTXEmitter.kernel_emitter = GPUKernelEmitter


def _identifier(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name)[:40]


_initialized = False


def emit_ptx(ir_text, arch="sm_80", opt_level=2):
    """Optimise the NVVM IR and let LLVM's NVPTX backend print PTX text."""
    global _initialized
    if not _initialized:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _initialized = True
    target = llvm.Target.from_triple(PTXEmitter.triple)
    machine = target.create_target_machine(cpu=arch, features=PTX_VERSION, opt=opt_level)
    module = llvm.parse_assembly(ir_text)
    module.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
    return machine.emit_assembly(module)
