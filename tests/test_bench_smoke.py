"""Smoke test of benchmarks/bench.py: quick cases run, print their tables, and the peers
compute the same losses and logits as symnet. Timings are never asserted."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "| case | symnet | numpy | torch | torch.compile | vs numpy | vs torch | vs torch.compile |"
TIME = re.compile(r"^\d+\.\d+ (us|ms)$")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("symnet-cache"))


def run_bench(cache, cases, extra_path=None):
    env = {**os.environ, "SYMNET_CACHE": cache}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--cases", *cases],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def row_cells(output, label):
    """The cells of the first table row for `label` (the median table), keyed by column."""
    columns = [c.strip() for c in HEADER.strip("|").split("|")]
    for line in output.splitlines():
        if line.startswith(f"| {label} |"):
            return dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
    raise AssertionError(f"no row '{label}' in:\n{output}")


def test_quick_cases_print_the_table_with_symnet_and_numpy_times(cache):
    out = run_bench(cache, ["mlp-predict-1", "mlp-step-1"])
    assert out.count(HEADER) == 2                          # the median and the minimum tables
    assert re.search(r"^machine: .+, \d+ cores", out, re.M)
    assert re.search(r"^OPENBLAS_CORETYPE: ", out, re.M)
    for label in ("MLP predict, batch 1", "MLP step, batch 1"):
        cells = row_cells(out, label)
        assert TIME.match(cells["symnet"]) and TIME.match(cells["numpy"])
        assert re.match(r"^\d+\.\d\dx$", cells["vs numpy"])
    assert "differ from symnet" not in out                 # same losses after an update, same logits
    assert "- MLP predict batch 1: >= 3x PyTorch eager: " in out


def test_without_torch_its_columns_show_a_dash(cache, tmp_path):
    blocker = tmp_path / "torch"                           # shadows any installed torch
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    out = run_bench(cache, ["mlp-predict-1"], extra_path=str(tmp_path))
    assert "torch - (not importable)" in out
    cells = row_cells(out, "MLP predict, batch 1")
    assert TIME.match(cells["symnet"])
    assert cells["torch"] == cells["torch.compile"] == cells["vs torch"] == "-"


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
