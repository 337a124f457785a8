"""A fake of cuda-bindings' driver module for runtime/cuda.py where there is no GPU: its
kernels are the emulation backend's (compiler/codegen/gpu_emulation.py), run on this CPU
block by block. tests/test_ptx.py runs CudaProgram over it; tests/fake_gpu/ makes a whole
`cuda.bindings.driver` module of it, for a dry run of benchmarks/gpu_check.sh.
"""
import ctypes
import enum
import functools
import itertools
import re
import threading
import time

import llvmlite.binding as llvm

from compiler.native import compile_ir
from runtime.cuda import BLOCK
from runtime.jit import NativeLibrary

ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)")


class FakeDriver:
    """The part of cuda-bindings' driver module that runtime/cuda.py calls, run on the
    host: device memory is host memory, and a module's kernels are the emulation
    backend's compiled kernels, called once per block of each launch's grid.
    It refuses what a real driver would refuse: copies outside an allocation, kernel
    pointers into no allocation, calls that need a current context without one (as
    on a GPU, the current context is the calling thread's: cuCtxSetCurrent binds it to
    that thread only)."""

    class CUresult(enum.IntEnum):
        CUDA_SUCCESS = 0
        CUDA_ERROR_INVALID_VALUE = 1
        CUDA_ERROR_NO_DEVICE = 100
        CUDA_ERROR_INVALID_CONTEXT = 201
        CUDA_ERROR_INVALID_PTX = 218
        CUDA_ERROR_NOT_FOUND = 500
        CUDA_ERROR_ILLEGAL_ADDRESS = 700
        CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701

    class CUjit_option(enum.IntEnum):
        CU_JIT_ERROR_LOG_BUFFER = 5
        CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6

    class CUdevice_attribute(enum.IntEnum):
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR = 39
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

    ATTRIBUTES = {16: 2, 39: 512, 75: 9, 76: 0}    # 2 SMs x 512 threads: grids of 1..4 blocks

    class CUdeviceptr:                              # like cuda-bindings': an object, int() it
        def __init__(self, address):
            self.address = address

        def __int__(self):
            return self.address

    def __init__(self, kernels=None, devices=1, fail=None):
        self.kernels = kernels or {}    # name -> kernel(sizes, buffers..., ctaid, nctaid): one block
        self.devices = devices
        self.fail = fail or {}          # call name -> the CUresult it returns instead
        self.allocations = {}           # address -> ctypes buffer
        self._current = threading.local()  # .context: each thread's current context
        self.grids = []                 # (kernel, blocks) of every launch
        self.waits = []                 # the nanoseconds of each symnet_wait launch
        self.instantiated = 0           # graphs instantiated

    @property
    def context(self):
        """The calling thread's current context, None before it sets one."""
        return getattr(self._current, "context", None)

    def _reply(self, call, *values, status=CUresult.CUDA_SUCCESS):
        status = self.fail.get(call, status)
        return (status, *values) if status == 0 else (status, *(None for _ in values))

    def _inside(self, address, nbytes):
        return any(start <= address and address + nbytes <= start + len(buffer)
                   for start, buffer in self.allocations.items())

    def _memory(self, call, address, nbytes, move=None):
        if self.context is None:
            return self._reply(call, status=self.CUresult.CUDA_ERROR_INVALID_CONTEXT)
        if not isinstance(address, int) or not self._inside(address, nbytes):
            return self._reply(call, status=self.CUresult.CUDA_ERROR_INVALID_VALUE)
        move()
        return self._reply(call)

    # device and context
    def cuInit(self, flags):
        return self._reply("cuInit", status=100 if self.devices == 0 else 0)

    def cuDriverGetVersion(self):
        return self._reply("cuDriverGetVersion", 13000)

    def cuDeviceGetCount(self):
        return self._reply("cuDeviceGetCount", self.devices)

    def cuDeviceGet(self, ordinal):
        return self._reply("cuDeviceGet", ("device", ordinal))

    def cuDevicePrimaryCtxRetain(self, device):
        return self._reply("cuDevicePrimaryCtxRetain", ("context", device))

    def cuCtxSetCurrent(self, context):
        self._current.context = context
        return self._reply("cuCtxSetCurrent")

    def cuCtxSynchronize(self):
        return self._reply("cuCtxSynchronize", status=0 if self.context else 201)

    def cuDeviceGetName(self, length, device):
        return self._reply("cuDeviceGetName", b"Fake GPU".ljust(length, b"\0"))

    def cuDeviceGetAttribute(self, attribute, device):
        return self._reply("cuDeviceGetAttribute", self.ATTRIBUTES[int(attribute)])

    def cuGetErrorName(self, status):
        return self._reply("cuGetErrorName", self.CUresult(status).name.encode())

    def cuGetErrorString(self, status):
        return self._reply("cuGetErrorString", b"the fake driver refused")

    # modules and memory
    def cuModuleLoadData(self, image):
        text = ctypes.string_at(image).decode()      # NUL-terminated PTX
        entries = {kernel: params.count(".param") for kernel, params in ENTRY.findall(text)}
        if not entries:
            return self._reply("cuModuleLoadData", None, status=218)
        if self.context is None:                     # a module is loaded into the current one
            return self._reply("cuModuleLoadData", None, status=201)
        # runtime/cuda.py's symnet_wait only waits, on a GPU: nothing to do here
        kernels = {**self.module_kernels(text), "symnet_wait": lambda *args: None}
        return self._reply("cuModuleLoadData", {name: (name, kernels.get(name), count)
                                                for name, count in entries.items()})

    def cuModuleLoadDataEx(self, image, count, options, values):
        """cuModuleLoadData with an error log: the only options runtime/cuda.py passes."""
        assert count == 2 and list(options) == [5, 6] and len(values[0]) == values[1]
        status, module = self.cuModuleLoadData(image)
        if status == self.CUresult.CUDA_ERROR_INVALID_PTX:
            message = b"ptxas fatal   : no .entry in the module\n"
            values[0][:len(message)] = message
        return status, module

    def module_kernels(self, ptx):
        """name -> host kernel for a module's PTX: the kernels given to the constructor."""
        return self.kernels

    def cuModuleGetFunction(self, module, name):
        function = module.get(name.decode(), (None, None))
        if function[1] is None:
            return self._reply("cuModuleGetFunction", None, status=500)
        return self._reply("cuModuleGetFunction", function)

    def cuMemAlloc(self, nbytes):
        if self.context is None:
            return self._reply("cuMemAlloc", None, status=201)
        buffer = ctypes.create_string_buffer(nbytes)
        ctypes.memset(buffer, 0xAB, nbytes)          # garbage, as real fresh memory may hold
        self.allocations[ctypes.addressof(buffer)] = buffer
        return self._reply("cuMemAlloc", self.CUdeviceptr(ctypes.addressof(buffer)))

    def cuMemFree(self, address):
        if self.allocations.pop(address, None) is None:
            return self._reply("cuMemFree", status=1)
        return self._reply("cuMemFree")

    def cuMemsetD8(self, address, value, nbytes):
        return self._memory("cuMemsetD8", address, nbytes,
                            lambda: ctypes.memset(address, value, nbytes))

    def cuMemcpyHtoD(self, device, host, nbytes):
        return self._memory("cuMemcpyHtoD", device, nbytes,
                            lambda: ctypes.memmove(device, host, nbytes))

    def cuMemcpyDtoH(self, host, device, nbytes):
        return self._memory("cuMemcpyDtoH", device, nbytes,
                            lambda: ctypes.memmove(host, device, nbytes))

    # events: the fake runs a kernel when it is launched, so host time is its time
    def cuEventCreate(self, flags):
        if self.context is None:
            return self._reply("cuEventCreate", None, status=201)
        return self._reply("cuEventCreate", ["event", None])

    def cuEventRecord(self, event, stream):
        if stream != 0 or event[0] != "event":
            return self._reply("cuEventRecord", status=1)
        if self.context is None:                     # stream 0: the current context's
            return self._reply("cuEventRecord", status=201)
        event[1] = time.perf_counter()
        return self._reply("cuEventRecord")

    def cuEventSynchronize(self, event):
        return self._reply("cuEventSynchronize", status=0 if event[1] is not None else 1)

    def cuEventElapsedTime(self, start, end):
        if start[1] is None or end[1] is None:
            return self._reply("cuEventElapsedTime", None, status=1)
        return self._reply("cuEventElapsedTime", 1e3 * (end[1] - start[1]))

    # launches
    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        if (gy, gz, by, bz, shared, stream, extra) != (1, 1, 1, 1, 0, 0, 0) or not 0 < gx \
                or bx != BLOCK:
            return self._reply("cuLaunchKernel", status=1)
        if self.context is None:                     # stream 0: the current context's
            return self._reply("cuLaunchKernel", status=201)
        return self._launch("cuLaunchKernel", function, gx, self._arguments(function, params))

    def _arguments(self, function, params):
        """The values a kernelParams array (void**) points at, one per kernel parameter."""
        slots = (ctypes.c_uint64 * function[2]).from_address(params)
        return [ctypes.c_uint64.from_address(slot).value for slot in slots]

    def _launch(self, call, function, gx, args):
        name, kernel, _ = function
        if name == "symnet_wait":                   # its argument: nanoseconds to wait
            self.waits.append(args[0])
            return self._reply(call)
        if not all(self._inside(pointer, 0) for pointer in args):
            return self._reply(call, status=700)
        status = self.fail.get(call, 0)
        if status == 0:
            for block in range(gx):
                kernel(*args, block, gx)
            self.grids.append((name, gx))
        return (status,)

    # graphs: a chain of kernel nodes, as runtime/cuda.py builds them
    class CUDA_KERNEL_NODE_PARAMS:
        """Like cuda-bindings' struct: fields set one by one."""

    def cuGraphCreate(self, flags):
        return self._reply("cuGraphCreate", ["graph"])

    def cuGraphAddKernelNode(self, graph, dependencies, count, node):
        # Each node depends on the one before (a chain), and the driver copies the
        # parameter values now: the arrays they come from need not outlive this call.
        if list(dependencies) != graph[1:][-1:] or count != len(dependencies) or \
                (node.gridDimY, node.gridDimZ, node.blockDimX, node.blockDimY, node.blockDimZ,
                 node.sharedMemBytes) != (1, 1, BLOCK, 1, 1, 0):
            return self._reply("cuGraphAddKernelNode", None, status=1)
        graph.append((node.func, node.gridDimX, self._arguments(node.func, node.kernelParams)))
        return self._reply("cuGraphAddKernelNode", graph[-1])

    def cuGraphInstantiate(self, graph, flags):
        self.instantiated += 1
        return self._reply("cuGraphInstantiate", ("executable", graph[1:]))

    def cuGraphLaunch(self, executable, stream):
        if stream != 0:
            return self._reply("cuGraphLaunch", status=1)
        if self.context is None:                     # stream 0: the current context's
            return self._reply("cuGraphLaunch", status=201)
        for function, gx, args in executable[1]:
            status = self._launch("cuGraphLaunch", function, gx, args)
            if status[0]:
                return status
        return self._reply("cuGraphLaunch")

    def cuGraphExecDestroy(self, executable):
        return self._reply("cuGraphExecDestroy")

    def cuGraphDestroy(self, graph):
        return self._reply("cuGraphDestroy")


def emulated_kernels(model, optimizer=None):
    """The emulation backend's kernels, callable one block at a time: given external
    linkage here (the backend keeps them internal to its entry points)."""
    ir_text, spec, _, _ = compile_ir(model, optimizer, target="gpu-emulation")
    launches = list(itertools.chain(*spec["launches"].values()))
    module = llvm.parse_assembly(ir_text)
    for launch in launches:
        module.get_function(launch["kernel"]).linkage = llvm.Linkage.external
    library = NativeLibrary(str(module), cache_dir=None, name=f"{model.name}_kernels")
    kernels = {launch["kernel"]: library.function(
                   launch["kernel"], None,
                   [ctypes.c_void_p] * (1 + len(launch["buffers"])) + [ctypes.c_int64] * 2 + [ctypes.c_void_p])
               for launch in launches}
    # As a GPU calls them: (sizes, buffers..., block, blocks), no race stamps.
    return {name: functools.partial(lambda kernel, *args: kernel(*args, None), kernel)
            for name, kernel in kernels.items()}


