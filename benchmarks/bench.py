"""symnet against what a user would pick instead, measured side by side in one run.

    python benchmarks/bench.py                      # every case
    python benchmarks/bench.py --quick              # few repetitions, no torch.compile
    python benchmarks/bench.py --cases mlp-step-64 matmul-1024

Peers: NumPy written by hand, PyTorch eager and torch.compile (when torch imports;
otherwise their columns show "-"). Every peer starts from symnet's initial weights, and
the first call's loss (or output) of each peer is checked against symnet's, so the
table compares the same computation. Times are per call: warm-up first, then the peers
are timed in interleaved rounds (so drift on a shared machine hits them alike), each
call timed alone with time.perf_counter; the table gives the median and the minimum.
Ratios are peer time / symnet time: above 1 means symnet is faster.

Nothing here asserts a timing: the script prints, and the issue's targets are listed
at the end as met or not met from the medians of this run.
"""
import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compiler import compile, load, parse  # noqa: E402
from runtime.jit import vector_width  # noqa: E402
from runtime.program import PARALLEL_MIN_BATCH, default_threads  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except (ImportError, OSError):
    torch = None

PEERS = ["symnet", "numpy", "torch", "torch.compile"]
ROUNDS = 5


# ---- the machine --------------------------------------------------------------------------
def machine_lines():
    """CPU model, cores, vector features, versions and BLAS settings: what the numbers depend on."""
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    vector = ", ".join(f for f in ("avx512f", "avx2") if f in flags) or "neither avx512f nor avx2"
    import llvmlite
    import llvmlite.binding as llvm
    import sympy
    from compiler.native import VERSION
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    lines = [
        f"machine: {info.get('model name', platform.processor())}, {os.cpu_count()} cores, {vector}",
        f"versions: Python {platform.python_version()}, {VERSION}, numpy {np.__version__}, "
        f"sympy {sympy.__version__}, llvmlite {llvmlite.__version__} (LLVM "
        f"{'.'.join(map(str, llvm.llvm_version_info))}), "
        f"torch {torch.__version__ if torch else '- (not importable)'}",
        f"OPENBLAS_CORETYPE: {coretype or 'unset'}"
        + (" (pins OpenBLAS's kernels: unset it to measure NumPy at its best)" if coretype else ""),
        f"OpenBLAS core in use: {openblas_core()}; "
        f"torch threads: {torch.get_num_threads() if torch else '-'}; "
        f"symnet threads: {default_threads()} (batches below {PARALLEL_MIN_BATCH} on one), "
        f"vector lanes (f32): {vector_width(4)}",
        load_average(),
    ]
    return lines


def load_average():
    """Other work on the machine: with more runnable threads than cores, every figure
    (two-threaded peers most of all) is slower and noisier."""
    one, five, fifteen = os.getloadavg()
    return f"load average (1, 5, 15 min): {one:.2f}, {five:.2f}, {fifteen:.2f}"


def openblas_core():
    """The kernel set OpenBLAS picked at load time (SkylakeX = AVX-512, Haswell = AVX2)."""
    import ctypes
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown (NumPy not linked to OpenBLAS)"


# ---- timing -------------------------------------------------------------------------------
def warm_up(fn, seconds):
    """Calls fn until warm (compiled, allocated, caches filled); returns seconds per call."""
    fn()
    fn()
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        fn()
        count += 1
    return (time.perf_counter() - start) / count


def measure(fns, budget):
    """{peer: (median, min) seconds per call}, timing the peers in interleaved rounds.

    Each peer gets about `budget` seconds in all; every call is timed by itself so the
    median ignores calls that an interrupt or the other engineers' jobs slowed down."""
    per_call = {k: warm_up(fn, budget / 10) for k, fn in fns.items()}
    reps = {k: max(1, min(2000, int(budget / ROUNDS / t))) for k, t in per_call.items()}
    samples = {k: [] for k in fns}
    gc.disable()
    try:
        for _ in range(ROUNDS):
            for k, fn in fns.items():
                clock = time.perf_counter
                for _ in range(reps[k]):
                    start = clock()
                    fn()
                    samples[k].append(clock() - start)
    finally:
        gc.enable()
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


