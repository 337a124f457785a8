"""JIT layer of symnet: LLVM IR text -> native code via llvmlite (MCJIT).

Why this shape:
  * Codegen (compiler/) produces IR *text*; everything target-specific
    (host triple/CPU/features, optimization, machine-code emission) lives here
    so the rest of the compiler stays pure Python and never touches LLVM.
  * Optimization uses LLVM's new pass manager (the only one llvmlite 0.50
    supports) with a target machine built for the exact host CPU so the
    vectorizers see the real vector width.
  * Compiling a large model is slow, so its functions are compiled in parts, side by
    side in worker processes (llvmlite runs every LLVM call under one lock, so threads
    cannot), and the objects are linked by MCJIT. LLVM's memory stays in the workers,
    out of the process that trains. The parts can arrive as the code generator
    finishes them (`PartStream`), so LLVM and the front end work at the same time.
  * Finished object code is cached on disk: a later process with the same key skips
    LLVM entirely and only links the cached objects.
  * This module must not import sympy: it is the runtime half that deployed
    models load.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import llvmlite
import llvmlite.binding as llvm

from .files import write_atomically

COMPILER_VERSION = "symnet-jit-2"
_MAGIC = b"SYMNOBJ2"              # 8-byte magic, sha256(payload), then the objects:
                                  # each an 8-byte little-endian length and its bytes
_HDR = len(_MAGIC) + 32
_SUFFIX = ".symobj"
_DEFAULT = object()               # sentinel: "use the default cache dir"
_init_lock = threading.Lock()
_initialized = False


def _init() -> None:
    """Initialize the native target once (llvm.initialize() is refused in 0.50).

    libm is loaded permanently so MCJIT can resolve calls such as ``tanhf``
    even in an embedding process that did not link libm itself."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        libm = ctypes.util.find_library("m")
        if libm:
            try:
                llvm.load_library_permanently(libm)
            except RuntimeError:
                pass
        _initialized = True


def host_target() -> tuple[str, str, str]:
    """(triple, cpu_name, features) of the running host; part of the cache key."""
    _init()
    return (llvm.get_process_triple(), llvm.get_host_cpu_name(),
            llvm.get_host_cpu_features().flatten())


def vector_width(dtype_bytes: int) -> int:
    """Lanes of the widest vector register for elements of ``dtype_bytes``."""
    feats = {f[1:] for f in host_target()[2].split(",") if f.startswith("+")}
    vbytes = 64 if "avx512f" in feats else 32 if "avx2" in feats else 16
    return max(1, vbytes // dtype_bytes)


def _target_machine(opt_level: int, *, jit: bool, reloc: str = "default"):
    triple, cpu, feats = host_target()
    return llvm.Target.from_triple(triple).create_target_machine(
        cpu=cpu, features=feats, opt=min(max(opt_level, 0), 3), reloc=reloc,
        codemodel="jitdefault" if jit else "default", jit=jit)


def _fn_at_line(ir_text: str, lineno: int) -> str | None:
    """Name of the function whose ``define`` encloses 1-based line ``lineno``."""
    name = None
    for line in ir_text.splitlines()[:lineno]:
        m = re.match(r"\s*define\b[^@]*@(\"[^\"]+\"|[\w.$-]+)", line)
        if m:
            name = m.group(1).strip('"')
        elif line.startswith("}"):
            name = None
    return name


def _parse(ir_text: str) -> llvm.ModuleRef:
    """Parse and verify IR, raising RuntimeError that names the bad function.

    LLVM's verifier often prints only the offending instruction, so we locate
    it in each function's text to tell the user *which* function is broken.
    Each module gets a context of its own, freed with it: the global context
    would keep the constants of every module compiled in this process."""
    _init()
    try:
        mod = llvm.parse_assembly(ir_text, context=llvm.create_context())
    except RuntimeError as e:
        m = re.search(r":(\d+):\d+: error", str(e))
        fn = _fn_at_line(ir_text, int(m.group(1))) if m else None
        where = f" in function @{fn}" if fn else ""
        raise RuntimeError(f"invalid LLVM IR{where}: {str(e).strip()}") from None
    try:
        mod.verify()
    except RuntimeError as e:
        msg = str(e).strip()
        named = re.findall(r"function '([^']+)'", msg)
        defs = [f for f in mod.functions if not f.is_declaration]
        lines = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip()]
        named += [f.name for f in defs if any(ln in str(f) for ln in lines)]
        names = list(dict.fromkeys(named)) or [f.name for f in defs]
        raise RuntimeError("LLVM IR verification failed in function "
                           f"{', '.join('@' + n for n in names)}: {msg}") from None
    if not mod.triple:
        mod.triple = llvm.get_process_triple()
    return mod


