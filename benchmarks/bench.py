"""symnet against what a user would pick instead, measured side by side in one run.

    python benchmarks/bench.py                      # every case
    python benchmarks/bench.py --quick              # few repetitions, no torch.compile
    python benchmarks/bench.py --cases mlp-step-64 matmul-1024

Peers: NumPy written by hand, PyTorch eager and torch.compile, JAX (one jitted SGD step),
tinygrad (TinyJit) and PyTensor (compiled functions, C backend), each when its library
imports (otherwise its column shows "-"). Every peer starts from symnet's initial weights, and
the first call's loss (or output) of each peer is checked against symnet's, so the
table compares the same computation. Times are per call: warm-up first, then the peers
are timed in interleaved rounds (so drift on a shared machine hits them alike), each
call timed alone with time.perf_counter; the table gives the median and the minimum.
Ratios are peer time / symnet time: above 1 means symnet is faster.

Nothing here asserts a timing: the script prints, and the issue's targets are listed
at the end as met or not met from the medians of this run.
"""
import argparse
import functools
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
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

try:                                # XLA on the CPU, float32 (x64 stays off)
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", False)
except (ImportError, OSError, RuntimeError):
    jax = None

try:                                # its CPU device compiles generated C with clang when first used
    import tinygrad
    from tinygrad import Context as TinyContext, Device as TinyDevice, Tensor as TinyTensor, TinyJit
    from tinygrad.helpers import NUM_CPU_THREADS as TINY_THREADS
except (ImportError, OSError):
    tinygrad = None

try:                                # its C backend compiles generated C with the system's cc
    import pytensor
    import pytensor.tensor as pt
    pytensor.config.linker = "cvm"  # the C backend, for inner graphs too (PyTensor 3 defaults to Numba)
except (ImportError, OSError):
    pytensor = None

PEERS = ["symnet", "numpy", "torch", "torch.compile", "jax", "tinygrad", "pytensor"]
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
        f"torch {torch.__version__ if torch else '- (not importable)'}, "
        f"jax {jax.__version__ if jax else '- (not importable)'}, "
        f"tinygrad {version_of('tinygrad') if tinygrad else '- (not importable)'}, "
        f"pytensor {pytensor.__version__ if pytensor else '- (not importable)'}",
        f"OPENBLAS_CORETYPE: {coretype or 'unset'}"
        + (" (pins OpenBLAS's kernels: unset it to measure NumPy at its best)" if coretype else ""),
        f"OpenBLAS core in use: {openblas_core()}; "
        f"torch threads: {torch.get_num_threads() if torch else '-'}; "
        f"symnet threads: {default_threads()} (batches below {PARALLEL_MIN_BATCH} on one), "
        f"vector lanes (f32): {vector_width(4)}",
        f"jax threads: {f'XLA, every core it may use ({len(os.sched_getaffinity(0))})' if jax else '-'}; "
        f"tinygrad threads: {TINY_THREADS.value if tinygrad else '-'}; "
        f"pytensor: {pytensor_blas() if pytensor else '-'}",
        load_average(),
    ]
    return lines


def version_of(package):
    from importlib.metadata import version
    return version(package)


def pytensor_blas():
    """What PyTensor's C backend multiplies matrices with: a BLAS it links, or NumPy."""
    with warnings.catch_warnings():          # "PyTensor could not link to a BLAS installation"
        warnings.simplefilter("ignore")
        flags = pytensor.config.blas__ldflags
    return (f"BLAS {flags}" if flags else "no BLAS to link, its matrix products call NumPy's C API") + \
        f", elementwise loops on {'OpenMP' if pytensor.config.openmp else 'one thread'}"


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


# ---- JAX ----------------------------------------------------------------------------------
def jax_params(p):
    """symnet's initial weights as a pytree (a dict) of float32 arrays on the CPU."""
    return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()}


def jax_dense(p, name, x, relu):
    out = x @ p[f"{name}.W"] + p[f"{name}.b"]
    return jax.nn.relu(out) if relu else out