# ---- NumPy by hand ------------------------------------------------------------------------
def softmax_cross_entropy(z, y):
    """(mean loss, dloss/dz) for logits z [N, K] and class indices y [N]."""
    n = len(y)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - z[np.arange(n), y]))
    g = e / total
    g[np.arange(n), y] -= 1
    g /= n
    return loss, g


class NumpyDense:
    """A dense layer x @ W + b with an optional ReLU, and its SGD step."""

    def __init__(self, W, b, relu):
        self.W, self.b, self.relu = W.copy(), b.copy(), relu

    def forward(self, x):
        self.x = x
        out = x @ self.W + self.b
        if self.relu:
            np.maximum(out, 0, out=out)
            self.out = out
        return out

    def backward(self, g, lr, need_input_grad=True):
        if self.relu:
            g = g * (self.out > 0)
        dx = g @ self.W.T if need_input_grad else None
        self.W -= lr * (self.x.T @ g)
        self.b -= lr * g.sum(axis=0)
        return dx


class NumpyConv:
    """conv2d (stride 1) as im2col + one matrix product, with ReLU and its SGD step."""

    def __init__(self, W, b, pad):
        self.W, self.b, self.pad = W.copy(), b.copy(), pad

    def forward(self, x):
        filters, _, k, _ = self.W.shape
        self.shape = x.shape
        if self.pad:
            x = np.pad(x, ((0, 0), (0, 0), (self.pad,) * 2, (self.pad,) * 2))
        windows = sliding_window_view(x, (k, k), axis=(2, 3))        # [N, C, Ho, Wo, k, k]
        n, c, ho, wo = windows.shape[:4]
        self.cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
        out = self.cols @ self.W.reshape(filters, -1).T + self.b
        np.maximum(out, 0, out=out)
        self.out = out                                                # [N*Ho*Wo, F]
        return out.reshape(n, ho, wo, filters).transpose(0, 3, 1, 2)

    def backward(self, g, lr, need_input_grad=True):
        filters, c, k, _ = self.W.shape
        g = g.transpose(0, 2, 3, 1).reshape(-1, filters) * (self.out > 0)
        dx = self.col2im(g @ self.W.reshape(filters, -1), c, k) if need_input_grad else None
        self.W -= lr * (g.T @ self.cols).reshape(self.W.shape)
        self.b -= lr * g.sum(axis=0)
        return dx

    def col2im(self, dcols, c, k):
        n, _, h, w = self.shape
        p = self.pad
        ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
        d = dcols.reshape(n, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)
        dx = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=dcols.dtype)
        for i in range(k):
            for j in range(k):
                dx[:, :, i:i + ho, j:j + wo] += d[:, :, i, j]
        return dx[:, :, p:p + h, p:p + w]


