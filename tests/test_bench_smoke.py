"""Smoke test of benchmarks/bench.py (and of benchmarks/gpu_sweep.py, over the dry-run driver): quick cases run, print their tables, and the peers
compute the same losses and logits as symnet. Timings are never asserted.

JAX, tinygrad and PyTensor are optional peers that CI does not install: the tests hide
them (as one hides torch) except the one that checks them, which runs where any is
installed and is skipped elsewhere."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ("| case | symnet | numpy | torch | torch.compile | jax | tinygrad | pytensor | vs numpy | vs torch "
          "| vs torch.compile | vs jax | vs tinygrad | vs pytensor |")
TIME = re.compile(r"^\d+\.\d+ (us|ms)$")
OPTIONAL = ("jax", "tinygrad", "pytensor")          # each compiles its programs: slow to start


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("symnet-cache"))


def hide(tmp_path, *packages):
    """A directory whose packages shadow the installed ones and fail to import."""
    for name in packages:
        blocker = tmp_path / name
        blocker.mkdir()
        (blocker / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    return str(tmp_path)


def run_bench(cache, cases, extra_path=None, timeout=60):
    env = {**os.environ, "SYMNET_CACHE": cache}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--cases", *cases],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def row_cells(output, label):
    """The cells of the first table row for `label` (the median table), keyed by column."""
    columns = [c.strip() for c in HEADER.strip("|").split("|")]
    for line in output.splitlines():
        if line.startswith(f"| {label} |"):
            return dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
    raise AssertionError(f"no row '{label}' in:\n{output}")


def test_quick_cases_print_the_table_with_symnet_and_numpy_times(cache, tmp_path):
    out = run_bench(cache, ["mlp-predict-1", "mlp-step-1"], extra_path=hide(tmp_path, *OPTIONAL))
    assert out.count(HEADER) == 2                          # the median and the minimum tables
    assert re.search(r"^machine: .+, \d+ cores", out, re.M)
    assert re.search(r"^OPENBLAS_CORETYPE: ", out, re.M)
    for label in ("MLP predict, batch 1", "MLP step, batch 1"):
        cells = row_cells(out, label)
        assert TIME.match(cells["symnet"]) and TIME.match(cells["numpy"])
        assert re.match(r"^\d+\.\d\dx$", cells["vs numpy"])
    assert "differ from symnet" not in out                 # same losses after an update, same logits
    assert "- MLP predict batch 1: >= 3x PyTorch eager: " in out


def test_without_torch_and_the_optional_peers_their_columns_show_a_dash(cache, tmp_path):
    out = run_bench(cache, ["mlp-predict-1"], extra_path=hide(tmp_path, "torch", *OPTIONAL))
    for peer in ("torch",) + OPTIONAL:
        assert f"{peer} - (not importable)" in out
    cells = row_cells(out, "MLP predict, batch 1")
    assert TIME.match(cells["symnet"])
    assert cells["torch"] == cells["torch.compile"] == cells["vs torch"] == "-"
    assert all(cells[peer] == cells[f"vs {peer}"] == "-" for peer in OPTIONAL)


INSTALLED = [peer for peer in OPTIONAL if importlib.util.find_spec(peer) is not None]


@pytest.mark.skipif(not INSTALLED, reason="none of JAX, tinygrad, PyTensor is installed")
def test_installed_optional_peers_agree_with_symnet_and_are_timed(cache, tmp_path):
    """A training step (its first two losses: before and after the update) and a
    prediction, for each optional peer that is installed; torch is hidden to save time."""
    out = run_bench(cache, ["mlp-step-1", "mlp-predict-1"], extra_path=hide(tmp_path, "torch"), timeout=300)
    assert "differ from symnet" not in out, out
    for label in ("MLP step, batch 1", "MLP predict, batch 1"):
        cells = row_cells(out, label)
        for peer in INSTALLED:
            assert TIME.match(cells[peer]), f"{peer} has no time:\n{out}"
            assert re.match(r"^\d+\.\d\dx$", cells[f"vs {peer}"])


def test_kernel_profile_lists_every_kernel_of_the_step(cache):
    from compiler import load
    from compiler.lower import lower
    from compiler.schedule import schedule
    model = load(os.path.join(ROOT, "examples/mlp.nn"))
    lowered = lower(model, "sgd")
    count = len(schedule(lowered.entries["train_step"], lowered.tensors))
    done = subprocess.run([sys.executable, "benchmarks/kernels.py", "examples/mlp.nn", "--batch", "8",
                           "--repeat", "3"], cwd=ROOT, env={**os.environ, "SYMNET_CACHE": cache},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert sorted(int(r.split("|")[1]) for r in rows) == list(range(count))
    shares = [int(r.split("|")[3].strip().rstrip("%")) for r in rows]
    assert 95 <= sum(shares) <= 105            # rounded shares of the kernels' sum


def run_sweep(*args, fake_gpu=True):
    env = dict(os.environ)
    if fake_gpu:        # the dry-run driver: the emulated kernels, on this CPU
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests", "fake_gpu"),
                                             env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "benchmarks/gpu_sweep.py", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_gpu_sweep_times_every_kernel_under_each_policy_over_the_dry_run_driver():
    policies = ["chosen", "tile 16x16", "block"]
    done = run_sweep("--models", "mlp", "--batches", "3", "--steps", "1", "--policies", *policies)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = lines[lines.index("mlp batch 3: us per kernel in a train step") + 1]
    assert header.split()[1:] == ["chosen", "tile", "16x16", "block"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  h1_dense")}
    assert len(rows["h1_dense"]) == 3 and all(float(v) > 0 for v in rows["h1_dense"])
    assert any(line.startswith("  step, as a graph") for line in lines)
    assert "first losses differ" not in done.stdout


def test_gpu_sweep_without_a_gpu_says_why():
    done = run_sweep("--models", "mlp", fake_gpu=False)
    if done.returncode == 0:
        pytest.skip("a GPU is here")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: no GPU to measure on: ") and \
        len(done.stderr.strip().splitlines()) == 1
