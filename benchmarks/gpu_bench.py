"""Training steps on an NVIDIA GPU: symnet's PTX target against PyTorch eager on the same GPU.

    python benchmarks/gpu_bench.py                  # mlp and lenet5, batch 64 and 256
    python benchmarks/gpu_bench.py --steps 500 --batches 64
    python benchmarks/gpu_bench.py --profile        # and the time of each of symnet's kernels

Both sides start from symnet's initial weights and train with SGD on the same batch
(random images and labels); their first losses are compared, so the table compares the
same computation. Each step starts from host memory (the batch is copied to the device
every step, as a training loop does) and is timed alone, up to a full synchronisation of
the device (cuCtxSynchronize for symnet, torch.cuda.synchronize for PyTorch), after
warm-up steps. The table gives the median step; samples/s = batch / median; the ratio is
symnet samples/s / PyTorch samples/s (above 1: symnet faster). symnet is timed twice:
with a cuLaunchKernel per kernel (`program.use_graphs = False`) and as it runs by
default, each step one CUDA graph (the "graph" columns). PyTorch's columns show "-" when
torch does not import or sees no GPU. A second table puts symnet's graph against
PyTorch's whole step captured in one CUDA graph (torch.cuda.graph: the forward, the
backward and the update replayed, the batch copied in from host memory each step),
which removes PyTorch's launch overhead as symnet's graph removes its own. Without a GPU
for symnet the script says why and exits with status 1.

--profile then times each of symnet's kernels in a train step (CUDA events around each
launch, median of 10 steps), largest first, with their sum against the whole step: what
is left is the launches, the copies and the host's share.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import torch, torch_lenet, torch_mlp  # noqa: E402  (the CPU benchmark's peers)
from compiler import compile, load  # noqa: E402
from runtime.cuda import CudaError, GPUUnavailable, open_device  # noqa: E402

MODELS = {"mlp": ("examples/mlp.nn", torch_mlp, (784,)),
          "lenet5": ("examples/lenet5.nn", torch_lenet, (1, 28, 28))}
CLASSES = 10


def timed(step, synchronize, steps, warm_up):
    """Median seconds of `steps` single steps, each ended by a device synchronisation."""
    for _ in range(warm_up):
        step()
    synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def open_gpu(doing):
    """The GPU, or None after saying on stderr, in one line, why there is none."""
    try:
        return open_device()
    except GPUUnavailable as exc:
        print(f"error: no GPU to {doing} on: {exc}", file=sys.stderr)
        return None


def symnet_case(model, x, y, lr, device, steps, warm_up, profile):
    """{first loss, median step seconds with launches and with a graph, kernel profile}
    of symnet's PTX program; a graph that fails leaves its error instead of a time."""
    program = compile(model, target="ptx", optimizer="sgd")
    program.configure(lr=lr)
    batch = {"x": x, "y": y}
    program.use_graphs = False
    out = {"symnet_loss": program.train_step(batch)}
    out["symnet"] = timed(lambda: program.train_step(batch), device.synchronize, steps, warm_up)
    program.use_graphs = True
    try:
        out["graph"] = timed(lambda: program.train_step(batch), device.synchronize, steps,
                             warm_up)
    except CudaError as exc:
        out["graph_error"] = str(exc)
    out["profile"] = program.profile("train_step", batch) if profile else None
    return out


def torch_case(build, params, x, y, lr, steps, warm_up):
    """(first loss, median step seconds) of the same model in eager PyTorch on the GPU."""
    net = build(params).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    host_x, host_y = torch.from_numpy(x), torch.from_numpy(y).long()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(host_x.cuda()), host_y.cuda())
        loss.backward()
        optimizer.step()
        return loss
    first = float(step().detach())
    return first, timed(step, torch.cuda.synchronize, steps, warm_up)


def torch_graph_case(build, params, x, y, lr, steps, warm_up):
    """Median step seconds of the same model in PyTorch with the whole step (forward,
    backward, SGD update) captured in one CUDA graph, PyTorch's own recipe: the batch is
    copied from host memory into the graph's input tensors every step."""
    net = build(params).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    host_x, host_y = torch.from_numpy(x), torch.from_numpy(y).long()
    static_x, static_y = host_x.cuda(), host_y.cuda()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(static_x), static_y)
        loss.backward()
        optimizer.step()
    side = torch.cuda.Stream()               # warm-up steps off the capturing stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = torch.nn.functional.cross_entropy(net(static_x), static_y)
        loss.backward()
        optimizer.step()

    def replay():
        static_x.copy_(host_x)
        static_y.copy_(host_y)
        graph.replay()
    return timed(replay, torch.cuda.synchronize, steps, warm_up)