def _optimize(mod: llvm.ModuleRef, tm, opt_level: int) -> None:
    if opt_level <= 0:
        return
    pto = llvm.create_pipeline_tuning_options(speed_level=min(opt_level, 3))
    if opt_level >= 2:
        pto.slp_vectorization = True     # clang enables SLP at -O2 too
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def _prepared(ir_text: str, opt_level: int, *, jit: bool, reloc: str):
    tm = _target_machine(opt_level, jit=jit, reloc=reloc)
    mod = _parse(ir_text)
    mod.data_layout = str(tm.target_data)
    _optimize(mod, tm, opt_level)
    return mod, tm


def optimized_ir(ir_text: str, opt_level: int = 2) -> str:
    """IR after the host-tuned pipeline (``symnet compile --emit llvm``)."""
    mod, _ = _prepared(ir_text, opt_level, jit=False, reloc="pic")
    return str(mod)


def emit_assembly(ir_text: str, opt_level: int = 2) -> str:
    """Host assembly for the optimized IR (PIC, same code as emit_object)."""
    mod, tm = _prepared(ir_text, opt_level, jit=False, reloc="pic")
    return tm.emit_assembly(mod)


def emit_object(ir_text: str, opt_level: int = 2) -> bytes:
    """Relocatable PIC object file (ELF on Linux); PIC links into PIE and .so."""
    mod, tm = _prepared(ir_text, opt_level, jit=False, reloc="pic")
    return tm.emit_object(mod)


# ---- compiling in parts, side by side ---------------------------------------------
_SPLIT_CHARS = 512 * 1024     # smaller modules compile whole, in this process
_PARTS = 8                    # a split module: about this many parts
_DEFINE = re.compile(r'define\s+(?:(?:internal|private)\s+)?(.*?@("[^"]+"|[-\w.$]+)\(.*)$')
# A global variable: a number, a pointer or a C string (the GPU emulation's counters).
_GLOBAL = re.compile(r'(@("[^"]+"|[-\w.$]+)) = (?:global|constant) '
                     r'(i64|i32|float|double|ptr|\[\d+ x i8\]) .+$')
_WORKER = "import sys; sys.path.insert(0, {root!r}); from runtime.jit import _serve; _serve({opt})"


def function_cost(text: str) -> int:
    """LLVM's time on a function, in characters of straight-line code: its text, and
    much more for each loop (the loop passes' work). Fitted on LeNet-5's functions (r^2
    0.90; by the text alone 0.62, which left the many small looping kernels in one part
    that took half the time on its own)."""
    return len(text) + 12_000 * text.count(" = phi ") + 4_000


def _split(ir_text: str) -> list[str]:
    """The module as modules of whole functions, costliest first (`function_cost`),
    cheap ones grouped; each declares the functions of the others, and internal
    functions become external so that MCJIT links calls across parts. A global variable
    (a number, a pointer, a string) is defined in the first part and declared in the
    others; anything unexpected keeps the module whole."""
    common, bodies, lines, i = [], {}, ir_text.splitlines(), 0
    globals_, declared = [], []
    while i < len(lines):
        if lines[i].startswith("@"):
            m = _GLOBAL.match(lines[i])
            if not m:
                return [ir_text]
            globals_.append(lines[i])
            declared.append(f"{m.group(1)} = external global {m.group(3)}")
            i += 1
            continue
        if not lines[i].startswith("define"):
            common.append(lines[i])
            i += 1
            continue
        m = _DEFINE.match(lines[i])
        try:
            end = lines.index("}", i)           # a body ends at a lone "}"
        except ValueError:
            return [ir_text]
        if not m or m.group(2) in bodies:
            return [ir_text]
        bodies[m.group(2)] = (m.group(1), lines[i + 1:end + 1])
        i = end + 1
    cost = {name: function_cost("\n".join(body)) for name, (_, body) in bodies.items()}
    groups = []
    for name in sorted(bodies, key=cost.get, reverse=True):
        if not groups or sum(map(cost.get, groups[-1])) >= sum(cost.values()) // _PARTS:
            groups.append([])
        groups[-1].append(name)
    if len(groups) < 2:
        return [ir_text]
    parts = []
    for k, group in enumerate(groups):
        text = common + (globals_ if k == 0 else declared)
        for name, (head, body) in bodies.items():
            if name in group:
                text += ["define " + head] + body
            else:
                text.append("declare " + head.rstrip().removesuffix("{"))
        parts.append("\n".join(text) + "\n")
    return parts


