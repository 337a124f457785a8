"""Tests for `symnet export` (runtime/export.py): a trained MLP as a C library, built
with cc and run without Python, against Program.forward on 100 real test images."""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from compiler.native import compile
from compiler.pipeline import load
from runtime import export
from runtime.checkpoint import restore, save_program
from runtime.data import load_dataset
from runtime.train import train
from symnet import cli

pytestmark = pytest.mark.skipif(shutil.which("cc") is None,
                                reason="no C compiler 'cc': export cannot build libraries")
FILES = ["libmlp.so", "mlp.o", "mlp.h", "example.c", "Makefile", "README.txt"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, program, images): mlp.nn after one short epoch, exported."""
    folder = tmp_path_factory.mktemp("export")
    program = compile(load("examples/mlp.nn"))
    data = load_dataset("embedded", limit=500)
    train(program, data, epochs=1, batch=64, quiet=True)
    save_program(folder / "mlp.npz", program)
    status = cli.main(["export", "examples/mlp.nn", "--weights", str(folder / "mlp.npz"),
                       "-o", str(folder / "lib"), "-q"])
    assert status == 0
    images = np.ascontiguousarray(data.x_test[:100].reshape(100, 784), dtype=np.float32)
    images.tofile(folder / "images.f32")
    return folder, program, images


def cc(*args, cwd):
    result = subprocess.run(["cc", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def run_example(executable, inputs):
    """(classes, outputs) printed by example.c: one line per example."""
    result = subprocess.run([str(executable), str(inputs)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    rows = np.array([[float(v) for v in line.split()] for line in result.stdout.splitlines()])
    return rows[:, 0].astype(int), rows[:, 1:]


def test_export_writes_the_library_header_and_example(exported):
    folder, _, _ = exported
    assert sorted(p.name for p in (folder / "lib").iterdir()) == sorted(FILES)
    header = (folder / "lib" / "mlp.h").read_text()
    assert "#define MLP_INPUT_SIZE 784" in header and "#define MLP_CLASSES 10" in header
    assert "int mlp_predict(const float* input, float* output);" in header
    assert "int mlp_forward(int64_t n, const float* input, float** outputs);" in header


@pytest.mark.parametrize("linking", ["shared", "static"])
def test_example_agrees_with_program_forward_on_100_images(exported, linking):
    folder, program, images = exported
    lib = folder / "lib"
    if linking == "shared":
        cc("-O2", "-o", "example", "example.c", "-L.", "-lmlp", "-Wl,-rpath,$ORIGIN", cwd=lib)
        executable = lib / "example"
    else:
        cc("-O2", "-o", "example_static", "example.c", "mlp.o", "-lm", cwd=lib)
        executable = lib / "example_static"
    classes, logits = run_example(executable, folder / "images.f32")
    expected = program.forward({"x": images})["logits"]
    assert len(classes) == 100
    assert (classes == expected.argmax(axis=1)).all()
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_example_refuses_a_file_that_is_not_whole_examples(exported, tmp_path):
    """float64 data (NumPy's default for tofile) or a cut file ended in a partial example
    that the example dropped without a word, exit status 0."""
    folder, _, images = exported
    cc("-O2", "-o", tmp_path / "example", "example.c", "mlp.o", "-lm", cwd=folder / "lib")
    images[:2].astype(np.float64)[:, :600].tofile(tmp_path / "f64.bin")    # 2400 floats
    result = subprocess.run([str(tmp_path / "example"), str(tmp_path / "f64.bin")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 3
    assert result.stderr == f"{tmp_path / 'f64.bin'}: ends with 48 of the 784 values of an example\n"


def test_forward_of_a_batch_through_ctypes(exported):
    folder, program, images = exported
    library = ctypes.CDLL(str(folder / "lib" / "libmlp.so"))
    forward = library.mlp_forward
    forward.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    logits = np.full((100, 10), np.nan, dtype=np.float32)
    outputs = (ctypes.c_void_p * 1)(logits.ctypes.data)
    assert forward(100, images.ctypes.data, outputs) == 0
    np.testing.assert_allclose(logits, program.forward({"x": images})["logits"], atol=1e-5)
    assert forward(3, images.ctypes.data, (ctypes.c_void_p * 1)(None)) == 0   # not wanted
    predict = library.mlp_predict
    predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    assert predict(images[7].ctypes.data, None) == int(logits[7].argmax())


def test_only_the_two_functions_are_exported(exported):
    folder, _, _ = exported
    library = ctypes.CDLL(str(folder / "lib" / "libmlp.so"))
    assert hasattr(library, "mlp_forward") and hasattr(library, "mlp_predict")
    for hidden in ("mlp_symnet_predict", "predict", "train_step", "kernel_0", "symnet_work",
                   "symnet_post"):
        assert not hasattr(library, hidden), hidden
    if shutil.which("nm"):                      # the whole list, not just the names above
        listed = subprocess.run(["nm", "-D", "--defined-only", str(folder / "lib" / "libmlp.so")],
                                capture_output=True, text=True, check=True).stdout
        names = {line.split()[-1] for line in listed.splitlines() if line.strip()}
        assert {n for n in names if not n.startswith("_")} == {"mlp_forward", "mlp_predict"}, names


def test_weights_come_from_the_checkpoint(exported, tmp_path, capsys):
    """Exporting the file's initial weights gives different logits than the trained ones,
    and the command says which weights it took."""
    folder, program, images = exported
    assert cli.main(["export", "examples/mlp.nn", "-o", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: without --weights the library holds the model's initial (untrained) weights")
    cc("-O2", "-o", "example", "example.c", "mlp.o", "-lm", cwd=tmp_path)
    _, initial = run_example(tmp_path / "example", folder / "images.f32")
    fresh = compile(load("examples/mlp.nn"))
    np.testing.assert_allclose(initial, fresh.forward({"x": images})["logits"], atol=1e-5)
    restore(folder / "mlp.npz", fresh)
    assert not np.allclose(initial, fresh.forward({"x": images})["logits"], atol=1e-3)


def test_a_model_without_outputs_cannot_be_exported(tmp_path, capsys):
    assert cli.main(["export", "examples/linreg.nn", "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ("error: model linreg has no output statement: there "
                                       "is nothing for the library to compute\n")


def test_export_without_a_c_compiler_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    assert cli.main(["export", "examples/perceptron.nn", "-o", str(tmp_path), "-q"]) == 1
    assert capsys.readouterr().err == "error: export needs a C compiler: no 'cc' on PATH\n"


def test_export_refuses_a_checkpoint_of_another_model(exported, tmp_path, capsys):
    folder, _, _ = exported
    assert cli.main(["export", "examples/softmax_regression.nn", "--weights",
                     str(folder / "mlp.npz"), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mlp" in err and err.count("\n") == 1


def test_c_identifier_and_float_literals_are_exact():
    assert export.c_identifier("my-net.v2") == "my_net_v2"
    assert export.c_identifier("2layer") == "model_2layer"
    values = np.array([0.1, -3.5e-8, 0.0, 1e30], dtype=np.float32)
    literals = export.float_literals(values, "w").split(", ")
    assert [np.float32(float.fromhex(t.rstrip("f"))) for t in literals] == list(values)
    with pytest.raises(export.ExportError, match="inf or nan"):
        export.float_literals(np.array([np.nan]), "w")


def test_an_input_marked_as_output_is_copied_through(tmp_path):
    """`output x` on the input: the library must read it from the caller's input, not
    from workspace memory it never wrote."""
    source = tmp_path / "echo.nn"
    source.write_text("model echo\ninput x[N, 3]\noutput x\noutput y = relu(x)\n")
    assert cli.main(["export", str(source), "-o", str(tmp_path / "lib"), "-q"]) == 0
    library = ctypes.CDLL(str(tmp_path / "lib" / "libecho.so"))
    forward = library.echo_forward
    forward.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    x = np.arange(-6, 6, dtype=np.float32).reshape(4, 3)
    echoed, y = np.full((4, 3), np.nan, np.float32), np.full((4, 3), np.nan, np.float32)
    assert forward(4, x.ctypes.data, (ctypes.c_void_p * 2)(echoed.ctypes.data, y.ctypes.data)) == 0
    np.testing.assert_array_equal(echoed, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_builds_both_examples_of_a_model_named_example(tmp_path):
    """Its object file is example.o: make's built-in rule compiled example.c over it,
    and `make example_static` failed with two mains and no example_predict."""
    source = tmp_path / "example.nn"
    source.write_text("model example\ninput x[N, 3]\noutput y = relu(x)\n")
    assert cli.main(["export", str(source), "-o", str(tmp_path / "lib"), "-q"]) == 0
    np.array([-1, 2, -3], np.float32).tofile(tmp_path / "x.f32")
    for target in ("example_static", "example"):
        built = subprocess.run(["make", target], cwd=tmp_path / "lib", capture_output=True,
                               text=True)
        assert built.returncode == 0, built.stderr
        classes, outputs = run_example(tmp_path / "lib" / target, tmp_path / "x.f32")
        assert outputs.tolist() == [[0, 2, 0]]


def test_only_a_classifier_is_exported_as_one(tmp_path):
    """custom.nn's output h [N, 3] is not a class score (no i32 labels; `symnet run`
    prints no class): its predict returns 0 and the README says so."""
    assert cli.main(["export", "examples/custom.nn", "-o", str(tmp_path), "-q"]) == 0
    assert "CUSTOM_CLASSES" not in (tmp_path / "custom.h").read_text()
    readme = (tmp_path / "README.txt").read_text()
    assert readme.startswith("custom, exported by symnet: a model without class outputs.\n")
    library = ctypes.CDLL(str(tmp_path / "libcustom.so"))
    output = np.zeros(3, np.float32)
    x = np.array([1, 2, 3, 4], np.float32)
    assert library.custom_predict(ctypes.c_void_p(x.ctypes.data),
                                  ctypes.c_void_p(output.ctypes.data)) == 0
    assert output.max() > 0


def test_export_into_a_file_says_that_o_names_a_folder(tmp_path, capsys):
    target = tmp_path / "lib.so"
    target.write_bytes(b"keep")
    assert cli.main(["export", "examples/custom.nn", "-o", str(target), "-q"]) == 1
    assert capsys.readouterr().err == (f"error: {target} is a file; -o names the folder to "
                                       "write the library into\n")
    assert target.read_bytes() == b"keep"


def test_a_failed_build_leaves_no_folder_it_made(tmp_path, monkeypatch, capsys):
    """The C compiler failing (here: at the link) is one line, and the folder that the
    export created for its output is gone again; a folder that was there stays."""
    def failing(*command, cwd):
        if command[1] == "-r":
            raise export.ExportError("cc failed while exporting: ld: cannot find -lm")
    monkeypatch.setattr(export, "_run", failing)
    new = tmp_path / "new" / "lib"
    assert cli.main(["export", "examples/perceptron.nn", "-o", str(new), "-q"]) == 1
    assert capsys.readouterr().err == "error: cc failed while exporting: ld: cannot find -lm\n"
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    assert cli.main(["export", "examples/perceptron.nn", "-o", str(old), "-q"]) == 1
    assert [p.name for p in old.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["entry", "wrapper"])
def test_a_model_named_like_a_scratch_file_exports(tmp_path, name):
    """The build linked `cc -r -o entry.o entry.o wrapper.o` in its scratch folder: a
    model named entry or wrapper failed with 'cc failed while exporting: compilation
    terminated.'"""
    source = tmp_path / f"{name}.nn"
    source.write_text(f"model {name}\ninput x[N, 3]\noutput y = relu(x)\n")
    assert cli.main(["export", str(source), "-o", str(tmp_path / "lib"), "-q"]) == 0
    library = ctypes.CDLL(str(tmp_path / "lib" / f"lib{name}.so"))
    x, y = np.array([-1, 2, -3], np.float32), np.full(3, np.nan, np.float32)
    assert getattr(library, f"{name}_predict")(ctypes.c_void_p(x.ctypes.data),
                                               ctypes.c_void_p(y.ctypes.data)) == 0
    assert y.tolist() == [0, 2, 0]