def run_case(name, batch, device, args):
    path, build, shape = MODELS[name]
    model = load(os.path.join(ROOT, path))
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    lr = float(model.train.get("lr", 0.05))
    row = {"case": f"{name} batch {batch}", "batch": batch}
    row.update(symnet_case(model, x, y, lr, device, args.steps, args.warm_up, args.profile))
    if torch is not None and torch.cuda.is_available():
        params = {k: np.asarray(v, np.float32) for k, v in model.params.items()}
        row["torch_loss"], row["torch"] = torch_case(build, params, x, y, lr, args.steps,
                                                     args.warm_up)
        try:
            row["torch_graph"] = torch_graph_case(build, params, x, y, lr, args.steps, args.warm_up)
        except Exception as exc:     # a PyTorch that cannot capture: say so, keep the rest
            row["torch_graph_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return row


def print_table(rows):
    header = f"{'case':<18} {'symnet ms':>10} {'samples/s':>11} {'graph ms':>9} " \
             f"{'torch ms':>10} {'samples/s':>11} {'ratio':>7} {'graph':>7}  " \
             "first losses (symnet / torch)"
    print(header)
    print("-" * len(header))
    for row in rows:
        ms = {key: 1e3 * row[key] if key in row else None for key in ("symnet", "graph", "torch")}
        rate = {key: row["batch"] / row[key] if key in row else None
                for key in ("symnet", "graph", "torch")}
        ratio = {key: rate[key] / rate["torch"] if rate[key] and rate["torch"] else None
                 for key in ("symnet", "graph")}
        cells = [_cell(ms["symnet"], 10, ".3f"), _cell(rate["symnet"], 11, ".0f"),
                 _cell(ms["graph"], 9, ".3f"), _cell(ms["torch"], 10, ".3f"),
                 _cell(rate["torch"], 11, ".0f"), _cell(ratio["symnet"], 7, ".2f"),
                 _cell(ratio["graph"], 7, ".2f")]
        print(f"{row['case']:<18} {' '.join(cells)}  {row['symnet_loss']:.5f} / "
              + (f"{row['torch_loss']:.5f}" if "torch_loss" in row else "-"))
    for row in rows:
        if "graph_error" in row:
            print(f"{row['case']}: no graph: {row['graph_error']}")
    if any("torch_graph" in row for row in rows):
        print("\nagainst PyTorch with its whole step captured in a CUDA graph:")
        print(f"{'case':<18} {'graph ms':>9} {'torch graph ms':>15} {'ratio':>7}")
        for row in rows:
            if "torch_graph" in row and "graph" in row:
                print(f"{row['case']:<18} {1e3 * row['graph']:>9.3f} {1e3 * row['torch_graph']:>15.3f} "
                      f"{row['torch_graph'] / row['graph']:>7.2f}")
    for row in rows:
        if "torch_graph_error" in row:
            print(f"{row['case']}: PyTorch's graph failed: {row['torch_graph_error']}")


def _cell(value, width, form):
    """A right-aligned number, or '-' where there is none."""
    return f"{value:>{width}{form}}" if value is not None else f"{'-':>{width}}"


def print_profile(row, shown=12):
    """The kernels of one case's train step, largest first, and their sum against the step."""
    profile = row["profile"]
    total = sum(ms for *_, ms in profile)
    print(f"\n{row['case']}: {len(profile)} kernels, {1e3 * total:.1f} us of GPU time in a "
          f"{1e6 * row['symnet']:.1f} us step (the rest: launches, copies, host)")
    print(f"  {'kernel':<28} {'strategy':<8} {'blocks':>7} {'us':>9} {'share':>6}")
    for name, strategy, grid, ms in sorted(profile, key=lambda p: -p[3])[:shown]:
        print(f"  {name:<28} {strategy:<8} {grid:>7} {1e3 * ms:>9.1f} {100 * ms / total:>5.1f}%")
    if len(profile) > shown:
        rest = sorted(ms for *_, ms in profile)[:len(profile) - shown]
        print(f"  ({len(profile) - shown} more: {1e3 * sum(rest):.1f} us)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per case")
    parser.add_argument("--warm-up", type=int, default=20, help="untimed steps first")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--profile", action="store_true",
                        help="then time each of symnet's kernels in a train step")
    args = parser.parse_args(argv)
    device = open_gpu("benchmark")
    if device is None:
        return 1
    major, minor = device.capability
    print(f"device: {device.name} (sm_{major}{minor}, {device.multiprocessors} SMs); "
          f"torch: {torch.__version__ if torch else '- (not importable)'}"
          + ("" if torch is None or torch.cuda.is_available() else " (sees no GPU)"))
    print(f"timing: median of {args.steps} steps after {args.warm_up} warm-up steps, each "
          "step synchronised\n")
    rows = [run_case(name, batch, device, args) for name in args.models for batch in args.batches]
    print_table(rows)
    for row in rows if args.profile else []:
        print_profile(row)
    mismatched = [r["case"] for r in rows
                  if "torch_loss" in r and abs(r["symnet_loss"] - r["torch_loss"]) >
                  1e-3 * abs(r["torch_loss"])]
    if mismatched:
        print(f"\nwarning: first losses differ by more than 0.1% in {', '.join(mismatched)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
