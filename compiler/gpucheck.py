"""The PTX target's kernels checked without a GPU: the "gpu-emulation" target runs each
launch on this CPU, block by block and thread by thread, with its checks for races and
out-of-bounds accesses (codegen/gpu_emulation.py); its outputs, gradients and one
training step are compared with the CPU backend's. What `symnet gpucheck` prints.

Where the GPU and the CPU differ by more than TOLERANCE, float64 (compiler.reference)
gives a second opinion: a value that cancels (h - mean(h) feeding a bias has a gradient
of 0 in exact arithmetic) is rounding noise on both sides, summed in different orders,
and passes if the GPU is about as close to float64 as the CPU is. Float64 is computed
only for such suspects (it interprets the loop nests: 20 s for LeNet-5's gradients at
batch 300), and clears only what the CPU's own result shares: a wrong kernel still
fails.

The emulation computes exp and log with the host's libm, not the GPU's ex2/lg2
approximations, and cannot time anything: those need a GPU (tests/test_gpu.py).
"""
from dataclasses import dataclass, field
import functools

import numpy as np

from . import reference
from .codegen.gpu_emulation import GRID, sanitizer_report
from .gpu_schedule import BLOCK
from .native import compile

TOLERANCE = 1e-4      # float32 against float32, relative to the largest magnitude
# The second opinion: the GPU may err against float64 ROUNDING times as much as the
# CPU's own float32 result does (or TOLERANCE). In 135 gradients that cancel (3 models,
# 15 seeds, batches 5, 17 and 300) the GPU erred at most 2.7 times as much as the CPU
# (half the time less); a wrong kernel errs where the CPU does not, by far more.
ROUNDING = 8
BATCHES = (5, 300)    # fewer examples than threads in a block; more than the grid holds
GRID_SHAPE = f"{GRID} blocks of {BLOCK} threads a launch"
# Adam's first step is lr * g / (|g| + eps): a gradient error d moves it by up to
# lr * d / eps. With the default eps (1e-8) a near-zero gradient steps by +lr or -lr by
# the sign of its rounding noise; with eps at 10% of the largest gradient, float32
# rounding (1e-7 of the largest) moves a step by about 1e-6 of lr: the update's arithmetic
# is compared, not noise.
ADAM_EPS = 0.1
ULP = 2.0 ** -23      # float32's spacing relative to a number's magnitude, at most


@dataclass
class Comparison:
    name: str                                   # an output, "loss", "grad P" or "step of P"
    errors: dict = field(default_factory=dict)  # batch -> relative error against the CPU
    # batch -> (GPU's, CPU's) relative error against float64, where errors[batch] is
    # over TOLERANCE (outputs, loss and gradients; same scale as errors)
    rounding: dict = field(default_factory=dict)

    def passes(self):
        return all(e <= TOLERANCE or self.is_rounding(b) for b, e in self.errors.items())

    def allowed(self, batch):
        """How far the GPU may err against float64: ROUNDING times the CPU's own error,
        or TOLERANCE."""
        return max(TOLERANCE, ROUNDING * self.rounding.get(batch, (0.0, 0.0))[1])

    def is_rounding(self, batch):
        """Whether a difference over TOLERANCE is float32 rounding: the GPU is as close
        to float64 as the CPU is (ROUNDING times), or within TOLERANCE of it."""
        gpu = self.rounding.get(batch, (float("nan"), 0.0))[0]
        return gpu <= self.allowed(batch)       # NaN fails


@dataclass
class GpuCheck:
    comparisons: list           # of Comparison
    report: str | None          # the emulation's races and bad addresses, None if none
    eps_raised: bool = False    # Adam's steps were compared at the raised eps below