def test_a_failing_c_compiler_is_reported_by_its_error_line(tmp_path):
    """Not by gcc's last line, 'compilation terminated.', which says nothing."""
    with pytest.raises(export.ExportError) as error:
        export._run(shutil.which("cc"), "-c", "missing.c", cwd=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{shutil.which('cc')} failed while exporting: ")
    assert "missing.c" in message and "compilation terminated" not in message


def test_export_does_not_replace_a_file_it_did_not_write(tmp_path, capsys):
    """`-o .` in a project put the example's Makefile over the project's own Makefile
    (and README.txt); now refused before anything is written. An export's own files are
    replaced by the next export, of this model or another."""
    (tmp_path / "Makefile").write_text("all:\n\techo my project\n")
    (tmp_path / "README.txt").write_text("my notes\n")
    assert cli.main(["export", "examples/custom.nn", "-o", str(tmp_path), "-q"]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path}/Makefile exists and symnet export "
                                       "did not write it; -o names a folder for the library: "
                                       "choose a new one\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "README.txt"]
    assert (tmp_path / "Makefile").read_text() == "all:\n\techo my project\n"
    (tmp_path / "Makefile").unlink()
    assert cli.main(["export", "examples/custom.nn", "-o", str(tmp_path), "-q"]) == 1
    assert "README.txt exists and symnet export did not write it" in capsys.readouterr().err
    (tmp_path / "README.txt").unlink()
    (tmp_path / "custom.o").write_bytes(b"\x7fELF someone else's object")
    assert cli.main(["export", "examples/custom.nn", "-o", str(tmp_path), "-q"]) == 1
    assert "custom.o exists and symnet export did not write it" in capsys.readouterr().err
    (tmp_path / "custom.o").unlink()
    for model in ("examples/custom.nn", "examples/custom.nn", "examples/perceptron.nn"):
        assert cli.main(["export", model, "-o", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "README.txt").read_text().startswith("perceptron, exported by symnet")
