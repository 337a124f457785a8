"""The GPU schedule's choices against the alternatives, measured: each kernel's time in a
training step under every scheduling policy (compiler/gpu_schedule.py's constants were
chosen without a GPU; this is what picks them with one).

    python benchmarks/gpu_sweep.py                      # mlp and lenet5, batch 64 and 256
    python benchmarks/gpu_sweep.py --models lenet5 --batches 256 --policies chosen block

A policy changes gpu_schedule while a program is compiled (as tests/test_gpu.py forces
its tile shapes): "chosen" is the schedule as it is; "tile RxC" tiles every contraction
that has two sides with that shape; "block" reduces every sum by a block; "no split"
never splits a sum over blocks; "slots/4" and "slots*4" tell the model of the GPU that
it holds a quarter of, or four times, the blocks it assumes (fewer or more parts in
split sums, other tile shapes); "guarded windows" runs a sum's short loops within
bounds inferred from its guards instead of whole (compiler/codegen/ptx.py's WINDOW).
Every policy computes the same function: the script checks each one's first loss
against the chosen schedule's.

For each model and batch: a table of microseconds, a row per tensor a launch computes
(the launches of a split sum added together), a column per policy, each kernel's GPU
time from CudaProgram.profile (median of 10 steps); then the kernels' sum and the whole
step, run as one CUDA graph (gpu_bench.py's timing: median of --steps steps after
warm-up steps, each synchronised).
"""
import argparse
import contextlib
import os
import re
import sys

import numpy as np

from gpu_bench import MODELS, ROOT, open_gpu, timed      # (gpu_bench puts ROOT on sys.path)
from compiler import compile, gpu_schedule, load  # noqa: E402
from compiler.codegen import ptx  # noqa: E402


@contextlib.contextmanager
def patched(module=gpu_schedule, **values):
    """A module's attributes set to `values` inside the block, restored after it."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def policies():
    """{name: a function returning the context manager that applies the policy}."""
    choose = gpu_schedule.choose_strategy
    out = {"chosen": contextlib.nullcontext}
    for shape in gpu_schedule.TILES:
        out[f"tile {shape[0]}x{shape[1]}"] = lambda shape=shape: patched(
            worth_tiling=lambda rows, cols, terms: True, tile_shape=lambda rows, cols: shape)
    out["block"] = lambda: patched(choose_strategy=lambda c, tensors: (
        ("block", None) if c.reduce == "sum" else choose(c, tensors)))
    out["no split"] = lambda: patched(split_count=lambda c, tensors: 1,
                                      tile_split_count=lambda c, tile, tensors: 1)
    out["slots/4"] = lambda: patched(SLOTS=gpu_schedule.SLOTS // 4)
    out["slots*4"] = lambda: patched(SLOTS=gpu_schedule.SLOTS * 4)
    out["guarded windows"] = lambda: patched(ptx, WINDOW=0)
    return out


def measure(model, policy, batch, steps):
    """(first loss, {tensor: us}, kernel sum us, graph step us) of one policy."""
    with policy():
        program = compile(model, target="ptx", optimizer="sgd", cache=False)
    program.configure(lr=0.01)
    first = program.train_step(batch)
    kernels = {}
    for name, _, _, ms in program.profile("train_step", batch):
        tensor = re.sub(r"^k\d+_", "", name)
        kernels[tensor] = kernels.get(tensor, 0.0) + 1e3 * ms
    step = timed(lambda: program.train_step(batch), program.device.synchronize, steps,
                 warm_up=max(1, steps // 10))
    return first, kernels, sum(kernels.values()), 1e6 * step


def print_table(title, results, shown):
    names = list(results)
    rows = sorted({t for _, kernels, _, _ in results.values() for t in kernels},
                  key=lambda t: -max(r[1].get(t, 0.0) for r in results.values()))
    width = max(9, *(len(n) for n in names))
    print(f"\n{title}: us per kernel in a train step")
    print(f"  {'tensor':<28}" + "".join(f" {n:>{width}}" for n in names))
    for tensor in rows[:shown]:
        print(f"  {tensor:<28}" + "".join(
            f" {results[n][1][tensor]:>{width}.1f}" if tensor in results[n][1] else f" {'-':>{width}}"
            for n in names))
    if len(rows) > shown:
        rest = {n: sum(v for t, v in results[n][1].items() if t in rows[shown:]) for n in names}
        print(f"  {f'({len(rows) - shown} more)':<28}" + "".join(f" {rest[n]:>{width}.1f}" for n in names))
    print(f"  {'kernels':<28}" + "".join(f" {results[n][2]:>{width}.1f}" for n in names))
    print(f"  {'step, as a graph':<28}" + "".join(f" {results[n][3]:>{width}.1f}" for n in names))


def main(argv=None):
    known = policies()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--policies", nargs="+", choices=list(known), default=list(known))
    parser.add_argument("--steps", type=int, default=100, help="timed graph steps per policy")
    parser.add_argument("--shown", type=int, default=14, help="kernel rows per table")
    args = parser.parse_args(argv)
    device = open_gpu("measure")
    if device is None:
        return 1
    print(f"device: {device.name}; policies: {', '.join(args.policies)}")
    status = 0
    for name in args.models:
        path, _, shape = MODELS[name]
        model = load(os.path.join(ROOT, path))
        for size in args.batches:
            rng = np.random.default_rng(0)
            batch = {"x": rng.random((size, *shape), dtype=np.float32),
                     "y": rng.integers(0, 10, size).astype(np.int32)}
            results = {p: measure(model, known[p], batch, args.steps) for p in args.policies}
            print_table(f"{name} batch {size}", results, args.shown)
            losses = {p: r[0] for p, r in results.items()}
            reference = losses[args.policies[0]]
            if any(abs(v - reference) > 1e-4 * abs(reference) for v in losses.values()):
                print(f"  error: first losses differ: {losses}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