def relative_error(actual, expected, allowance=0.0, scale=None):
    """The largest difference, less `allowance`, relative to `scale` (by default the
    largest magnitude expected). Infinities and NaNs agree where both sides have the
    same (an overflow on both sides is no difference); anywhere else the error is
    infinite."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    finite = np.isfinite(expected)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(finite | same) or not np.all(np.isfinite(actual[finite])):
        return float("inf")
    actual, expected = actual[finite], expected[finite]
    scale = scale or float(np.max(np.abs(expected), initial=0.0)) or 1.0
    difference = float(np.max(np.abs(actual - expected), initial=0.0))
    return max(difference - allowance, 0.0) / scale


def gpucheck(model, batches=BATCHES, seed=0, optimizer=None, adam_eps=ADAM_EPS):
    """A GpuCheck: every output, gradient and step compared, and the emulation's report.
    With Adam, steps are compared at eps = adam_eps x the largest gradient (or the
    model's eps, if larger)."""
    gpu = compile(model, target="gpu-emulation", optimizer=optimizer, cache=False)
    cpu = compile(model, optimizer=optimizer, cache=False)
    eps = cpu.optimizer.get("eps")
    start = cpu.get_params()
    comparisons = {}

    def compare(name, batch, actual, expected, exact=None, allowance=0.0):
        """`exact()`, the float64 value, is asked for only over TOLERANCE."""
        c = comparisons.setdefault(name, Comparison(name))
        c.errors[batch] = relative_error(actual, expected, allowance)
        if c.errors[batch] > TOLERANCE and exact is not None:
            scale = _largest([expected])
            c.rounding[batch] = (relative_error(actual, exact(), scale=scale),
                                 relative_error(expected, exact(), scale=scale))
        return c
    entries = gpu.spec["entries"]
    for batch in batches:
        for program in (gpu, cpu):
            program.set_params(start)         # each batch from the parameters float64 gets
        inputs = reference.random_inputs(model, batch=batch, seed=seed)
        # float64 from the float32 inputs the programs see, each result once if asked
        as_f32 = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in inputs.items()}
        exact_forward = functools.cache(lambda: reference.forward(model, as_f32, start))
        exact_grad = functools.cache(lambda: reference.value_and_grad(model, as_f32, start))
        expected = cpu.forward(inputs)
        for name, value in gpu.forward(inputs).items():
            compare(name, batch, value, expected[name], lambda: exact_forward()[name])
        spread = {}       # parameter -> how far its gradients may differ, where rounding
        if "value_and_grad" in entries:
            loss, grads = gpu.value_and_grad(inputs)
            expected_loss, expected_grads = cpu.value_and_grad(inputs)
            compare("loss", batch, loss, expected_loss, lambda: exact_grad()[0])
            for name, value in grads.items():
                c = compare(f"grad {name}", batch, value, expected_grads[name],
                            lambda: exact_grad()[1][name])
                if batch in c.rounding and c.is_rounding(batch):
                    # |gpu - cpu| <= |gpu - f64| + |cpu - f64|, each as allowed above
                    spread[name] = (c.allowed(batch) + c.rounding[batch][1]) \
                        * _largest([expected_grads[name]])
        if "train_step" in entries:
            if eps is not None:
                largest = _largest(expected_grads.values())
                for program in (gpu, cpu):
                    program.configure(eps=max(eps, adam_eps * largest))
            # A first step moves by lr * g (SGD, momentum) or lr * g / (|g| + eps) (Adam):
            # a gradient difference d moves it by at most d times this.
            rate = cpu.optimizer["lr"] / cpu.optimizer.get("eps", 1.0)
            gpu.reset_optimizer(), cpu.reset_optimizer()
            gpu.train_step(inputs), cpu.train_step(inputs)
            expected = cpu.get_params()
            for name, value in gpu.get_params().items():
                # The change, not the sum; each side's new parameters are rounded to
                # float32, so they may differ by one unit in the last place; and by the
                # rounding of their gradients where that is over TOLERANCE.
                allowance = ULP * _largest([expected[name]]) + rate * spread.get(name, 0.0)
                compare(f"step of {name}", batch, value - start[name], expected[name] - start[name],
                        allowance=allowance)
    eps_raised = eps is not None and "train_step" in entries
    return GpuCheck(list(comparisons.values()), sanitizer_report(gpu), eps_raised)


def _largest(arrays):
    """The largest finite magnitude in any of the arrays (0 if none)."""
    return max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in map(np.asarray, arrays)),
               default=0.0)