class NumpyMaxPool2:
    """2x2 max pooling, stride 2; the gradient goes to the first maximum of each window."""

    def forward(self, x):
        n, c, h, w = x.shape
        windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
        windows = windows.reshape(n, c, h // 2, w // 2, 4)
        self.shape, self.where = x.shape, windows.argmax(axis=-1)[..., None]
        return np.take_along_axis(windows, self.where, axis=-1)[..., 0]

    def backward(self, g, lr, need_input_grad=True):
        n, c, h, w = self.shape
        d = np.zeros((n, c, h // 2, w // 2, 4), dtype=g.dtype)
        np.put_along_axis(d, self.where, g[..., None], axis=-1)
        return d.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


class NumpyFlatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, g, lr, need_input_grad=True):
        return g.reshape(self.shape)


class NumpyNet:
    """Layers in order: forward, softmax cross-entropy, backward with in-place SGD."""

    def __init__(self, layers, lr):
        self.layers, self.lr = layers, lr

    def predict(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def step(self, x, y):
        loss, g = softmax_cross_entropy(self.predict(x), y)
        for k in range(len(self.layers) - 1, -1, -1):
            g = self.layers[k].backward(g, self.lr, need_input_grad=k > 0)
        return loss


def numpy_mlp(p, lr):
    return NumpyNet([NumpyDense(p["h1.W"], p["h1.b"], True), NumpyDense(p["h2.W"], p["h2.b"], True),
                     NumpyDense(p["logits.W"], p["logits.b"], False)], lr)


def numpy_lenet(p, lr):
    return NumpyNet([NumpyConv(p["c1.W"], p["c1.b"], 2), NumpyMaxPool2(),
                     NumpyConv(p["c3.W"], p["c3.b"], 0), NumpyMaxPool2(), NumpyFlatten(),
                     NumpyDense(p["f5.W"], p["f5.b"], True), NumpyDense(p["f6.W"], p["f6.b"], True),
                     NumpyDense(p["logits.W"], p["logits.b"], False)], lr)


# ---- PyTorch ------------------------------------------------------------------------------
def torch_mlp(p):
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    load_torch_weights(model, p, ["h1", "h2", "logits"])
    return model


def torch_lenet(p):
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    load_torch_weights(model, p, ["c1", "c3", "f5", "f6", "logits"])
    return model


def load_torch_weights(model, p, names):
    """symnet's initial weights into the torch layers (dense W is [in, out], Linear's [out, in])."""
    layers = [m for m in model if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        for layer, name in zip(layers, names):
            W = p[f"{name}.W"]
            layer.weight.copy_(torch.from_numpy(W.T.copy() if W.ndim == 2 else W))
            layer.bias.copy_(torch.from_numpy(p[f"{name}.b"]))


def torch_step(model, lr, compiled):
    """One SGD step of a torch model: the forward (and loss) compiled when asked."""
    def loss_of(x, y):
        return TF.cross_entropy(model(x), y)
    if compiled:
        torch._dynamo.reset()
        loss_of = torch.compile(loss_of, dynamic=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        loss.backward()
        opt.step()
        return loss
    return step


def torch_predict(model, compiled):
    if compiled:
        torch._dynamo.reset()
        model = torch.compile(model, dynamic=False)

    def predict(x):
        with torch.inference_mode():
            return model(x)
    return predict


# ---- cases --------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    kind: str                                   # "time" | "gflops" | "seconds" | "mib"
    values: dict = field(default_factory=dict)  # peer -> (main figure, best figure)
    note: str = ""

    def ratio(self, peer, best=False):
        """How many times better symnet is than the peer (>1: symnet ahead)."""
        mine, theirs = self.values.get("symnet"), self.values.get(peer)
        if not mine or not theirs or not mine[best] or not theirs[best]:
            return None
        a, b = mine[best], theirs[best]
        return a / b if self.kind == "gflops" else b / a


@dataclass
class Model:
    label: str
    path: str
    numpy: object              # (params, lr) -> NumpyNet
    torch: object              # params -> torch module
    example_shape: tuple
    lr: float                  # SGD's step size: every peer trains with plain SGD


MODELS = {"mlp": Model("MLP", "examples/mlp.nn", numpy_mlp, torch_mlp, (784,), 0.1),
          # the language spec's LeNet-5 trains with sgd(lr=0.05); the example file may
          # default to another optimizer, so the optimizer is fixed here
          "lenet": Model("LeNet-5", "examples/lenet5.nn", numpy_lenet, torch_lenet, (1, 28, 28), 0.05)}
_programs = {}


def program(name):
    """symnet's program of a model with SGD, compiled once per run, and its initial parameters."""
    if name not in _programs:
        prog = compile(load(os.path.join(ROOT, MODELS[name].path)), optimizer="sgd")
        prog.configure(lr=MODELS[name].lr)
        _programs[name] = prog, prog.get_params()
    return _programs[name]


def batch(name, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + MODELS[name].example_shape).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)


def model_case(name, mode, n, args):
    """A training step or a prediction at batch n, for every peer that can run it.

    Every peer starts from the same initial weights; its first two losses (a step: the
    second shows the update) or its logits (a prediction) are compared with symnet's,
    so a peer that computes something else cannot look fast unnoticed."""
    prog, params = program(name)
    prog.set_params(params)
    model = MODELS[name]
    x, y = batch(name, n)
    inputs = {"x": x, "y": y}
    net = model.numpy(params, model.lr)
    fns = {"symnet": (lambda: prog.train_step(inputs)) if mode == "step" else (lambda: prog.forward(inputs)),
           "numpy": (lambda: net.step(x, y)) if mode == "step" else (lambda: net.predict(x))}
    calls = 2 if mode == "step" else 1
    first = {peer: [fn() for _ in range(calls)] for peer, fn in fns.items()}
    notes = []
    if torch is not None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y).long()
        for peer in ("torch", "torch.compile") if not args.quick else ("torch",):
            try:                              # torch.compile needs a C++ toolchain, and more
                fn = torch_callable(model, mode, params, tx, ty, compiled=peer == "torch.compile")
                first[peer] = [fn() for _ in range(calls)]
                fns[peer] = fn
            except Exception as e:
                first_line = (str(e).splitlines() or [""])[0][:80]
                notes.append(f"{peer} failed: {type(e).__name__}: {first_line}")
    notes += disagreements(first, mode)
    label = f"{model.label} {'step' if mode == 'step' else 'predict'}, batch {n}"
    return Row(label, "time", measure(fns, args.budget), "; ".join(notes))


def torch_callable(model, mode, params, tx, ty, compiled):
    net = model.torch(params)
    if mode == "step":
        step = torch_step(net, model.lr, compiled)
        return lambda: step(tx, ty)
    predict = torch_predict(net, compiled)
    return lambda: predict(tx)


def disagreements(first, mode):
    """Peers whose first results (losses of a step, logits of a prediction) differ from symnet's."""
    def plain(v):                             # torch's loss is a tensor that requires grad
        v = v.detach() if hasattr(v, "detach") else v
        return np.asarray(v["logits"] if isinstance(v, dict) else v, dtype=np.float64)
    values = {peer: [plain(v) for v in results] for peer, results in first.items()}
    what = "losses" if mode == "step" else "logits"
    return [f"{peer}'s first {what} differ from symnet's" for peer, results in values.items()
            if not all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(results, values["symnet"]))]


MATMUL_MODEL = """model matmul
input A[N, {K}]
param B[{K}, {M}] ~ normal(0, 1)
output C = A @ B
"""


def matmul_case(n, k, m, args):
    """GFLOP/s of C = A @ B (float32): symnet's program.forward, NumPy, torch.mm."""
    prog = compile(parse(MATMUL_MODEL.format(K=k, M=m), "matmul.nn"))
    A = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    B = prog.get_params()["B"].astype(np.float32)
    inputs = {"A": A}
    fns = {"symnet": lambda: prog.forward(inputs)["C"], "numpy": lambda: A @ B}
    if torch is not None:
        tA, tB = torch.from_numpy(A), torch.from_numpy(B)
        fns["torch"] = lambda: torch.mm(tA, tB)
    want = A.astype(np.float64) @ B.astype(np.float64)
    notes = [f"{peer} result is wrong" for peer, fn in fns.items()
             if not np.allclose(np.asarray(fn()), want, rtol=1e-3, atol=1e-3 * np.sqrt(k))]
    flops = 2.0 * n * k * m
    times = measure(fns, args.budget)
    values = {p: (flops / t[0] / 1e9, flops / t[1] / 1e9) for p, t in times.items()}
    return Row(f"matrix product {n}x{k}x{m}, GFLOP/s", "gflops", values, "; ".join(notes))


# ---- fresh processes: compile time and memory ----------------------------------------------
# LeNet-5 at batch 64 as a fresh process runs it: (imports, define, compile, one step).
FRESH = {
    "symnet": ("from compiler import load, compile\nimport numpy as np",
               "m = load('examples/lenet5.nn')",
               "p = compile(m, optimizer='sgd')\n"
               "inputs = {'x': np.random.rand(64, 1, 28, 28).astype(np.float32),"
               " 'y': np.zeros(64, np.int32)}",
               "p.train_step(inputs)"),
    "torch": ("import torch\ntorch.set_num_threads({threads})",
              "nn = torch.nn\n"
              "model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),"
              " nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120),"
              " nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))\n"
              "loss_of = lambda x, y: torch.nn.functional.cross_entropy(model(x), y)",
              "{compile}"
              "opt = torch.optim.SGD(model.parameters(), lr=0.05)\n"
              "x, y = torch.rand(64, 1, 28, 28), torch.zeros(64, dtype=torch.long)",
              "opt.zero_grad(); loss_of(x, y).backward(); opt.step()"),
}
FIRST_CALL = """import time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{define}
t2 = time.perf_counter()
{compile}
t3 = time.perf_counter()
{step}
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
"""
MAXRSS = "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
STAGES = ("cold", "warm")


def fresh(peer, args):
    """{imports, define, compile, step} source for a fresh process; "torch.compile"
    compiles the loss."""
    imports, define, compile_, step = FRESH["symnet" if peer == "symnet" else "torch"]
    wrap = "loss_of = torch.compile(loss_of, dynamic=False)\n" if peer == "torch.compile" else ""
    return {"imports": imports.format(threads=args.torch_threads), "define": define,
            "compile": compile_.replace("{compile}", wrap), "step": step}


def run_python(code, env_extra, timeout=900):
    """stdout's last line of `python -c code` in a fresh process at the repository root.

    The process is started by sh, which forks it: ru_maxrss survives exec, so a child
    spawned straight from this large process would report this process's peak."""
    env = {**os.environ, **env_extra}
    done = subprocess.run(["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, code], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return done.stdout.strip().splitlines()[-1]


def first_call_rows(args):
    """Cold and warm first training step of LeNet-5 in fresh processes (seconds from the
    first import to the end of the first step).

    symnet: SYMNET_CACHE points at a new directory (cold), then at the same one (warm);
    torch.compile likewise with TORCHINDUCTOR_CACHE_DIR; eager PyTorch has no cache, so
    its warm row is simply a second fresh process. symnet's load + compile part alone
    (the issue's compile-time target) gets rows of its own."""
    peers = {"symnet": "SYMNET_CACHE"}
    if torch is not None:
        peers["torch"] = None
        if not args.quick:
            peers["torch.compile"] = "TORCHINDUCTOR_CACHE_DIR"
    first = {stage: Row(f"first step, LeNet-5 batch 64, {stage} (s)", "seconds") for stage in STAGES}
    compiled = {stage: Row(f"load + compile, LeNet-5, {stage} (s)", "seconds") for stage in STAGES}
    with tempfile.TemporaryDirectory() as scratch:
        for peer, cache_var in peers.items():
            code = FIRST_CALL.format(**fresh(peer, args))
            env = {cache_var: os.path.join(scratch, peer)} if cache_var else {}
            for stage in STAGES:
                try:
                    t_import, t_load, t_compile, t_step = (float(v) for v in run_python(code, env).split())
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    first[stage].note += f"{peer} failed: {e}; "
                    continue
                first[stage].values[peer] = (t_import + t_load + t_compile + t_step,) * 2
                first[stage].note += (f"{peer}: import {t_import:.2f} + define {t_load:.3f} + compile "
                                      f"{t_compile:.3f} + step {t_step:.3f} s; ")
                if peer == "symnet":
                    compiled[stage].values[peer] = (t_load + t_compile,) * 2
    return [first["cold"], first["warm"], compiled["cold"], compiled["warm"]]


def memory_rows(args):
    """Peak resident memory (ru_maxrss) of 5 LeNet-5 steps at batch 64, minus that of a
    process that only imports the library. symnet's cold row includes LLVM's optimization
    and code generation; its warm row loads the object code from the disk cache."""
    rows = {stage: Row(f"peak memory, LeNet-5 training batch 64, {stage} (MiB)", "mib") for stage in STAGES}
    with tempfile.TemporaryDirectory() as cache:
        env = {"SYMNET_CACHE": cache}
        for peer in ("symnet", "torch") if torch is not None else ("symnet",):
            code = fresh(peer, args)
            train = "{imports}\n{define}\n{compile}\nfor _ in range(5):\n    {step}".format(**code)
            try:
                base = int(run_python(code["imports"] + MAXRSS, env))
                for stage in STAGES:
                    peak = int(run_python(train + MAXRSS, env))
                    rows[stage].values[peer] = ((peak - base) / 1024,) * 2
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                rows["cold"].note += f"{peer} failed: {e}; "
    return [rows["cold"], rows["warm"]]


# ---- output -------------------------------------------------------------------------------
def cell(row, peer, best=False):
    value = row.values.get(peer)
    if not value:
        return "-"
    v = value[best]
    if row.kind == "time":
        return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    if row.kind == "seconds":
        return f"{v:.3f}"
    return f"{v:.1f}"


def ratio_cell(row, peer, best=False):
    r = row.ratio(peer, best)
    return "-" if r is None else f"{r:.2f}x"


def print_table(rows, best=False):
    others = PEERS[1:]
    print("| case | " + " | ".join(PEERS) + " | " + " | ".join(f"vs {p}" for p in others) + " |")
    print("| --- " * (len(PEERS) + len(others)) + "| --- |")
    for row in rows:
        cells = [cell(row, p, best) for p in PEERS] + [ratio_cell(row, p, best) for p in others]
        print(f"| {row.label} | " + " | ".join(cells) + " |")


TARGETS = [  # (what the issue asks, row, peer (None: symnet's own figure), bound)
    ("MLP step batch 1: >= 5x PyTorch eager", "MLP step, batch 1", "torch", 5),
    ("MLP step batch 64: >= 2x PyTorch eager", "MLP step, batch 64", "torch", 2),
    ("MLP step batch 256: >= 2x PyTorch eager", "MLP step, batch 256", "torch", 2),
    ("LeNet-5 step batch 64: >= 2x PyTorch eager", "LeNet-5 step, batch 64", "torch", 2),
    ("MLP predict batch 1: >= 3x PyTorch eager", "MLP predict, batch 1", "torch", 3),
    ("LeNet-5 predict batch 1: >= 3x PyTorch eager", "LeNet-5 predict, batch 1", "torch", 3),
    ("matrix product 1024^3: >= 0.9x NumPy's GFLOP/s", "matrix product 1024x1024x1024, GFLOP/s",
     "numpy", 0.9),
    ("LeNet-5 load + compile, cold: < 2 s", "load + compile, LeNet-5, cold (s)", None, 2),
    ("LeNet-5 load + compile, warm: < 0.1 s", "load + compile, LeNet-5, warm (s)", None, 0.1),
    ("peak memory of LeNet-5 training (warm): <= PyTorch eager's",
     "peak memory, LeNet-5 training batch 64, warm (MiB)", "torch", 1),
]


def print_targets(rows):
    by_label = {r.label: r for r in rows}
    print("\nTargets (from the medians above):")
    for text, label, peer, bound in TARGETS:
        row = by_label.get(label)
        if peer is None:
            value = row.values.get("symnet") if row else None
            figure = value and value[0]
            met, shown = figure is not None and figure < bound, figure and f"{figure:.3f} s"
        else:
            figure = row.ratio(peer) if row else None
            met, shown = figure is not None and figure >= bound, figure and f"{figure:.2f}x"
        verdict = "not measured" if figure is None else "met" if met else "NOT met"
        print(f"- {text}: {shown or '-'} -> {verdict}")


# ---- main ---------------------------------------------------------------------------------
CASES = {
    "mlp-step-1": lambda a: [model_case("mlp", "step", 1, a)],
    "mlp-step-64": lambda a: [model_case("mlp", "step", 64, a)],
    "mlp-step-256": lambda a: [model_case("mlp", "step", 256, a)],
    "lenet-step-64": lambda a: [model_case("lenet", "step", 64, a)],
    "mlp-predict-1": lambda a: [model_case("mlp", "predict", 1, a)],
    "lenet-predict-1": lambda a: [model_case("lenet", "predict", 1, a)],
    "matmul-1024": lambda a: [matmul_case(1024, 1024, 1024, a)],
    "matmul-64x784x128": lambda a: [matmul_case(64, 784, 128, a)],
    "compile": first_call_rows,
    "memory": memory_rows,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions and no torch.compile (for the smoke test)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), metavar="CASE",
                        help="cases to run (default all): " + ", ".join(CASES))
    parser.add_argument("--torch-threads", type=int, default=2, metavar="N",
                        help="threads PyTorch may use (default 2, the issue's setting)")
    args = parser.parse_args(argv)
    args.budget = 0.05 if args.quick else 2.0       # seconds of timed calls per peer and case
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
    for line in machine_lines():
        print(line)
    quick = " (--quick: torch.compile skipped)" if args.quick else ""
    print(f"timing: median / min of single calls in {ROUNDS} interleaved rounds, about "
          f"{args.budget:g} s per peer and case{quick}")
    rows = []
    for name in args.cases or CASES:
        rows += CASES[name](args)
    print("\nMedian (ratios: peer time / symnet time, for GFLOP/s symnet / peer; >1: symnet ahead)\n")
    print_table(rows)
    print("\nMinimum (the best call; for GFLOP/s the best call's rate)\n")
    print_table(rows, best=True)
    notes = [f"- {r.label}: {r.note.strip('; ')}" for r in rows if r.note.strip("; ")]
    if notes:
        print("\nNotes:\n" + "\n".join(notes))
    print_targets(rows)
    print(f"\nat the end, {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
