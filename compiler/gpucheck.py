"""The PTX target's kernels checked without a GPU: the "gpu-emulation" target runs each
launch on this CPU, block by block and thread by thread, with its checks for races and
out-of-bounds accesses (codegen/gpu_emulation.py); its outputs, gradients and one
training step are compared with the CPU backend's. What `symnet gpucheck` prints.

The emulation computes exp and log with the host's libm, not the GPU's ex2/lg2
approximations, and cannot time anything: those need a GPU (tests/test_gpu.py).
"""
from dataclasses import dataclass, field

import numpy as np

from . import reference
from .codegen.gpu_emulation import GRID, sanitizer_report
from .gpu_schedule import BLOCK
from .native import compile

TOLERANCE = 1e-4      # float32 against float32, relative to the largest magnitude
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
    errors: dict = field(default_factory=dict)  # batch -> relative error

    def passes(self):
        return all(e <= TOLERANCE for e in self.errors.values())   # NaN fails


@dataclass
class GpuCheck:
    comparisons: list           # of Comparison
    report: str | None          # the emulation's races and bad addresses, None if none
    eps_raised: bool = False    # Adam's steps were compared at the raised eps below


def relative_error(actual, expected, allowance=0.0):
    """The largest difference, less `allowance`, relative to the largest magnitude
    expected. Infinities and NaNs agree where both sides have the same (an overflow on
    both sides is no difference); anywhere else the error is infinite."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    finite = np.isfinite(expected)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(finite | same) or not np.all(np.isfinite(actual[finite])):
        return float("inf")
    actual, expected = actual[finite], expected[finite]
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    difference = float(np.max(np.abs(actual - expected), initial=0.0))
    return max(difference - allowance, 0.0) / scale


def gpucheck(model, batches=BATCHES, seed=0, optimizer=None, adam_eps=ADAM_EPS):
    """A GpuCheck: every output, gradient and step compared, and the emulation's report.
    With Adam, steps are compared at eps = adam_eps x the largest gradient (or the
    model's eps, if larger)."""
    gpu = compile(model, target="gpu-emulation", optimizer=optimizer, cache=False)
    cpu = compile(model, optimizer=optimizer, cache=False)
    eps = cpu.optimizer.get("eps")
    comparisons = {}

    def compare(name, batch, actual, expected, allowance=0.0):
        comparisons.setdefault(name, Comparison(name)).errors[batch] = \
            relative_error(actual, expected, allowance)
    entries = gpu.spec["entries"]
    for batch in batches:
        inputs = reference.random_inputs(model, batch=batch, seed=seed)
        expected = cpu.forward(inputs)
        for name, value in gpu.forward(inputs).items():
            compare(name, batch, value, expected[name])
        if "value_and_grad" in entries:
            loss, grads = gpu.value_and_grad(inputs)
            expected_loss, expected_grads = cpu.value_and_grad(inputs)
            compare("loss", batch, loss, expected_loss)
            for name, value in grads.items():
                compare(f"grad {name}", batch, value, expected_grads[name])
        if "train_step" in entries:
            if eps is not None:
                largest = _largest(expected_grads.values())
                for program in (gpu, cpu):
                    program.configure(eps=max(eps, adam_eps * largest))
            start = cpu.get_params()
            gpu.set_params(start)                # the same start, whatever came before
            gpu.reset_optimizer(), cpu.reset_optimizer()
            gpu.train_step(inputs), cpu.train_step(inputs)
            expected = cpu.get_params()
            for name, value in gpu.get_params().items():
                # The change, not the sum; each side's new parameters are rounded to
                # float32, so they may differ by one unit in the last place.
                ulp = ULP * _largest([expected[name]])
                compare(f"step of {name}", batch, value - start[name], expected[name] - start[name], ulp)
    eps_raised = eps is not None and "train_step" in entries
    return GpuCheck(list(comparisons.values()), sanitizer_report(gpu), eps_raised)


def _largest(arrays):
    """The largest finite magnitude in any of the arrays (0 if none)."""
    return max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in map(np.asarray, arrays)),
               default=0.0)