def _compile_part(ir_text: str, opt_level: int) -> bytes:
    tm = _target_machine(opt_level, jit=True)
    mod = _parse(ir_text)
    mod.data_layout = str(tm.target_data)
    _optimize(mod, tm, opt_level)
    return tm.emit_object(mod)


def _default_jobs() -> int:
    """One worker per usable CPU; none in a frozen application, whose executable is not
    a Python interpreter."""
    if getattr(sys, "frozen", False):
        return 0
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 0


def compile_objects(ir_text: str, opt_level: int = 2, jobs: int | None = None) -> list[bytes]:
    """Object code of a module for MCJIT. A large one is compiled in parts (`_split`) by
    `jobs` worker processes (default: one per usable CPU; 0: here, one part after
    another, giving the same objects)."""
    parts = _split(ir_text) if len(ir_text) >= _SPLIT_CHARS else [ir_text]
    if len(parts) > 1:
        jobs = _default_jobs() if jobs is None else jobs
        try:
            if jobs:
                stream = PartStream(opt_level, jobs, start_at=0)
                for part in parts:
                    stream.submit(part)
                objects = stream.finish()
            else:
                objects = [_compile_part(part, opt_level) for part in parts]
            if objects is not None:
                return objects
        except RuntimeError:
            pass
    # Whole and here: also how an invalid module's error names the function in its text.
    return [_compile_part(ir_text, opt_level)]


class PartStream:
    """Parts of one module (each a module of whole functions, declaring the others)
    compiled by worker processes as they are handed in, in that order: the code
    generator hands in kernels as it finishes them, so LLVM works on the first while
    the rest are written. The workers start once the parts' cost (`function_cost`)
    reaches `start_at`; a module that stays smaller is left to compile whole, here."""

    def __init__(self, opt_level: int, jobs: int | None = None, start_at: int = _SPLIT_CHARS):
        self.opt_level, self.start_at = opt_level, start_at
        self.jobs = _default_jobs() if jobs is None else jobs
        self.parts: list[str] = []
        self.objects: list = []
        self.cost = 0
        self._todo: list[int] = []          # parts not yet handed to a worker, in order
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = self._failed = False

    def submit(self, text: str, cost: int = 0) -> None:
        with self._ready:
            self.parts.append(text)
            self.objects.append(None)
            self._todo.append(len(self.parts) - 1)
            self._ready.notify()
        self.cost += cost
        if self._threads or self.cost >= self.start_at:
            # A worker per part handed in, up to `jobs`: no idle processes for few parts.
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            command = [sys.executable, "-c", _WORKER.format(root=root, opt=self.opt_level)]
            while len(self._threads) < min(self.jobs, len(self.parts)):
                self._threads.append(threading.Thread(target=self._drive, args=(command,), daemon=True))
                self._threads[-1].start()

    def finish(self) -> list[bytes] | None:
        """Every part's object, in order, once all are compiled; None when the workers
        never started or a part failed (the module is then compiled whole, here)."""
        self._close()
        if not self._threads or self._failed or None in self.objects:
            return None
        return self.objects

    def abandon(self) -> None:
        """Give up streaming this module (the parts cannot make it): finish() says None,
        and the module is compiled whole."""
        with self._ready:
            self._failed = True
            self._todo.clear()
            self._ready.notify_all()

    def cancel(self) -> None:
        """Hand out no more parts; returns when the workers have stopped."""
        with self._ready:
            self._todo.clear()
        self._close()

    def _close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        try:
            for t in self._threads:
                t.join()
        finally:
            with self._ready:
                self._todo.clear()      # interrupted: hand out no more parts

    def _next(self) -> int | None:
        """The next part to compile; None once the stream is closed and drained."""
        with self._ready:
            while not self._todo and not self._closed:
                self._ready.wait()
            return self._todo.pop(0) if self._todo and not self._failed else None

    def _drive(self, command: list[str]) -> None:
        try:
            # A worker's errors are reported by compiling the module here: no stderr.
            with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL) as worker:
                while (k := self._next()) is not None:
                    data = self.parts[k].encode()
                    worker.stdin.write(len(data).to_bytes(8, "little") + data)
                    worker.stdin.flush()
                    head = worker.stdout.read(8)
                    if len(head) < 8:
                        break
                    self.objects[k] = worker.stdout.read(int.from_bytes(head, "little"))
                else:
                    return
        except OSError:
            pass
        self.abandon()                  # a part failed: the module is compiled whole, here