def jax_conv_relu(p, name, x, pad):
    """conv2d, stride 1, NCHW input and OIHW filters (symnet's layouts), then ReLU."""
    out = jax.lax.conv_general_dilated(x, p[f"{name}.W"], window_strides=(1, 1),
                                       padding=((pad, pad), (pad, pad)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jax.nn.relu(out + p[f"{name}.b"][None, :, None, None])


def jax_max_pool2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def jax_mlp(p, x):
    return jax_dense(p, "logits", jax_dense(p, "h2", jax_dense(p, "h1", x, True), True), False)


def jax_lenet(p, x):
    x = jax_max_pool2(jax_conv_relu(p, "c1", x, 2))
    x = jax_max_pool2(jax_conv_relu(p, "c3", x, 0))
    x = x.reshape(x.shape[0], -1)
    return jax_dense(p, "logits", jax_dense(p, "f6", jax_dense(p, "f5", x, True), True), False)


def jax_callable(model, mode, params, x, y):
    """The whole SGD step (forward, value_and_grad, update) as one jitted function of the
    parameters' pytree, which it donates; the prediction jitted too. Every call blocks
    until the result is computed (JAX dispatches asynchronously)."""
    net = model.jax
    state = {"params": jax_params(params)}
    jx, jy = jax.device_put(x), jax.device_put(y)
    if mode == "predict":
        predict = jax.jit(net)
        return lambda: predict(state["params"], jx).block_until_ready()

    def loss_of(p, x, y):
        logp = jax.nn.log_softmax(net(p, x), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    lr = jnp.float32(model.lr)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(p, x, y):
        loss, grads = jax.value_and_grad(loss_of)(p, x, y)
        return jax.tree.map(lambda w, g: w - lr * g, p, grads), loss

    def call():
        state["params"], loss = step(state["params"], jx, jy)
        return loss.block_until_ready()
    return call


# ---- tinygrad -----------------------------------------------------------------------------
def tiny_layers(model, p, names):
    """symnet's initial weights into tinygrad's nn.Linear / nn.Conv2d (Linear's weight is [out, in])."""
    for layer, name in zip(model, names):
        W = p[f"{name}.W"]
        layer.weight = TinyTensor(W.T.copy() if W.ndim == 2 else W.copy())
        layer.bias = TinyTensor(p[f"{name}.b"].copy())
    return model


class TinyMLP:
    def __init__(self, p):
        from tinygrad import nn
        self.layers = tiny_layers([nn.Linear(784, 128), nn.Linear(128, 64), nn.Linear(64, 10)], p,
                                  ["h1", "h2", "logits"])

    def __call__(self, x):
        h1, h2, out = self.layers
        return out(h2(h1(x).relu()).relu())


class TinyLeNet:
    def __init__(self, p):
        from tinygrad import nn
        self.layers = tiny_layers([nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5), nn.Linear(400, 120),
                                   nn.Linear(120, 84), nn.Linear(84, 10)], p, ["c1", "c3", "f5", "f6", "logits"])

    def __call__(self, x):
        c1, c3, f5, f6, out = self.layers
        x = c3(c1(x).relu().max_pool2d(2)).relu().max_pool2d(2).flatten(1)
        return out(f6(f5(x).relu()).relu())


def tinygrad_callable(model, mode, params, x, y):
    """The step (forward, loss, backward, nn.optim.SGD) under TinyJit, which captures the
    kernels on its second call and replays them from the third; the prediction likewise.
    Each call waits for the CPU device to finish (its queues run asynchronously)."""
    from tinygrad import nn
    net = model.tinygrad(params)
    tx, ty = TinyTensor(x).realize(), TinyTensor(y).realize()
    device = TinyDevice[tx.device]
    if mode == "predict":
        predict = TinyJit(lambda x: net(x).realize())

        def call_predict():
            out = predict(tx)
            device.synchronize()
            return out
        return call_predict
    opt = nn.optim.SGD(nn.state.get_parameters(net), lr=model.lr)

    @TinyJit
    def step(x, y):
        with TinyContext(TRAINING=1):
            opt.zero_grad()
            loss = net(x).sparse_categorical_crossentropy(y).backward()
            return loss.realize(*opt.schedule_step())   # the loss before the update, and the update

    def call():
        loss = step(tx, ty)
        device.synchronize()
        return loss
    return call


# ---- PyTensor -----------------------------------------------------------------------------
PYTENSOR_MODE = "FAST_RUN"    # with linker "cvm": each node's generated C compiled by the system's cc


def pytensor_mlp(p, x):
    def dense(h, name, relu):
        out = h @ p[f"{name}.W"] + p[f"{name}.b"]
        return pt.maximum(out, 0) if relu else out
    return dense(dense(dense(x, "h1", True), "h2", True), "logits", False)


def pytensor_callable(model, mode, params, x, y):
    """pytensor.function for the step (the loss, with updates=SGD's from pytensor.grad) and
    another for the logits, compiled by the C backend; parameters are shared variables."""
    shared = {k: pytensor.shared(v.astype(np.float32), name=k) for k, v in params.items()}
    tx = pt.tensor("x", dtype="float32", shape=(None,) + x.shape[1:])
    logits = model.pytensor(shared, tx)
    with warnings.catch_warnings():          # "Using NumPy C-API based implementation for BLAS"
        warnings.simplefilter("ignore")
        if mode == "predict":
            predict = pytensor.function([tx], logits, mode=PYTENSOR_MODE)
            return lambda: predict(x)
        ty = pt.ivector("y")
        logp = pt.special.log_softmax(logits, axis=-1)
        loss = -pt.mean(logp[pt.arange(ty.shape[0]), ty])
        grads = pytensor.grad(loss, list(shared.values()))
        lr = np.float32(model.lr)
        step = pytensor.function([tx, ty], loss, mode=PYTENSOR_MODE,
                                 updates=[(w, w - lr * g) for w, g in zip(shared.values(), grads)])
    return lambda: step(x, y)


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
    jax: object = None         # (params pytree, x) -> logits
    tinygrad: object = None    # params -> tinygrad model
    pytensor: object = None    # (shared params, x) -> logits; None: PyTensor lacks a piece
    missing: str = ""          # why a peer has no version of this model


MODELS = {"mlp": Model("MLP", "examples/mlp.nn", numpy_mlp, torch_mlp, (784,), 0.1,
                       jax=jax_mlp, tinygrad=TinyMLP, pytensor=pytensor_mlp),
          # the language spec's LeNet-5 trains with sgd(lr=0.05); the example file may
          # default to another optimizer, so the optimizer is fixed here
          "lenet": Model("LeNet-5", "examples/lenet5.nn", numpy_lenet, torch_lenet, (1, 28, 28), 0.05,
                         jax=jax_lenet, tinygrad=TinyLeNet,
                         missing="pytensor: none, PyTensor 3 has no conv2d over channels and no "
                                 "pooling (pytensor.tensor.conv and signal.pool were removed)")}
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
    first = {peer: [plain(fn()) for _ in range(calls)] for peer, fn in fns.items()}
    notes = [model.missing] if model.missing else []
    builders = {}
    if torch is not None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y).long()
        for peer in ("torch", "torch.compile") if not args.quick else ("torch",):
            builders[peer] = functools.partial(torch_callable, model, mode, params, tx, ty,
                                               compiled=peer == "torch.compile")
    for peer, module, build in (("jax", jax, jax_callable), ("tinygrad", tinygrad, tinygrad_callable),
                                ("pytensor", pytensor, pytensor_callable)):
        if module is not None and getattr(model, peer) is not None:
            builders[peer] = functools.partial(build, model, mode, params, x, y)
    for peer, build in builders.items():
        try:                                  # torch.compile, tinygrad, pytensor need a C compiler
            fn = build()
            first[peer] = [plain(fn()) for _ in range(calls)]
            fns[peer] = fn
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0][:80]
            hint = " (its CPU device compiles with clang: is it installed?)" if peer == "tinygrad" else ""
            notes.append(f"{peer} failed: {type(e).__name__}: {first_line}{hint}")
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


def plain(v):
    """A loss or logits as float64 NumPy, copied at once: tinygrad's TinyJit and PyTensor
    may write the next call's result into the same buffer."""
    v = v["logits"] if isinstance(v, dict) else v
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.detach().numpy()                # torch's loss is a tensor that requires grad
    elif tinygrad is not None and isinstance(v, TinyTensor):
        v = v.numpy()
    return np.array(v, dtype=np.float64)


def disagreements(first, mode):
    """Peers whose first results (losses of a step, logits of a prediction; plain() arrays)
    differ from symnet's."""
    what = "losses" if mode == "step" else "logits"
    return [f"{peer}'s first {what} differ from symnet's" for peer, results in first.items()
            if not all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(results, first["symnet"]))]


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
