"""Model -> native Program: lower, schedule, emit LLVM IR, JIT, wrap.

    program = compiler.compile(model)             # float32, the host CPU
    program = compiler.compile(model, dtype="f64")
"""
import functools
import gc
import hashlib
import json
import os
import time

import sympy

from runtime.files import write_atomically

from .defaults import OPTIMIZERS
from .lower import lower
from .reference import classes_of
from .gpu_schedule import gpu_schedule
from .schedule import keep_stores, schedule
from .version import VERSION


def _gc_paused(fn):
    """`fn` with the cyclic garbage collector paused. The front end builds a few hundred
    thousand objects that stay alive until the IR text is done (sympy expressions,
    llvmlite.ir instructions): collecting meanwhile frees almost nothing and took 0.13 s
    of LeNet-5's 0.6 s."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return paused


@_gc_paused
def compile_ir(model, optimizer=None, dtype="f32", target="cpu", arch=None, entries=None,
               stream=None):
    """(LLVM IR text, plain-data spec, kernels per entry, emitter) for a model.

    target: "cpu" (host LLVM), "ptx" (NVPTX; spec["launches"] lists the kernel
    launches of each entry) or "gpu-emulation" (the PTX kernels on the host).
    entries: the entry points to emit (default all); the spec lists all of them, so
    the others can be compiled later into modules sharing the same buffer table.
    stream: a runtime.jit.PartStream that LLVM compiles the host CPU's functions from
    while the rest are written (the returned text is the same module)."""
    optimizer = optimizer or model.train.get("optimizer", "sgd")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; expected one of {', '.join(OPTIMIZERS)}")
    lowered = lower(model, optimizer)
    sizes = [str(s) for s in model.size_symbols]
    if target == "ptx":
        from .codegen.ptx import PTXEmitter
        emitter = PTXEmitter(lowered.tensors, sizes, dtype, model.name, arch=arch or "sm_80")
    elif target == "gpu-emulation":
        from .codegen.gpu_emulation import EmulatedGPUEmitter
        emitter = EmulatedGPUEmitter(lowered.tensors, sizes, dtype, model.name)
    else:
        from .codegen.llvm import LLVMEmitter
        emitter = LLVMEmitter(lowered.tensors, sizes, dtype, model.name)
        if stream is not None:
            emitter.stream_to(stream)
    wanted = [entry for entry in lowered.entries if entries is None or entry in entries]
    in_registers, scratch = {}, []
    if target == "cpu":
        # Every entry is scheduled, emitted or not: whether a nest shared by several
        # entries may keep its output in registers depends on all of them.
        scheduled = {entry: schedule(comps, lowered.tensors, lanes=emitter.lanes)
                     for entry, comps in lowered.entries.items()}
        in_registers = keep_stores(scheduled, _observed(model, lowered), lowered.tensors)
    else:
        # Every entry here too: an entry compiled later must number the scratch buffers
        # of split sums (in the buffer table) as the others do.
        scheduled = {entry: gpu_schedule(comps, lowered.tensors)
                     for entry, comps in lowered.entries.items()}
        scratch = [k.scratch for ks in scheduled.values() for k in ks if k.scratch]
    kernels = {entry: scheduled[entry] for entry in wanted}
    used = list(dict.fromkeys(_used_buffers(lowered) + scratch))
    buffer_index = {name: k for k, name in enumerate(used)}
    for entry, entry_kernels in kernels.items():
        emitter.entry(entry, entry_kernels, buffer_index)
    if emitter.stream is not None:
        emitter.ship(final=True)
    spec = _spec(model, lowered, used, sizes, dtype, optimizer)
    spec["compiled"] = list(kernels)
    spec["written"] = _written(lowered, in_registers)
    if target in ("ptx", "gpu-emulation"):
        spec["launches"] = emitter.launches
    return emitter.ir(), spec, kernels, emitter


def _observed(model, lowered):
    """The buffers runtime/program.py reads back after each entry."""
    loss = [model.loss] if model.loss else []
    return {"predict": set(model.outputs), "evaluate": set(model.outputs) | set(loss),
            "value_and_grad": set(loss) | set(lowered.grads.values()), "train_step": set(loss)}


def _written(lowered, in_registers):
    """entry -> the buffers it stores to memory, in order: every output but those kept
    in registers only (in_registers: entry -> names); the others hold an earlier call's
    values."""
    return {entry: list(dict.fromkeys(t for c in comps for t in (c.out, c.argmax)
                                      if t and t not in in_registers.get(entry, ())))
            for entry, comps in lowered.entries.items()}


def _used_buffers(lowered):
    """Every tensor some entry touches, then inputs, parameters and hyperparameters that
    none does (the runtime still takes them), each once, in that order."""
    touched = [t for comps in lowered.entries.values() for c in comps for t in c.buffers]
    given = [t for t in [*lowered.hypers.values(), *lowered.tensors]
             if lowered.tensors[t].kind in ("input", "param", "hyper")]
    return list(dict.fromkeys(touched + given))


def _dim(d):
    d = sympy.sympify(d)
    return int(d) if d.is_Integer else str(d)


def _spec(model, lowered, used, sizes, dtype, optimizer):
    buffers = [{"name": t, "shape": [_dim(d) for d in lowered.tensors[t].shape],
                "dtype": lowered.tensors[t].dtype, "kind": lowered.tensors[t].kind} for t in used]
    entry_inputs = {}
    for entry, comps in lowered.entries.items():
        read = {t for c in comps for t in c.reads}
        if entry in ("predict", "evaluate"):     # they return the outputs: `output x` too
            read |= set(model.outputs)
        entry_inputs[entry] = [i for i in model.inputs if i in read]
    defaults = dict(OPTIMIZERS[optimizer])
    # The file's hyperparameters were tuned for its own optimizer (symnet train does the same).
    if optimizer == model.train.get("optimizer", "sgd"):
        for key in defaults:
            if key in model.train:
                defaults[key] = float(model.train[key])
    return {
        "name": model.name, "dtype": dtype, "size_names": sizes, "buffers": buffers,
        "entries": list(lowered.entries), "entry_inputs": entry_inputs,
        "inputs": list(model.inputs), "outputs": list(model.outputs), "loss": model.loss,
        "params": list(model.params), "grads": lowered.grads, "optimizer": optimizer,
        "optimizer_defaults": defaults, "hypers": lowered.hypers, "states": lowered.states,
        "consts": {k: v.tolist() for k, v in model.consts.items()},
        "classes": {name: classes_of(model, name) for name, info in model.inputs.items()
                    if info.dtype == "i32"},
    }


def compile(model, target="cpu", dtype="f32", optimizer=None, opt_level=2, cache=True, arch=None,
            entries=None):
    """Compile a Model to a runtime Program (runtime/program.py) for the host CPU, or a
    CUDA GPU.

    target: "cpu", or "cuda" (the same as "ptx": needs the gpu extra and a GPU).
    dtype: "f32" or "f64": the native code's floating-point type, and that of every array
    the Program returns ("cuda" computes in "f32" only).
    optimizer: "sgd", "momentum" or "adam", the update train_step runs (default: the
    model's train statement's, else sgd). Its settings start at the statement's when it
    names the same optimizer, else at the optimizer's defaults; Program.configure
    changes them.
    opt_level: LLVM's optimization level, 0..3.
    cache: reuse machine code compiled before, and keep what is compiled now, on disk
    ($SYMNET_CACHE, else ~/.cache/symnet; in a folder it cannot write it keeps nothing).
    arch: the PTX's GPU architecture, "sm_80" or "sm_90" (default: the GPU's).
    entries: the entry points to build now, of predict, evaluate, value_and_grad and
    train_step (default: what training needs); any other is built on its first call."""
    started = time.perf_counter()
    entries = _check_arguments(model, target, dtype, opt_level, entries)
    if target in ("ptx", "cuda"):
        from runtime.cuda import CudaProgram, open_device
        if dtype != "f32":
            raise ValueError("the PTX target computes in float32 (dtype='f32')")
        device = open_device()          # no GPU: fail before generating any code
        if arch is None:
            major, _ = device.capability
            arch = "sm_90" if major >= 9 else "sm_80"
        _, spec, _, emitter = compile_ir(model, optimizer, dtype, "ptx", arch)
        program = CudaProgram(spec, emitter.ptx(), model.params, device=device)
        program.model_hash = model_hash(model)
        program.compile_seconds = time.perf_counter() - started
        return program
    from runtime.program import Program

    def build(entries):
        """A module with these entry points: from the caches, else compiled."""
        from runtime.jit import NativeLibrary, PartStream
        front = front_cache_path(model, target, dtype, optimizer, opt_level, entries) if cache else None
        library, spec = _load_front_cache(front, model.name)
        if library is None:
            # LLVM compiles the first kernels while the code generator writes the rest.
            stream = PartStream(opt_level) if target == "cpu" else None
            try:
                ir_text, spec, _, _ = compile_ir(model, optimizer, dtype, target, entries=entries,
                                                 stream=stream)
                kwargs = {} if cache else {"cache_dir": None}
                library = NativeLibrary(ir_text, opt_level=opt_level, name=model.name,
                                        cache_key_extra=VERSION, parts=stream, **kwargs)
            finally:
                if stream is not None:
                    stream.cancel()        # a mistake or a Ctrl-C midway: stop the workers
            _store_front_cache(front, spec, library.key)
        return library, spec

    # What training needs now; predict and value_and_grad on their first call.
    library, spec = build(entries or eager_entries(model))
    program = Program(spec, library, model.params, loader=lambda entry: build((entry,))[0])
    program.compile_seconds = time.perf_counter() - started
    program.model_hash = model_hash(model)
    return program


ENTRIES = ("predict", "evaluate", "value_and_grad", "train_step")


def _check_arguments(model, target, dtype, opt_level, entries):
    """Mistakes in compile's arguments, found before minutes of compiling; returns the
    entries as a tuple (or None)."""
    if not hasattr(model, "params") or not hasattr(model, "forward"):
        raise TypeError("compile takes a Model (compiler.load(path) or compiler.parse(text)), "
                        f"got {model!r}")
    if dtype not in ("f32", "f64"):
        raise ValueError(f"dtype must be 'f32' or 'f64', got {dtype!r}")
    if target not in ("cpu", "ptx", "cuda", "gpu-emulation"):
        raise ValueError(f"unknown target {target!r}; expected 'cpu' or 'cuda'")
    if opt_level not in range(4):
        raise ValueError(f"opt_level must be 0..3, got {opt_level!r}")
    if entries is None:
        return None
    entries = (entries,) if isinstance(entries, str) else tuple(entries)
    for entry in entries:
        if entry not in ENTRIES:        # it would be compiled nowhere, silently
            raise ValueError(f"unknown entry point {entry!r}; expected "
                             f"{', '.join(ENTRIES[:-1])} or {ENTRIES[-1]}")
    return entries


def eager_entries(model):
    if model.loss is not None and model.params:
        return ("train_step", "evaluate")     # evaluate shares train_step's kernels
    return ("evaluate",) if model.loss is not None else ("predict",)


def front_cache_path(model, target, dtype, optimizer, opt_level, entries=()):
    """Where the spec of this (source, options, host) is kept, so a second process
    skips parsing-to-LLVM entirely; None for models built without source text."""
    from runtime.jit import default_cache_dir, host_target
    import llvmlite
    if not model.source:
        return None
    h = hashlib.sha256()
    for part in (model.source, model.filename, str(sorted(model.params)), target, dtype,
                 str(optimizer or model.train.get("optimizer", "sgd")), str(opt_level),
                 ",".join(entries), VERSION,
                 llvmlite.__version__, *host_target()):
        h.update(part.encode() + b"\0")
    # Parameters' initial values are not compiled in, so the seed is not part of the key.
    return os.path.join(default_cache_dir(), h.hexdigest() + ".spec")


def _load_front_cache(path, name):
    from runtime.jit import NativeLibrary
    if not path:
        return None, None
    try:
        with open(path, "rb") as f:
            digest, body = f.read().split(b"\n", 1)
        if hashlib.sha256(body).hexdigest().encode() != digest:
            return None, None      # damaged or edited: the spec sizes buffers, so rebuild
        entry = json.loads(body)
        library = NativeLibrary.load_cached(entry["library"], name=name)
        return (library, entry["spec"]) if library is not None else (None, None)
    except Exception:              # missing or unreadable in any way: rebuild
        return None, None


def _store_front_cache(path, spec, library_key):
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # The file: the SHA-256 of the body, a newline, the body (JSON).
        body = json.dumps({"spec": spec, "library": library_key}).encode()
        write_atomically(path, hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    except OSError:
        pass                       # caching is best effort


def model_hash(model):
    """Identifies a model's parameter layout (names and shapes) for checkpoints."""
    h = hashlib.sha256()
    for name, value in model.params.items():
        h.update(f"{name}:{value.shape};".encode())
    return h.hexdigest()[:16]