def _serve(opt_level: int) -> None:
    """A worker: module texts in, objects out, each after its 8-byte length, until the
    input ends; a part that does not compile ends the worker (the parent reports why)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while len(head := inp.read(8)) == 8:
        try:
            obj = _compile_part(inp.read(int.from_bytes(head, "little")).decode(), opt_level)
        except RuntimeError:
            return
        out.write(len(obj).to_bytes(8, "little") + obj)
        out.flush()


def build_shared_library(ir_text: str, out_path: str, opt_level: int = 2) -> str:
    """Compile IR to a shared library with the system ``cc``; returns out_path."""
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("build_shared_library: no C compiler 'cc' on PATH")
    obj = emit_object(ir_text, opt_level)
    out_path = os.path.abspath(out_path)
    with tempfile.TemporaryDirectory(prefix="symnet-so-") as td:
        o, so = os.path.join(td, "model.o"), os.path.join(td, "model.so")
        with open(o, "wb") as f:
            f.write(obj)
        r = subprocess.run([cc, "-shared", "-o", so, o, "-lm"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise RuntimeError(f"build_shared_library: cc failed: {err}")
        with open(so, "rb") as f:
            write_atomically(out_path, f.read(), mode=0o777)
    return out_path


def default_cache_dir() -> str:
    return os.environ.get("SYMNET_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "symnet")


def _read_entry(path: str) -> bytes | None:
    """Payload of a cache entry, or None; corrupt entries are deleted."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    payload = blob[_HDR:]
    if (blob[:len(_MAGIC)] == _MAGIC and payload
            and hashlib.sha256(payload).digest() == blob[len(_MAGIC):_HDR]):
        return payload
    try:
        os.unlink(path)
    except OSError:
        pass
    return None


# An entry, or a temporary of write_atomically's beside it (.NAME.RANDOM.tmp).
_CACHE_FILE = re.compile(r"\.?[0-9a-f]{64}(\.symobj|\.spec|\.spec\.json)(\.[0-9a-f]+\.tmp)?")


def clear_cache(cache_dir: str | None = None) -> int:
    """Delete all cache entries (default dir when None); returns how many."""
    d = cache_dir or default_cache_dir()
    n = 0
    for fn in os.listdir(d) if os.path.isdir(d) else ():
        # Objects, the compiler's spec entries that point at them (.spec.json: an older
        # format), and leftovers; all named by their hash, so that a shared folder
        # ($SYMNET_CACHE=/tmp) keeps other programs' files.
        if _CACHE_FILE.fullmatch(fn) or fn.startswith(".tmp-"):
            try:
                os.unlink(os.path.join(d, fn))
                n += fn.endswith(_SUFFIX)
            except OSError:
                pass
    return n


def cache_stats(cache_dir: str | None = None) -> dict:
    """{'dir', 'entries', 'bytes'} for the cache directory (default when None)."""
    d = cache_dir or default_cache_dir()
    files = [os.path.join(d, f) for f in (os.listdir(d) if os.path.isdir(d) else ())
             if f.endswith(_SUFFIX)]
    return {"dir": d, "entries": len(files),
            "bytes": sum(os.path.getsize(f) for f in files if os.path.exists(f))}


