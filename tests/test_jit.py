"""Tests for runtime/jit.py: JIT, disk object cache, emitters, shared libs."""
import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime import jit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# LLVM 22 only has opaque pointers, hence `ptr` rather than `float*`.
IR = r"""
declare float @llvm.exp.f32(float)
declare float @tanhf(float)

define void @axpy(i64 %n, float %a, ptr noalias %x, ptr noalias %y) {
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %done, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %px = getelementptr inbounds float, ptr %x, i64 %i
  %py = getelementptr inbounds float, ptr %y, i64 %i
  %vx = load float, ptr %px
  %vy = load float, ptr %py
  %ax = fmul float %a, %vx
  %s = fadd float %ax, %vy
  store float %s, ptr %py
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %done
done:
  ret void
}

define float @myexp(float %v) {
  %r = call float @llvm.exp.f32(float %v)
  ret float %r
}

define float @mytanh(float %v) {
  %r = call float @tanhf(float %v)
  ret float %r
}
"""

FP = ctypes.POINTER(ctypes.c_float)


def _ptr(a):
    return a.ctypes.data_as(FP)


def _check(lib):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1003).astype(np.float32)
    y = rng.standard_normal(1003).astype(np.float32)
    expect = y + np.float32(1.5) * x
    axpy = lib.function("axpy", None, [ctypes.c_int64, ctypes.c_float, FP, FP])
    axpy(x.size, 1.5, _ptr(x), _ptr(y))
    np.testing.assert_allclose(y, expect, rtol=1e-6)
    myexp = lib.function("myexp", ctypes.c_float, [ctypes.c_float])
    mytanh = lib.function("mytanh", ctypes.c_float, [ctypes.c_float])
    for v in (-3.0, -0.5, 0.0, 0.7, 2.0):
        assert myexp(v) == pytest.approx(np.exp(np.float32(v)), rel=1e-6)
        assert mytanh(v) == pytest.approx(np.tanh(np.float32(v)), rel=1e-6)


@pytest.mark.parametrize("opt", [0, 1, 2, 3])
def test_jit_no_cache(opt):
    lib = jit.NativeLibrary(IR, opt_level=opt, cache_dir=None)
    assert not lib.from_cache
    _check(lib)
    assert lib.address("axpy") > 0
    with pytest.raises(KeyError):
        lib.address("nope")


def test_function_keeps_library_alive():
    f = jit.NativeLibrary(IR, cache_dir=None).function(
        "myexp", ctypes.c_float, [ctypes.c_float])
    import gc
    gc.collect()
    assert f(1.0) == pytest.approx(np.e, rel=1e-6)


def test_host_target_and_vector_width():
    triple, cpu, feats = jit.host_target()
    assert triple and cpu and isinstance(feats, str)
    w4 = jit.vector_width(4)
    assert w4 in (4, 8, 16)
    assert jit.vector_width(8) == w4 // 2
    if "+avx512f" in feats.split(","):
        assert w4 == 16


def test_clear_cache_removes_only_its_own_files(tmp_path):
    """$SYMNET_CACHE may name a shared folder (/tmp): clearing it removes the cache's
    entries and temporaries, never other programs' *.tmp or *.spec files."""
    d = str(tmp_path)
    library = jit.NativeLibrary(IR, cache_dir=d)
    key = library.key
    own = [f".{key}.symobj.0a1b2c3d.tmp", f"{key}.spec", f".{key}.spec.12345678.tmp"]
    others = ["download.tmp", "model.spec", "settings.spec.json", "notes.symobj.txt"]
    for name in own + others:
        open(os.path.join(d, name), "w").close()
    assert jit.clear_cache(d) == 1
    assert sorted(os.listdir(d)) == sorted(others)


def test_cache_hit_same_process(tmp_path):
    d = str(tmp_path)
    a = jit.NativeLibrary(IR, cache_dir=d)
    assert not a.from_cache
    assert os.path.exists(a.cache_path)
    assert jit.cache_stats(d)["entries"] == 1
    b = jit.NativeLibrary(IR, cache_dir=d)
    assert b.from_cache and b.key == a.key
    _check(b)
    # Different opt level / extra key -> different entry.
    c = jit.NativeLibrary(IR, cache_dir=d, opt_level=1)
    e = jit.NativeLibrary(IR, cache_dir=d, cache_key_extra="v2")
    assert not c.from_cache and not e.from_cache
    assert len({a.key, c.key, e.key}) == 3
    assert jit.cache_stats(d)["entries"] == 3
    assert jit.clear_cache(d) == 3
    assert jit.cache_stats(d)["entries"] == 0


