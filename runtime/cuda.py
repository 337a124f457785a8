"""Programs on NVIDIA GPUs: each entry's PTX kernels, launched through the CUDA driver API.

    program = compiler.compile(model, target="ptx")     # a CudaProgram
    loss = program.train_step({"x": xb, "y": yb})

The compiler emits one kernel per launch of the GPU schedule (compiler/gpu_schedule.py),
each striding over its work (elements, or tiles) whatever the grid, and lists every
entry's launches in spec["launches"] with the blocks each wants. A CudaProgram keeps
every buffer on the device: parameters, constants, optimizer state and hyperparameters
once, the rest once per batch size (the static memory plan, as on the CPU). A call
uploads its inputs, queues the entry's kernels in order on the default stream (no host
round trip between kernels) and downloads only what it returns: the loss, the outputs,
the gradients. Input checking is Program's, inherited unchanged.

The driver is reached through cuda-bindings (`pip install 'symnet[gpu]'`), imported
only when a program is made: without it, without a driver or without a device,
construction raises GPUUnavailable at once, with a one-line reason.
"""
import math
import os
import re

import numpy as np

from .program import Program, ProgramError, eval_dim

BLOCK = 256      # threads per block: compiler/gpu_schedule.py's BLOCK, which the kernels assume
ALIGN = 256      # each buffer of a block starts on this boundary, like cuMemAlloc's own


class CudaError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the driver's error."""


class GPUUnavailable(CudaError):
    """No GPU to run on: cuda-bindings, the driver or a device is missing."""


