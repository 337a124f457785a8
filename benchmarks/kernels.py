"""Time each kernel of one entry point alone: where a step's time goes.

    python benchmarks/kernels.py examples/lenet5.nn --batch 64
    python benchmarks/kernels.py examples/mlp.nn --batch 256 --entry train_step --threads 2

Every kernel of the entry is emitted a second time as an entry of its own, in the same
module and over the same buffers; after one whole step (so every buffer holds real
values) each kernel is called alone, repeatedly, and the median is printed with its
share of the sum, its multiply-adds and the rate they run at. Prints a table; asserts
nothing.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compiler import load  # noqa: E402
from compiler.index_ir import format_comp  # noqa: E402
from compiler.native import compile_ir  # noqa: E402
from compiler.schedule import Kernel  # noqa: E402
from runtime.jit import NativeLibrary  # noqa: E402
from runtime.program import Program  # noqa: E402


def multiply_adds(comp, sizes):
    """Points of the loop nest (output x reduction) for a reduction, else 0."""
    if comp.reduce != "sum":
        return 0
    points = 1
    for d in list(comp.rextent):
        points *= int(d.subs(sizes)) if hasattr(d, "subs") else int(d)
    return points


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--entry", default="train_step")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--nests", action="store_true",
                        help="time every loop nest alone (a fused kernel split into its nests)")
    args = parser.parse_args(argv)
    os.environ["SYMNET_THREADS"] = str(args.threads)

    model = load(args.file)
    _, spec, kernels, emitter = compile_ir(model, args.optimizer, entries=(args.entry,))
    used = [b["name"] for b in spec["buffers"]]
    index = {name: k for k, name in enumerate(used)}
    if args.nests:       # each nest over the kernel's rows by itself: the same result, unfused
        kernels[args.entry] = [Kernel(kernel.extent, [n]) for kernel in kernels[args.entry]
                               for n in kernel.nests]
    names = []
    for k, kernel in enumerate(kernels[args.entry]):
        names.append(f"kernel_alone_{k}")
        emitter.entry(names[-1], [kernel], index)
    spec["compiled"] = [args.entry] + names
    library = NativeLibrary(emitter.ir(), name=model.name, cache_dir=None)
    program = Program(spec, library, model.params)
    program.steps = 1

    rng = np.random.default_rng(0)
    inputs = {}
    for name, info in model.inputs.items():
        shape = [args.batch if not isinstance(d, int) and not str(d).isdigit() else int(d)
                 for d in info.shape]
        if info.dtype == "i32":
            classes = spec["classes"].get(name) or 2
            inputs[name] = rng.integers(0, classes, size=shape).astype(np.int32)
        else:
            inputs[name] = rng.standard_normal(shape).astype(np.float32)
    arrays, sizes = program._check_inputs(args.entry, inputs)
    program._set_hypers()
    program._call(args.entry, arrays, sizes)

    def timed(name):
        program._call(name, arrays, sizes)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            program._call(name, arrays, sizes)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    whole = timed(args.entry)
    rows = []
    for k, kernel in enumerate(kernels[args.entry]):
        t = timed(names[k])
        env = {s: sizes[str(s)] for s in model.size_symbols}
        macs = sum(multiply_adds(n.comp, env) * _points(n.comp, program, sizes) for n in kernel.nests)
        rows.append((k, t, macs, kernel))
    total = sum(r[1] for r in rows)
    print(f"{args.file}, entry {args.entry}, batch {args.batch}, {args.threads} thread(s): "
          f"whole entry {whole * 1e3:.3f} ms, sum of kernels {total * 1e3:.3f} ms")
    print("| kernel | ms | share | MMAC | GMAC/s | first nest |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, t, macs, kernel in sorted(rows, key=lambda r: -r[1]):
        first = format_comp(kernel.nests[0].comp)
        first = first if len(first) < 90 else first[:87] + "..."
        rate = f"{macs / t / 1e9:.1f}" if macs else "-"
        print(f"| {k} | {t * 1e3:.3f} | {t / total:.0%} | {macs / 1e6:.2f} | {rate} | "
              f"[{kernel.nests[0].strategy}] {first} (+{len(kernel.nests) - 1}) |")


def _points(comp, program, sizes):
    from runtime.program import eval_dim
    shape = program.buffers[comp.out]["shape"]
    points = 1
    for d in shape:
        points *= eval_dim(d, sizes)
    return points


if __name__ == "__main__":
    main()