@pytest.mark.parametrize("how", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_cache_entry_rebuilt(tmp_path, how):
    d = str(tmp_path)
    path = jit.NativeLibrary(IR, cache_dir=d).cache_path
    blob = open(path, "rb").read()
    if how == "truncate":
        blob = blob[: len(blob) // 2]
    elif how == "flip":
        i = len(blob) - 100
        blob = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:]
    elif how == "empty":
        blob = b""
    else:
        blob = b"\x7fELF" + os.urandom(500)
    open(path, "wb").write(blob)
    lib = jit.NativeLibrary(IR, cache_dir=d)
    assert not lib.from_cache
    _check(lib)
    again = jit.NativeLibrary(IR, cache_dir=d)   # the rebuild re-populated it
    assert again.from_cache
    _check(again)


def test_cache_hit_other_process(tmp_path):
    d = str(tmp_path)
    jit.NativeLibrary(IR, cache_dir=d)
    code = (
        "import ctypes, sys\n"
        "from runtime import jit\n"
        "sys.path.insert(0, %r)\n"
        "import test_jit as t\n"
        "lib = jit.NativeLibrary(t.IR, cache_dir=%r)\n"
        "t._check(lib)\n"
        "print('FROM_CACHE', lib.from_cache)\n"
    ) % (os.path.join(ROOT, "tests"), d)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FROM_CACHE True" in r.stdout


def test_concurrent_processes_same_key(tmp_path):
    d = str(tmp_path)
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from runtime import jit; import test_jit as t\n"
        "t._check(jit.NativeLibrary(t.IR, cache_dir=%r, opt_level=3))\n"
    ) % (os.path.join(ROOT, "tests"), d)
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert jit.cache_stats(d)["entries"] == 1
    assert not [f for f in os.listdir(d) if f.startswith(".tmp-")]
    assert jit.NativeLibrary(IR, cache_dir=d, opt_level=3).from_cache


def test_parse_error_outside_function():
    with pytest.raises(RuntimeError, match=r"^invalid LLVM IR: "):
        jit.NativeLibrary(IR + "\n@g = global i32 oops\n", cache_dir=None)


def test_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMNET_CACHE", str(tmp_path / "c"))
    assert jit.default_cache_dir() == str(tmp_path / "c")
    lib = jit.NativeLibrary(IR)
    assert lib.cache_path.startswith(str(tmp_path / "c"))
    assert jit.NativeLibrary(IR).from_cache
    assert jit.clear_cache() == 1