# ---- launch parameters (plain arithmetic, checked without a GPU) ------------------------------
def resident_blocks(multiprocessors, threads_per_multiprocessor):
    """How many BLOCK-thread blocks the device holds at once: the most a launch needs,
    since every kernel strides over its elements whatever the grid."""
    return max(1, multiprocessors * max(1, threads_per_multiprocessor // BLOCK))


def grid_size(blocks, max_blocks):
    """The grid of a launch that wants `blocks` blocks (spec["launches"]: a thread per
    element, a block per element or per tile): at most what the device holds at once,
    since every kernel strides over its work; 0 (no launch) for an empty output."""
    return min(blocks, max_blocks)


INDEX_LIMIT = 2 ** 32   # the kernels number elements and terms in 32 bits


def check_index_range(launches, sizes):
    """Refuse sizes for which a kernel would number more positions than its 32-bit
    index arithmetic holds (spec["launches"][entry][k]["positions"])."""
    limit = INDEX_LIMIT
    for launch in launches:
        count = max(eval_dim(n, sizes) for n in launch["positions"])
        if count >= limit:
            shown = ", ".join(f"{name}={value}" for name, value in sizes.items())
            raise ProgramError(f"{shown} is too large for the GPU kernels: {launch['kernel']} "
                               f"would number {count:,} positions (at most {limit - 1:,})")


def layout(sizes, align=ALIGN):
    """(offsets, total bytes) placing buffers of `sizes` bytes one after another, each
    starting on an `align` boundary."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // align) * align
    return offsets, end


def kernel_params(pointers):
    """cuLaunchKernel's kernelParams for pointer arguments: (values, addresses), where
    `addresses` is the void** the driver reads, element k pointing at values[k]. Both
    arrays must stay alive as long as the launch may be queued."""
    values = np.array(pointers, dtype=np.uint64)
    base = values.ctypes.data
    return values, np.array([base + 8 * k for k in range(len(values))], dtype=np.uint64)


# ---- the driver ---------------------------------------------------------------------------
def load_driver():
    """The driver API module of cuda-bindings (`cuda.bindings.driver`), or of the older
    cuda-python layout (`cuda.cuda`); both return (CUresult, values...) from every call."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            raise GPUUnavailable("cuda-bindings is not installed "
                                 "(pip install 'symnet[gpu]')") from None
    return driver


_devices = {}


def open_device(ordinal=0):
    """The CudaDevice for GPU `ordinal`, opened once per process."""
    if ordinal not in _devices:
        _devices[ordinal] = CudaDevice(load_driver(), ordinal)
    return _devices[ordinal]


class CudaDevice:
    """One GPU's primary context (the one the CUDA runtime, and so PyTorch, uses too)
    and the driver calls a CudaProgram makes.

    Every call's CUresult is checked: a failure raises CudaError naming the call and the
    error. Work goes to the legacy default stream, so copies and kernels run in the
    order they are issued and a copy to the host waits for the kernels before it. The
    context is made current before each group of calls, so any thread may use it."""

    def __init__(self, driver, ordinal=0):
        self.driver = driver
        self.success = driver.CUresult.CUDA_SUCCESS
        try:
            status = driver.cuInit(0)[0]
        except Exception as exc:  # cuda-bindings raises (not returns) when libcuda is missing
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise GPUUnavailable(f"no NVIDIA driver: libcuda could not be loaded ({reason})") \
                from None
        if status == driver.CUresult.CUDA_ERROR_NO_DEVICE:
            raise GPUUnavailable("no CUDA device found")
        self._check((status,), "cuInit", GPUUnavailable)
        count = self.call("cuDeviceGetCount", error=GPUUnavailable)
        if ordinal >= count:
            raise GPUUnavailable("no CUDA device found" if count == 0 else
                                 f"no CUDA device {ordinal}: the machine has {count}")
        self.handle = self.call("cuDeviceGet", ordinal, error=GPUUnavailable)
        self.context = self.call("cuDevicePrimaryCtxRetain", self.handle, error=GPUUnavailable)
        self.activate()
        self.name = self.call("cuDeviceGetName", 256, self.handle).split(b"\0")[0].decode()
        self.capability = (self.attribute("COMPUTE_CAPABILITY_MAJOR"),
                           self.attribute("COMPUTE_CAPABILITY_MINOR"))
        self.multiprocessors = self.attribute("MULTIPROCESSOR_COUNT")
        self.max_blocks = resident_blocks(self.multiprocessors,
                                          self.attribute("MAX_THREADS_PER_MULTIPROCESSOR"))
        self.events, self.wait = [], None            # for timed_run, made on first use

    def __repr__(self):
        major, minor = self.capability
        return f"<CudaDevice {self.name}, sm_{major}{minor}, {self.multiprocessors} SMs>"

    # ---- checked calls ----------------------------------------------------------------------
    def call(self, name, *args, error=CudaError, detail=None):
        """driver.NAME(*args) with its status checked; returns the value(s) after it.
        detail(status), if given, adds to a failure's message."""
        return self._check(getattr(self.driver, name)(*args), name, error, detail)

    def _check(self, result, name, error=CudaError, detail=None):
        if result[0] != self.success:
            more = detail(result[0]) if detail else ""
            raise error(f"{name} failed: {self.describe(result[0])}{more}")
        return result[1] if len(result) == 2 else (result[1:] or None)

    def describe(self, status):
        """'CUDA_ERROR_X: the driver's sentence' for a CUresult."""
        name = self.driver.cuGetErrorName(status)[1]
        text = self.driver.cuGetErrorString(status)[1]
        if not name:
            return str(status)
        return f"{name.decode()}: {text.decode()}" if text else name.decode()

    def attribute(self, name):
        kind = getattr(self.driver.CUdevice_attribute, "CU_DEVICE_ATTRIBUTE_" + name)
        return self.call("cuDeviceGetAttribute", kind, self.handle)

    def activate(self):
        self.call("cuCtxSetCurrent", self.context)

    def synchronize(self):
        """Wait for all queued work (a program's calls wait only for what they download)."""
        self.activate()
        self.call("cuCtxSynchronize")

    # ---- modules, memory, launches --------------------------------------------------------
    def load_module(self, ptx):
        """Load PTX text (the driver compiles it for this GPU); returns the module. If the
        driver refuses it, the error carries its PTX compiler's log."""
        image = np.frombuffer(ptx.encode() + b"\0", dtype=np.uint8)
        self.activate()
        return self.call("cuModuleLoadData", image.ctypes.data,
                         detail=lambda status: self._jit_log(image))

    def _jit_log(self, image):
        """'; the driver's PTX compiler says: ...' for an image it refused, or '' if it
        says nothing (asked again with cuModuleLoadDataEx, which takes a log buffer)."""
        option = self.driver.CUjit_option
        log = bytearray(4096)
        try:
            self.driver.cuModuleLoadDataEx(
                image.ctypes.data, 2,
                [option.CU_JIT_ERROR_LOG_BUFFER, option.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES],
                [log, len(log)])
        except Exception:               # only a better message was at stake
            return ""
        text = " ".join(log.split(b"\0")[0].decode(errors="replace").split())
        return f"; the driver's PTX compiler says: {text}" if text else ""

    def function(self, module, name):
        return self.call("cuModuleGetFunction", module, name.encode())

    def upload(self, address, array):
        """Copy a C-contiguous host array to device memory at `address`."""
        if array.nbytes:
            self.activate()
            self.call("cuMemcpyHtoD", address, array.ctypes.data, array.nbytes)

    def download(self, address, array):
        """Fill a C-contiguous host array from `address`, after the kernels queued before."""
        if array.nbytes:
            self.activate()
            self.call("cuMemcpyDtoH", array.ctypes.data, address, array.nbytes,
                      detail=self._after_kernels)

    def _after_kernels(self, status, waiting="the copy"):
        """A copy (or a wait) reports the failure of a kernel queued before it: say how
        to name it."""
        if status == self.driver.CUresult.CUDA_ERROR_INVALID_VALUE:
            return ""                   # the call's own arguments
        return f" (a kernel queued before {waiting} failed; CUDA_LAUNCH_BLOCKING=1 names it)"

    def run(self, launches):
        """Queue (function, grid, kernelParams addresses, values, kernel name) launches in
        order; returns without waiting for them. A kernel that fails while running is
        reported by a later call (a copy): CUDA_LAUNCH_BLOCKING=1 makes each launch wait,
        so that the failure is reported here, with the kernel's name."""
        self.activate()
        for launch in launches:
            self._launch(*launch)

    def _launch(self, function, grid, addresses, values, name):
        """One launch of `grid` blocks of BLOCK threads on the default stream."""
        self._check(self.driver.cuLaunchKernel(function, grid, 1, 1, BLOCK, 1, 1, 0, 0,
                                               addresses.ctypes.data, 0),
                    f"cuLaunchKernel of {name}")

    def timed_run(self, launches):
        """run(launches), each launch between two events, then wait for them; returns
        each launch's GPU time in milliseconds. A kernel that spins for WAIT_NS runs
        first, so the host queues every launch before the first one starts and the
        kernels run back to back, as they would if the host were fast: the times are
        the kernels', not the host's launch overhead (except under
        CUDA_LAUNCH_BLOCKING=1, where each launch waits)."""
        self.activate()
        events = self._events(len(launches) + 1)
        values, addresses = kernel_params([WAIT_NS])
        self._launch(self._wait_kernel(), 1, addresses, values, "symnet_wait")
        self.call("cuEventRecord", events[0], 0)
        for launch, event in zip(launches, events[1:]):
            self._launch(*launch)
            self.call("cuEventRecord", event, 0)
        self.call("cuEventSynchronize", events[len(launches)],
                  detail=lambda status: self._after_kernels(status, "the profile's wait"))
        return [self.call("cuEventElapsedTime", start, end)
                for start, end in zip(events, events[1:len(launches) + 1])]

    def _events(self, count):
        """At least `count` timing events, made once and kept for the device's lifetime
        (a process opens each device once)."""
        while len(self.events) < count:
            self.events.append(self.call("cuEventCreate", 0))     # CU_EVENT_DEFAULT: timed
        return self.events

    def _wait_kernel(self):
        """symnet_wait, loaded on the first profile."""
        if self.wait is None:
            self.wait = self.function(self.load_module(WAIT_PTX), "symnet_wait")
        return self.wait


WAIT_NS = 10_000_000        # 10 ms: far longer than queueing a step's launches takes
WAIT_PTX = """//
// symnet_wait: spins for its argument's nanoseconds (runtime/cuda.py, timed_run), or
// 100 million turns of its loop should the timer not advance (a second or more).
.version 8.0
.target sm_80
.address_size 64

.visible .entry symnet_wait(.param .u64 nanoseconds)
{
	.reg .pred 	%p, %q;
	.reg .b64 	%start, %now, %wait, %turns;
	ld.param.u64 	%wait, [nanoseconds];
	mov.u64 	%start, %globaltimer;
	mov.u64 	%turns, 0;
$L_spin:
	add.u64 	%turns, %turns, 1;
	setp.ge.u64 	%q, %turns, 100000000;
	@%q bra 	$L_done;
	mov.u64 	%now, %globaltimer;
	sub.u64 	%now, %now, %start;
	setp.lt.u64 	%p, %now, %wait;
	@%p bra 	$L_spin;
$L_done:
	ret;
}
"""


class Graph:
    """An entry's launches as one CUDA graph (a chain of kernel nodes), instantiated
    once per batch size: a call is then one cuGraphLaunch instead of a cuLaunchKernel
    per kernel (CudaProgram.use_graphs). The driver copies each node's parameter values
    when the node is added."""
    executable = graph = None

    def __init__(self, device, launches):
        self.device = device
        device.activate()
        self.graph = device.call("cuGraphCreate", 0)
        previous = []
        for function, grid, addresses, _, _ in launches:
            node = device.driver.CUDA_KERNEL_NODE_PARAMS()
            node.func = function
            node.gridDimX, node.gridDimY, node.gridDimZ = grid, 1, 1
            node.blockDimX, node.blockDimY, node.blockDimZ = BLOCK, 1, 1
            node.sharedMemBytes = 0
            node.kernelParams = addresses.ctypes.data
            previous = [device.call("cuGraphAddKernelNode", self.graph, previous, len(previous), node)]
        # cuda-bindings 11.x's cuGraphInstantiate takes a log buffer instead of flags; its
        # cuGraphInstantiateWithFlags (which 12.x and later no longer export) is the same call
        with_flags = "cuGraphInstantiateWithFlags"
        instantiate = with_flags if hasattr(device.driver, with_flags) else "cuGraphInstantiate"
        self.executable = device.call(instantiate, self.graph, 0)

    def launch(self):
        """Queue the whole graph on the default stream, in order with copies."""
        self.device.activate()
        self.device.call("cuGraphLaunch", self.executable, 0)

    def __del__(self):
        try:
            if self.executable is not None:
                self.device.call("cuGraphExecDestroy", self.executable)
            if self.graph is not None:
                self.device.call("cuGraphDestroy", self.graph)
        except Exception:  # at interpreter exit the driver may be gone before us
            pass


class DeviceMemory:
    """One zero-filled cuMemAlloc block (zeroed like the CPU plan's np.zeros), freed
    when dropped: a batch size's plan that Program._workspace evicts takes it along."""
    address = None

    def __init__(self, device, nbytes):
        self.device = device
        self.nbytes = max(nbytes, ALIGN)
        device.activate()
        self.address = int(device.call("cuMemAlloc", self.nbytes))
        device.call("cuMemsetD8", self.address, 0, self.nbytes)

    def __del__(self):
        if self.address is not None:
            try:
                self.device.activate()
                self.device.call("cuMemFree", self.address)
            except Exception:  # at interpreter exit the driver may be gone before us
                pass


# ---- the program --------------------------------------------------------------------------
class _Kernels:
    """Stands in for the NativeLibrary that Program.__init__ asks for each entry point:
    on the GPU an entry point is its kernels, as (function, launch) in launch order."""

    def __init__(self, device, ptx, launches):
        self.device, self.launches = device, launches
        self.module = device.load_module(ptx)

    def function(self, entry, restype, argtypes):
        return [(self.device.function(self.module, launch["kernel"]), launch)
                for launch in self.launches[entry]]


class CudaProgram(Program):
    """A Program whose buffers live, and whose kernels run, on an NVIDIA GPU.

    The interface and the checks of every call are Program's. The host arrays in
    `persistent` are staging copies: the device holds the truth, uploaded when
    set_params, reset_optimizer or a train_step's hyperparameters change it on the host,
    downloaded when get_params reads it. `device` is a CudaDevice (default: GPU 0)."""

    def __init__(self, spec, ptx, params, device=None):
        if spec["dtype"] != "f32":
            raise ValueError("the GPU target computes in float32 (dtype='f32')")
        self.device = device or open_device()        # first: no GPU costs nothing more
        self._require_architecture(ptx)
        self.ptx = ptx
        # Each entry as one CUDA graph (see Graph): on an H200, 8 to 35% faster than a
        # cuLaunchKernel per kernel; but not under CUDA_LAUNCH_BLOCKING=1, where each
        # launch stays alone so that a failing kernel is named.
        self.use_graphs = os.environ.get("CUDA_LAUNCH_BLOCKING") != "1"
        self._resident = {}                          # persistent name -> device address
        super().__init__(spec, _Kernels(self.device, ptx, spec["launches"]), params)
        self._hypers = list(spec["hypers"].values())
        self._place_persistent()

    def _require_architecture(self, ptx):
        """A GPU older than the PTX's target cannot load it: say so before trying."""
        target = re.search(r"^\.target sm_(\d+)", ptx, re.MULTILINE)
        major, minor = self.device.capability
        if target and int(target.group(1)) > 10 * major + minor:
            raise GPUUnavailable(f"{self.device.name} is sm_{major}{minor}; the PTX is for "
                                 f"sm_{target.group(1)} or newer")

    def _place_persistent(self):
        """One block for parameters, constants and optimizer state, with the
        hyperparameters packed at its end, so a train step uploads them in one copy."""
        others = [name for name in self.persistent if name not in self._hypers]
        offsets, end = layout([self.persistent[name].nbytes for name in others])
        self._persistent_memory = DeviceMemory(self.device, end + 4 * len(self._hypers))
        base = self._persistent_memory.address
        self._resident = {name: base + offset for name, offset in zip(others, offsets)}
        self._resident.update({name: base + end + 4 * k for k, name in enumerate(self._hypers)})
        for name, array in self.persistent.items():
            self.device.upload(self._resident[name], array)

    # ---- persistent state: host staging <-> device --------------------------------------
    # Under the program's lock, as every call: a copy queued between the launches of
    # another thread's train step would see (or overwrite) a half-updated state.
    def get_params(self):
        with self.lock:
            for name in self.spec["params"]:
                self.device.download(self._resident[name], self.persistent[name])
            return super().get_params()

    def set_params(self, params):
        with self.lock:
            super().set_params(params)
            for name in params:
                if name in self._resident:           # not yet while Program.__init__ runs
                    self.device.upload(self._resident[name], self.persistent[name])

    def reset_optimizer(self):
        with self.lock:
            super().reset_optimizer()
            for name in self.spec["states"]:
                self.device.upload(self._resident[name], self.persistent[name])

    def _set_hypers(self):
        super()._set_hypers()
        if self._hypers:
            packed = np.array([self.persistent[name] for name in self._hypers], np.float32)
            self.device.upload(self._resident[self._hypers[0]], packed)

    # ---- calls --------------------------------------------------------------------------
    def profile(self, method, *args, repeats=10):
        """The GPU time of each kernel of a call, such as profile("train_step", batch):
        the call made `repeats` times, each kernel timed by events around it (see
        CudaDevice.timed_run); returns [(kernel, strategy, grid, median milliseconds)]
        in launch order."""
        with self.lock:
            self._timings = []
            try:
                for _ in range(repeats):
                    getattr(self, method)(*args)
            finally:
                timings, self._timings = self._timings, None
        if not timings:
            raise ValueError(f"profile: {method} launched no kernels")
        launches = self._last["launches"][self._last_entry]
        spec = {launch["kernel"]: launch["strategy"] for launch in self.spec["launches"][self._last_entry]}
        return [(name, spec[name], grid, float(np.median([t[k] for t in timings])))
                for k, (_, grid, _, _, name) in enumerate(launches)]

    _timings = None                  # while profiling: each call's kernel times

    def _call(self, entry, arrays, sizes):
        workspace = self._workspace(sizes)
        for name, array in arrays.items():
            self.device.upload(workspace["address"][name], array)
        launches = workspace["launches"][entry]
        if self._timings is not None:
            self._timings.append(self.device.timed_run(launches))
        elif self.use_graphs and launches:
            graphs = workspace["graphs"]
            if entry not in graphs:
                graphs[entry] = Graph(self.device, launches)
            graphs[entry].launch()
        else:
            self.device.run(launches)
        self._last, self._last_entry = workspace, entry

    def _workspace_array(self, name):
        """One buffer of the last call, downloaded (Program's methods copy what they return)."""
        if name in self.persistent:
            array = self.persistent[name]
        else:
            array = np.empty(self._last["shapes"][name], self._dtype(name))
        self.device.download(self._last["address"][name], array)
        return array

    def _dtype(self, name):
        return np.int32 if self.buffers[name]["dtype"] == "i32" else self.dtype

    def _allocate(self, sizes):
        """The static memory plan for one batch size, on the device: one zeroed block for
        every other buffer (inputs too) and the size values, and each entry's launches
        with their grids and parameter arrays, made once."""
        for launches in self.spec["launches"].values():
            check_index_range(launches, sizes)
        names = [b["name"] for b in self.spec["buffers"] if b["name"] not in self.persistent]
        shapes = {name: tuple(eval_dim(d, sizes) for d in self.buffers[name]["shape"])
                  for name in names}
        size_values = np.array([sizes[n] for n in self.spec["size_names"]] or [0], np.int64)
        nbytes = [math.prod(shapes[name]) * np.dtype(self._dtype(name)).itemsize
                  for name in names]
        offsets, end = layout(nbytes + [size_values.nbytes])
        memory = DeviceMemory(self.device, end)
        address = {name: memory.address + offset for name, offset in zip(names, offsets)}
        address.update(self._resident)
        sizes_address = memory.address + offsets[-1]
        self.device.upload(sizes_address, size_values)
        launches = {entry: self._launches(kernels, address, sizes_address, sizes)
                    for entry, kernels in self.entries.items()}
        return {"memory": memory, "address": address, "shapes": shapes, "launches": launches,
                "graphs": {}}

    def _launches(self, kernels, address, sizes_address, sizes):
        """(function, grid, kernelParams, values, name) per kernel; kernels over nothing are
        left out.
        Each kernel's parameters are (sizes, its buffers...), as the PTX emitter declares."""
        planned = []
        for function, launch in kernels:
            grid = grid_size(eval_dim(launch["blocks"], sizes), self.device.max_blocks)
            if grid:
                pointers = [sizes_address] + [address[name] for name in launch["buffers"]]
                values, addresses = kernel_params(pointers)
                planned.append((function, grid, addresses, values, launch["kernel"]))
        return planned