class NativeLibrary:
    """IR text JIT-compiled in-process; functions stay valid while it lives.

    ``from_cache`` tells whether the machine code came from the disk cache; ``jobs``
    is how many worker processes compile a large module (`compile_objects`); ``parts``
    a PartStream of the same module's functions, already being compiled (dropped on a
    cache hit)."""

    def __init__(self, ir_text: str, *, opt_level: int = 2,
                 cache_dir: str | None = _DEFAULT, name: str = "symnet",
                 cache_key_extra: str = "", jobs: int | None = None,
                 parts: PartStream | None = None):
        if not 0 <= opt_level <= 3:
            raise ValueError(f"opt_level must be 0..3, got {opt_level}")
        self.name, self.opt_level = name, opt_level
        triple, cpu, feats = host_target()
        if cache_dir is _DEFAULT:
            cache_dir = default_cache_dir()
        self.cache_dir = cache_dir
        h = hashlib.sha256()
        for part in (ir_text, triple, cpu, feats, str(opt_level),
                     llvmlite.__version__, COMPILER_VERSION, cache_key_extra):
            h.update(part.encode() + b"\0")
        self.key = h.hexdigest()
        self.cache_path = (os.path.join(cache_dir, self.key + _SUFFIX)
                           if cache_dir else None)
        # A hit means this exact IR was verified and compiled before: link only.
        payload = _read_entry(self.cache_path) if self.cache_path else None
        self.from_cache = payload is not None
        if payload is None:
            # `parts`: this module's functions, streamed to LLVM while it was written.
            objects = parts.finish() if parts is not None else None
            if objects is None:
                objects = compile_objects(ir_text, opt_level, jobs)
            payload = b"".join(len(o).to_bytes(8, "little") + o for o in objects)
            self._store(payload)
        elif parts is not None:
            parts.cancel()
        self._link(payload)

    @classmethod
    def load_cached(cls, key: str, *, cache_dir=_DEFAULT, name: str = "symnet"):
        """The library stored under `key` by an earlier build, or None.

        No IR is needed: the cached objects are linked, so a warm start skips every
        compiler stage."""
        cache_dir = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
        if not cache_dir:
            return None
        path = os.path.join(cache_dir, key + _SUFFIX)
        payload = _read_entry(path)
        if payload is None:
            return None
        self = cls.__new__(cls)
        self.name, self.opt_level, self.from_cache = name, None, True
        self.cache_dir, self.key, self.cache_path = cache_dir, key, path
        self._link(payload)
        return self

    def _link(self, payload: bytes) -> None:
        """Load and link the payload's objects with MCJIT."""
        objects, at = [], 0
        while at < len(payload):
            size = int.from_bytes(payload[at:at + 8], "little")
            objects.append(payload[at + 8:at + 8 + size])
            at += 8 + size
        _init()
        tm = _target_machine(2, jit=True)
        mod = llvm.parse_assembly("")
        mod.name = self.name
        mod.data_layout = str(tm.target_data)
        self._engine = llvm.create_mcjit_compiler(mod, tm)  # owns mod and tm
        for obj in objects[1:]:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        # The first object stands in for the empty module's code through the object
        # cache: running LLVM's code generator even on nothing costs 5 MiB.
        self._engine.set_object_cache(lambda _m, _o: None, lambda _m: objects[0])
        self._engine.finalize_object()

    def _store(self, payload: bytes) -> None:
        """Persist freshly compiled code (best effort, never fatal)."""
        if not self.cache_path:
            return
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            write_atomically(self.cache_path, _MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError:
            pass

    def address(self, func_name: str) -> int:
        addr = self._engine.get_function_address(func_name)
        if not addr:
            raise KeyError(f"{self.name}: no function @{func_name} in module")
        return addr

    def function(self, func_name: str, restype, argtypes):
        """ctypes wrapper; it holds a reference to this library (keeps code alive)."""
        fn = ctypes.CFUNCTYPE(restype, *argtypes)(self.address(func_name))
        fn._symnet_library = self
        return fn