def test_unwritable_cache_is_not_fatal(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")       # a file where the cache dir should be
    lib = jit.NativeLibrary(IR, cache_dir=str(f / "sub"))
    _check(lib)


def test_emitters():
    asm = jit.emit_assembly(IR)
    assert "axpy" in asm and "mytanh" in asm
    obj = jit.emit_object(IR)
    assert isinstance(obj, bytes) and obj[:4] == b"\x7fELF"
    opt = jit.optimized_ir(IR, 2)
    assert "define" in opt and "@axpy" in opt
    assert re.search(r"<\d+ x float>", opt)    # host-tuned loop vectorizer ran
    assert not re.search(r"<\d+ x float>", jit.optimized_ir(IR, 0))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no system cc")
def test_build_shared_library(tmp_path):
    out = jit.build_shared_library(IR, str(tmp_path / "m.so"))
    assert os.path.exists(out)
    so = ctypes.CDLL(out)
    so.mytanh.restype, so.mytanh.argtypes = ctypes.c_float, [ctypes.c_float]
    assert so.mytanh(0.5) == pytest.approx(np.tanh(0.5), rel=1e-6)
    x = np.arange(10, dtype=np.float32)
    y = np.ones(10, dtype=np.float32)
    so.axpy(ctypes.c_int64(10), ctypes.c_float(2.0), _ptr(x), _ptr(y))
    np.testing.assert_allclose(y, 1 + 2 * np.arange(10))


def test_build_shared_library_no_cc(tmp_path, monkeypatch):
    monkeypatch.setattr(jit.shutil, "which", lambda _n: None)
    with pytest.raises(RuntimeError, match="cc"):
        jit.build_shared_library(IR, str(tmp_path / "m.so"))


def test_parse_error_names_function():
    bad = IR.replace("%s = fadd float %ax, %vy", "%s = fadd float %ax, %nosuch")
    with pytest.raises(RuntimeError, match=r"invalid LLVM IR in function @axpy"):
        jit.NativeLibrary(bad, cache_dir=None)


def test_verify_error_names_function(tmp_path):
    bad = r"""
define i32 @good(i32 %a) {
  ret i32 %a
}
define i32 @broken(i32 %a) {
entry:
  %x = add i32 %y, 1
  %y = add i32 %a, 1
  ret i32 %x
}
"""
    with pytest.raises(RuntimeError, match=r"verification failed in function @broken\b"):
        jit.NativeLibrary(bad, cache_dir=str(tmp_path))
    assert jit.cache_stats(str(tmp_path))["entries"] == 0


def test_no_sympy_import():
    code = "import sys; import runtime.jit; print('sympy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


# ---- a large module: compiled in parts, by worker processes ----------------------------
# An internal function called from another part: the split makes it external.
CALLS = r"""
define internal void @scale(i64 %n, float %a, ptr noalias %y) noinline {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %py = getelementptr inbounds float, ptr %y, i64 %i
  %v = load float, ptr %py
  %s = fmul float %a, %v
  store float %s, ptr %py
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %done
done:
  ret void
}

define void @axpy_twice(i64 %n, float %a, ptr noalias %x, ptr noalias %y)
{
  call void @axpy(i64 %n, float %a, ptr %x, ptr %y)
  call void @scale(i64 %n, float 2.0, ptr %y)
  ret void
}
"""


@pytest.fixture
def split_everything(monkeypatch):
    """Any module counts as large: each function is a part of its own."""
    monkeypatch.setattr(jit, "_SPLIT_CHARS", 0)
    monkeypatch.setattr(jit, "_PARTS", 1000)


def _check_calls(lib):
    x, y = np.arange(5, dtype=np.float32), np.ones(5, dtype=np.float32)
    axpy_twice = lib.function("axpy_twice", None, [ctypes.c_int64, ctypes.c_float, FP, FP])
    axpy_twice(5, 3.0, _ptr(x), _ptr(y))
    np.testing.assert_array_equal(y, 2 * (1 + 3 * np.arange(5)))


def test_workers_compile_what_this_process_compiles(tmp_path, split_everything):
    parts = jit._split(IR + CALLS)
    assert len(parts) == 5 and all("define internal" not in p for p in parts)
    payloads = []
    for jobs in (0, 2):          # in this process, part after part; two worker processes
        d = str(tmp_path / f"jobs{jobs}")
        lib = jit.NativeLibrary(IR + CALLS, cache_dir=d, jobs=jobs)
        _check(lib)
        _check_calls(lib)
        payloads.append(open(lib.cache_path, "rb").read())
        again = jit.NativeLibrary(IR + CALLS, cache_dir=d)
        assert again.from_cache
        _check_calls(again)
    assert payloads[0] == payloads[1]


def test_parts_come_costliest_first_and_a_loop_costs_more_than_its_text(split_everything):
    """The workers take parts in order, so the costliest goes first; LLVM's loop passes
    make a short loop cost more than a long straight run of arithmetic."""
    adds = "".join(f"  %a{k} = fadd float %a{k - 1}, %v\n" for k in range(1, 120))
    straight = f"define float @straight(float %v) {{\n  %a0 = fadd float %v, %v\n{adds}  ret float %a119\n}}\n"
    assert len(straight) > len(IR)          # longer than every function of IR together
    parts = jit._split(IR + straight)
    heads = [re.search(r"^define .*?@(\w+)\(", p, re.M).group(1) for p in parts]
    assert heads[0] == "axpy" and sorted(heads) == ["axpy", "myexp", "mytanh", "straight"]
    assert heads.index("straight") < heads.index("myexp")


def test_a_stream_too_small_to_split_compiles_whole_here(tmp_path):
    """Workers start only once the parts handed in are worth splitting."""
    stream = jit.PartStream(2, jobs=2)
    stream.submit(IR, cost=len(IR))
    assert stream.finish() is None and not stream._threads
    _check(jit.NativeLibrary(IR, cache_dir=str(tmp_path), parts=stream))


def test_a_streamed_part_that_fails_leaves_the_module_to_compile_whole(tmp_path):
    """A part LLVM refuses (a code generator's bug) ends the stream; the library is then
    compiled whole, here, which is also how such a bug's error would name its function."""
    stream = jit.PartStream(2, jobs=2, start_at=0)
    stream.submit("define i32 @broken() {\n  ret float 0.0\n}\n")
    stream.submit(IR)
    lib = jit.NativeLibrary(IR, cache_dir=str(tmp_path), parts=stream)
    assert stream._threads and stream._failed
    _check(lib)
    again = jit.PartStream(2, jobs=2, start_at=0)
    again.submit(IR)
    assert jit.NativeLibrary(IR, cache_dir=str(tmp_path), parts=again).from_cache
    assert again._todo == [] and all(not t.is_alive() for t in again._threads)


def test_modules_with_globals_stay_whole(split_everything):
    text = IR + CALLS + "\n@count = internal global i64 0\n"
    assert jit._split(text) == [text]
    _check_calls(jit.NativeLibrary(text, cache_dir=None, jobs=2))


COUNTER = r"""
@count = global i64 5
@last = global ptr null
@name = constant [6 x i8] c"bump!\00"

define void @bump() {
  %v = load i64, ptr @count
  %w = add i64 %v, 1
  store i64 %w, ptr @count
  store ptr @name, ptr @last
  ret void
}

define i64 @read() {
  %v = load i64, ptr @count
  ret i64 %v
}

define ptr @who() {
  %p = load ptr, ptr @last
  ret ptr %p
}
"""


@pytest.mark.parametrize("jobs", [0, 2])
def test_a_global_is_one_variable_across_parts(split_everything, jobs):
    """Defined in the first part, declared in the others: the functions see one @count,
    one @last and one @name (a number, a pointer, a string: the GPU emulation's kinds)."""
    parts = jit._split(IR + CALLS + COUNTER)
    assert len(parts) == 8
    for definition, declaration in [("@count = global i64 5", "@count = external global i64"),
                                     ("@last = global ptr null", "@last = external global ptr"),
                                     ('@name = constant [6 x i8] c"bump!',
                                      "@name = external global [6 x i8]")]:
        assert sum(definition in p for p in parts) == 1
        assert sum(declaration in p for p in parts) == 7
    lib = jit.NativeLibrary(IR + CALLS + COUNTER, cache_dir=None, jobs=jobs)
    bump, read = lib.function("bump", None, []), lib.function("read", ctypes.c_int64, [])
    who = lib.function("who", ctypes.c_void_p, [])
    assert who() is None
    bump()
    bump()
    assert read() == 7 and ctypes.string_at(who()) == b"bump!"
    _check_calls(lib)


@pytest.mark.parametrize("jobs", [0, 2])
def test_errors_in_parts_name_the_function_in_the_module(split_everything, jobs):
    """The line is the module's (16), not its part's (20)."""
    bad = (IR + CALLS).replace("%s = fadd float %ax, %vy", "%s = fadd float %ax, %nosuch")
    with pytest.raises(RuntimeError, match=r"invalid LLVM IR in function @axpy: .*\n<string>:16:"):
        jit.NativeLibrary(bad, cache_dir=None, jobs=jobs)
    broken = (IR + CALLS).replace("%s = fmul float %a, %v",
                                  "%s = fmul float %a, %v2\n  %v2 = fadd float %v, 1.0")
    with pytest.raises(RuntimeError, match=r"verification failed in function @scale\b"):
        jit.NativeLibrary(broken, cache_dir=None, jobs=jobs)
