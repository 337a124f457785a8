"""benchmarks/gpu_check.sh's own shell logic, with stand-ins for python, nvidia-smi and
compute-sanitizer that print their arguments and succeed at once: every step runs, in
order, and what comes back from a lent GPU machine holds all of it. (The dry run over
tests/fake_gpu, described in that module, runs the real steps; it takes minutes.)"""
import os
import re
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["machine", "versions", "tests", "bench", "lenet5_cuda", "lenet5_cpu", "memcheck",
         "racecheck"]
RETURNED = 8        # a lent machine sends back at most 8 files from $OUT (device README)


def _stub(folder, name):
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _dry_run(tmp_path, **environment):
    """gpu_check.sh with every program it calls stubbed: (completed process, $OUT)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    python = _stub(stubs, "python")
    for name in ("nvidia-smi", "compute-sanitizer"):
        _stub(stubs, name)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", PYTHON=str(python),
               OUT=str(out), SYMNET_CACHE=str(tmp_path / "cache"), **environment)
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, out


def test_every_step_runs_and_its_output_fits_in_the_files_a_lent_machine_returns(tmp_path):
    done, out = _dry_run(tmp_path)
    assert done.stdout.splitlines()[-1] == " ".join(f"{step}=0" for step in STEPS)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= RETURNED, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) and (out / name).is_file() for name in files)
    kept = "".join((out / name).read_text() for name in files)
    for seen in ("nvidia-smi --query-gpu", "python -c", "tests/test_gpu.py",
                 "benchmarks/gpu_bench.py --profile", "--device cuda", "--device cpu",
                 "--tool memcheck", "--tool racecheck", "lenet5 test accuracy",
                 "machine=0 versions=0"):
        assert seen in kept, (seen, files)


def test_train_devices_cuda_leaves_the_cpu_training_run_out(tmp_path):
    done, out = _dry_run(tmp_path, TRAIN_DEVICES="cuda")
    steps = [step for step in STEPS if step != "lenet5_cpu"]
    assert done.stdout.splitlines()[-1] == " ".join(f"{step}=0" for step in steps)
    assert not (out / "lenet5_cpu.txt").exists()
