"""`cuda.bindings.driver` for a dry run without a GPU. With tests/fake_gpu on PYTHONPATH
(ahead of any installed cuda-bindings), runtime/cuda.py finds this module: every driver call
goes to one FakeDriver (tests/fake_driver.py), and a module's kernels are the emulated
kernels of the model being compiled, found on the call stack (compiler.native.compile's
`model` and `optimizer`). So tests/test_gpu.py, benchmarks/gpu_bench.py and
`symnet train --device cuda` run unchanged, slowly, on this CPU, on a "Fake GPU" of
4 resident blocks:

    PYTHONPATH=tests/fake_gpu SYMNET_DATA=runtime/datasets/fashion_mnist_small.npz \
        BENCH_ARGS="--steps 3 --warm-up 1" TIME_SCALE=4 OUT=out/dry bash benchmarks/gpu_check.sh

It checks the scripts and the tests' own code before a GPU's time is spent on them; it
says nothing about real hardware (timings, ex2.approx, the driver's PTX compiler).
"""
import inspect
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
from fake_driver import FakeDriver, emulated_kernels  # noqa: E402  (tests/, added above)


class DryRunDriver(FakeDriver):
    def module_kernels(self, ptx):
        """The emulated kernels of the model whose PTX is being loaded; none (every
        cuModuleGetFunction fails) when no compile is under way."""
        frame = inspect.currentframe()
        while frame is not None:
            if frame.f_code.co_name == "compile" and \
                    frame.f_globals.get("__name__") == "compiler.native":
                return emulated_kernels(frame.f_locals["model"], frame.f_locals["optimizer"])
            frame = frame.f_back
        return {}


_driver = DryRunDriver()
CUresult = _driver.CUresult
CUdevice_attribute = _driver.CUdevice_attribute
CUjit_option = _driver.CUjit_option


def __getattr__(name):
    return getattr(_driver, name)
