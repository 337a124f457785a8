"""Tests for runtime/data.py: IDX, CSV, NPZ, dataset resolution, batching, PNG."""

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime import data
from runtime.data import (DataError, Dataset, batches, fit_to_shape, load_dataset,
                          load_image, read_idx, read_png, save_png, write_idx)

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests start without $SYMNET_DATA unless they set it."""
    monkeypatch.delenv("SYMNET_DATA", raising=False)


def make_idx_folder(folder: Path, n_train=12, n_test=6, gz=True, rows=28, cols=28):
    """Write small random MNIST-style IDX files; return the arrays written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", y)
        arrays[split] = (x, y)
    return arrays


# ------------------------------------------------------------------ IDX

@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    write_idx(tmp_path / name, a)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    b = read_idx(tmp_path / name)
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 5)
    np.testing.assert_array_equal(a, b)


def test_idx_gzip_detected_by_magic_not_extension(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", a)
    (tmp_path / "labels.gz").rename(tmp_path / "labels-no-ext")
    np.testing.assert_array_equal(read_idx(tmp_path / "labels-no-ext"), a)


def test_idx_hand_made_bytes(tmp_path):
    path = tmp_path / "x-idx2-ubyte"
    path.write_bytes(b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6)))
    np.testing.assert_array_equal(read_idx(path), [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize("content, message", [
    (b"\x12\x34\x08\x01\0\0\0\x02ab", "bad magic"),
    (b"\0\0\x42\x01\0\0\0\x02ab", "bad magic"),
    (b"", "empty file, not an IDX file$"),
    (gzip.compress(b""), "empty file, not an IDX file$"),
    (b"\0\0\x08\x03\0\0\0\x02", "truncated IDX header"),
    (b"\0\0\x08\x01\0\0\0\x05abc", "truncated IDX data"),
    (b"\0\0\x08\x01\0\0\0\x02abc", "unexpected bytes"),
])
def test_idx_malformed(tmp_path, content, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "t-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x04abcd")[:-6])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_idx_folder_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="5 labels but t10k-images-idx3-ubyte.gz has 6 images"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("name, magic, message", [
    # A labels file whose magic says 4 dimensions: its first labels were read as sizes,
    # and the error asked for 12,839,910,217,213,817,236,546,860,000 bytes.
    ("t10k-labels-idx1-ubyte.gz", b"\0\0\x08\x04", "magic number 0x00000804 declares 4 "
                                                   "dimension(s), expected 1"),
    ("train-images-idx3-ubyte.gz", b"\0\0\x08\x01", "magic number 0x00000801 declares 1 "
                                                    "dimension(s), expected 3 or 4"),
])
def test_idx_folder_file_of_the_wrong_rank(tmp_path, name, magic, message):
    make_idx_folder(tmp_path)
    raw = gzip.decompress((tmp_path / name).read_bytes())
    (tmp_path / name).write_bytes(gzip.compress(magic + raw[4:]))
    with pytest.raises(DataError) as info:
        load_dataset(str(tmp_path))
    assert str(info.value) == f"{tmp_path / name}: its {message}"


def test_idx_folder_missing_file(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_dataset(str(tmp_path))


def test_idx_folder_raw_and_dotted_names(tmp_path):
    arrays = make_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images.idx3-ubyte")
    ds = load_dataset(tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train"][0] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert ds.y_train.dtype == np.int32
    assert str(tmp_path) in ds.name


# ----------------------------------------------------------- resolution

def test_symnet_data_env_honoured(tmp_path, monkeypatch):
    arrays = make_idx_folder(tmp_path / "fm", n_train=18, n_test=7)
    monkeypatch.setenv("SYMNET_DATA", str(tmp_path / "fm"))
    for spec in (None, "fashion-mnist", "mnist"):
        ds = load_dataset(spec)
        assert ds.x_train.shape == (18, 1, 28, 28) and ds.x_test.shape == (7, 1, 28, 28)
        assert str(tmp_path / "fm") in ds.name
        np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    assert load_dataset().classes == data.FASHION_CLASSES
    assert load_dataset("mnist").classes == data.DIGIT_CLASSES
    assert load_dataset(limit=5).x_train.shape[0] == 5


def test_symnet_data_env_broken(tmp_path, monkeypatch):
    """The message says the path came from $SYMNET_DATA: the command line never named it."""
    missing = tmp_path / "missing"
    monkeypatch.setenv("SYMNET_DATA", str(missing))
    for spec in (None, "mnist"):
        with pytest.raises(DataError) as info:
            load_dataset(spec)
        assert str(info.value) == f"{missing}: no such file or folder (from $SYMNET_DATA)"


def test_mnist_needs_env():
    with pytest.raises(DataError, match="SYMNET_DATA"):
        load_dataset("mnist")


def test_default_falls_back_to_embedded(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    assert load_dataset().name == data.EMBEDDED_NAME


def test_unsupported_and_missing_specs(tmp_path):
    (tmp_path / "a.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported data file"):
        load_dataset(str(tmp_path / "a.txt"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(str(tmp_path / "b.npz"))


def test_limit_validation():
    with pytest.raises(DataError, match="positive integer"):
        load_dataset("embedded", limit=0)


# ------------------------------------------------------------------ CSV

def test_csv_without_header_splits_last_sixth(tmp_path):
    rows = np.array([[i, i + 0.5, i % 3] for i in range(12)])
    path = tmp_path / "d.csv"
    path.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    ds = load_dataset(str(path))
    assert ds.x_train.shape == (10, 2) and ds.x_test.shape == (2, 2)
    np.testing.assert_allclose(ds.x_test, rows[10:, :2])   # not pixels: unscaled
    np.testing.assert_array_equal(ds.y_train, rows[:10, 2])
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32


def test_csv_header_label_column_and_pixels(tmp_path):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (6, 784))
    lines = ["label," + ",".join(f"pixel{i}" for i in range(784))]
    lines += [f"{k % 10}," + ",".join(map(str, r)) for k, r in enumerate(px)]
    path = tmp_path / "fashion-mnist_train.csv"
    path.write_text("\n".join(lines))
    ds = load_dataset(str(path))
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (1, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train.reshape(5, -1), px[:5] / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3, 4])
    assert ds.classes == data.FASHION_CLASSES   # "fashion" in the file name


def test_csv_header_label_last(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n" + "".join(f"{i},{20 * i},{i % 2}\n" for i in range(6)))
    ds = load_dataset(str(path))
    np.testing.assert_array_equal(ds.x_train[:, 1], [0, 20, 40, 60, 80])  # table: unscaled
    np.testing.assert_array_equal(ds.y_test, [1])


def test_csv_quoted_header_and_cells(tmp_path):
    """R's write.csv and pandas quote names ("label"): the quoted label column was not
    recognised, so the last feature became the labels. Quoted numbers were refused."""
    path = tmp_path / "d.csv"
    path.write_text('"label","a","b"\n' + "".join(f'{i % 2},"{i}",{20 * i}\n' for i in range(6)))
    ds = load_dataset(str(path))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(ds.x_train[:, 0], [0, 1, 2, 3, 4])
    path.write_text('"a","b","label"\n1,"x",0\n')
    with pytest.raises(DataError, match="line 2: '\"x\"' is not a number"):
        load_dataset(str(path))


def test_csv_pair(tmp_path):
    (tmp_path / "train.csv").write_text("0.1,0.2,1\n0.3,0.4,0\n")
    (tmp_path / "test.csv").write_text("0.5,0.6,2\n")
    ds = load_dataset(f"{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}")
    assert ds.x_train.shape == (2, 2) and ds.x_test.shape == (1, 2)
    np.testing.assert_array_equal(ds.y_test, [2])


def test_csv_without_labels_is_all_features(tmp_path):
    """For a model without a label input (labels=False) the last column is a feature,
    not a target: a 4-column CSV fed an x[N, 4] only as 3 features then a label."""
    rows = np.arange(48.0).reshape(12, 4)
    path = tmp_path / "d.csv"
    np.savetxt(path, rows, delimiter=",", fmt="%g")
    ds = load_dataset(str(path), labels=False)
    np.testing.assert_array_equal(ds.x_train, rows[:10])
    np.testing.assert_array_equal(ds.x_test, rows[10:])
    assert ds.y_train is None and ds.y_test is None and ds.num_classes is None
    assert load_dataset(str(path), labels=False, limit=3).x_train.shape == (3, 4)
    assert load_dataset(str(path)).x_train.shape == (10, 3)       # labels=True: as before
    path.write_text("a,label,b\n" + "".join(f"{i},{i % 2},{-i}\n" for i in range(6)))
    ds = load_dataset(str(path), labels=False)     # a column called label is still one
    np.testing.assert_array_equal(ds.x_train[:, 1], [0, -1, -2, -3, -4])
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0, 1, 0])
    path.write_text("7\n" * 6)                     # one feature, nothing else
    assert load_dataset(str(path), labels=False).x_train.shape == (5, 1)


@pytest.mark.parametrize("text, message", [
    ("1,2,3\n4,5,6\n7,8\n", "line 3 has 2 columns, expected 3"),
    ("a,b,label\n1,2,3\n4,5,6,7\n", "line 3 has 4 columns, expected 3"),
    ("1,2,3\n4,x,6\n", "line 2: 'x' is not a number"),
    ("1,2,inf\n" * 6, "finite"),
    ("", "no data rows"),
])
def test_csv_malformed(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_csv_not_utf8(tmp_path):
    """A CSV saved in Latin-1 (a spreadsheet's accented header) or a binary file named
    .csv is a one-line DataError, not a UnicodeDecodeError."""
    path = tmp_path / "bad.csv"
    for content in (b"x,caf\xe9\n1,2\n", b"x,y\n1,2\n3,\xe9\n", bytes(range(256)) * 2):
        path.write_bytes(content)
        with pytest.raises(DataError, match="not UTF-8 text") as info:
            load_dataset(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ NPZ

def test_npz_split_keys(tmp_path):
    x = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x[:3], y_train=[0, 1, 2], x_test=x[3:], y_test=[3])
    ds = load_dataset(str(path))
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.x_test.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(ds.x_test[0, 0], x[3] / np.float32(255))
    assert ds.classes is None


def test_npz_xy_keys(tmp_path):
    x = np.random.default_rng(2).random((12, 5)).astype(np.float32)
    y = np.arange(12) % 4
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=x, y=y, classes=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(str(path))
    np.testing.assert_array_equal(ds.x_train, x[:10])
    np.testing.assert_array_equal(ds.y_test, y[10:])
    assert ds.classes == ["a", "b", "c", "d"]


def test_npz_without_labels_needs_only_x(tmp_path):
    """labels=False: x alone (last sixth the test set), or x_train and x_test, will do;
    labels present are still read."""
    x = np.random.default_rng(2).random((12, 4)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x)
    ds = load_dataset(str(path), labels=False)
    np.testing.assert_array_equal(ds.x_train, x[:10])
    np.testing.assert_array_equal(ds.x_test, x[10:])
    assert ds.y_train is None and ds.y_test is None
    with pytest.raises(DataError) as err:                   # a model with labels needs y
        load_dataset(str(path))
    assert str(err.value) == (f"{path}: missing keys: need x_train, y_train, x_test, y_test "
                              "(or x, y); found x")
    np.savez(path, x_train=x[:9], x_test=x[9:])
    ds = load_dataset(str(path), labels=False)
    assert ds.x_train.shape == (9, 4) and ds.x_test.shape == (3, 4) and ds.y_test is None
    np.savez(path, x=x, y=np.arange(12) % 3)
    np.testing.assert_array_equal(load_dataset(str(path), labels=False).y_test, [1, 2])
    np.savez(path, images=x)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), labels=False)
    assert str(err.value) == f"{path}: missing keys: need x_train, x_test (or x); found images"


def test_npz_classes_must_name_every_label(tmp_path):
    """Three names for labels 0..3 were dropped without a word (predict then printed
    class numbers); now the file is refused saying what is missing."""
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((12, 5)), y=np.arange(12) % 4,
                        classes=np.array(["a", "b", "c"]))
    with pytest.raises(data.DataError) as err:
        load_dataset(str(path))
    assert str(err.value) == (f"{path}: classes names 3 class(es), but the labels go up to 3: "
                              "give one name for each class 0..3")


def test_float_targets_are_not_classes(tmp_path, monkeypatch):
    """Labels that are not whole non-negative numbers stay float targets (a regression):
    they have no number of classes, and $SYMNET_DATA does not name them as if they were
    Fashion-MNIST's classes; whole ones are class indices."""
    x = np.random.default_rng(3).random((12, 1)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=2.5 * x[:, 0])
    ds = load_dataset(str(path))
    assert ds.y_train.dtype.kind == "f" and ds.num_classes is None
    assert "classes=None" in repr(ds)
    monkeypatch.setenv("SYMNET_DATA", str(path))
    assert load_dataset("fashion-mnist").classes is None
    np.savez(path, x=x, y=np.arange(12) % 3)
    ds = load_dataset(str(path))
    assert ds.y_train.dtype == np.int32 and ds.num_classes == 3


def test_npz_missing_keys_and_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 2)))
    with pytest.raises(DataError, match="missing keys.*found images"):
        load_dataset(str(path))
    np.savez(path, x_train=np.zeros((3, 2)), y_train=[0, 1], x_test=np.zeros((1, 2)), y_test=[0])
    with pytest.raises(DataError, match="2 labels for 3 examples"):
        load_dataset(str(path))
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable .npz file \(not a zip archive\)$"):
        load_dataset(str(path))


def test_npy_saved_under_an_npz_name(tmp_path):
    """np.save to a .npz name writes one bare array: np.load returned it and the
    loader failed with an internal TypeError instead of saying what the file is."""
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((12, 3)))
    with pytest.raises(DataError, match=r"a single .npy array, not an .npz archive"):
        load_dataset(str(path))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((12, 2)), "y": np.array(3)}, "labels must be 1-D, got shape []"),
    ({"x": np.array(1.0), "y": np.array(2)}, "labels must be 1-D, got shape []"),
    ({"x_train": np.zeros((3, 2)), "y_train": np.array(1), "x_test": np.zeros((1, 2)),
      "y_test": [0]}, "labels must be 1-D, got shape []"),
    ({"x": np.zeros((12, 2), complex), "y": np.arange(12) % 2}, "expected real numbers"),
    ({"x": np.zeros((12, 2)), "y": np.arange(12) % 2, "classes": np.array("ab")},
     "classes must be a 1-D array of names"),
], ids=["0d_y", "0d_x_and_y", "0d_y_train", "complex_x", "0d_classes"])
def test_npz_arrays_of_the_wrong_kind(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_test_examples_shaped_unlike_training_examples(tmp_path):
    """Refused when loaded, naming both shapes (not later as a misfit of 'data')."""
    make_idx_folder(tmp_path / "idx", gz=False)
    data.write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte", np.zeros((6, 20, 20), np.uint8))
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((3, 5)), y_train=[0, 1, 2], x_test=np.zeros((1, 4)), y_test=[0])
    for spec, train, test in [(tmp_path / "idx", [1, 28, 28], [1, 20, 20]), (path, [5], [4])]:
        with pytest.raises(DataError) as info:
            load_dataset(str(spec))
        assert str(info.value).endswith(f"({spec}): test examples are shaped {test}, "
                                        f"training examples {train}")


# ------------------------------------------------------- real datasets

def test_embedded_dataset():
    ds = load_dataset("embedded")
    assert ds.name == "embedded fashion-mnist subset"
    assert ds.x_train.shape == (3000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    for x in (ds.x_train, ds.x_test):
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train), [300] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    assert ds.classes == data.FASHION_CLASSES
    assert data.EMBEDDED_PATH.stat().st_size < 3_000_000


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    ds = load_dataset()
    assert ds.name == f"fashion-mnist ({DEBIAN})"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.y_train.shape == (60000,)
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    # the embedded subset is exactly the documented selection from these files
    emb = np.load(data.EMBEDDED_PATH)
    np.testing.assert_array_equal(ds.x_train[emb["train_index"]], load_dataset("embedded").x_train)
    np.testing.assert_array_equal(ds.y_test[emb["test_index"]], emb["y_test"])


def test_runtime_does_not_import_sympy():
    code = "import sys, runtime.data; assert 'sympy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ------------------------------------------------------ shapes, batches

def test_fit_to_shape():
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 1, 28, 28)
    flat = fit_to_shape(x, [784])
    assert flat.shape == (2, 784)
    np.testing.assert_array_equal(fit_to_shape(flat, (1, 28, 28)), x)
    ds = Dataset("t", x, np.zeros(2, np.int32), x, np.zeros(2, np.int32), None)
    assert ds.features([784], "test").shape == (2, 784)


@pytest.mark.parametrize("shape, message", [
    ([10], "784 values per example.*10 values"),
    ([0, 784], "positive"),
    (["a"], "list of integers"),
])
def test_fit_to_shape_errors(shape, message):
    with pytest.raises(DataError, match=message) as info:
        fit_to_shape(np.zeros((2, 1, 28, 28)), shape)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("x", [np.zeros(784), np.zeros((28, 28))], ids=["flat", "image"])
def test_one_example_without_its_batch_dimension_is_named_as_such(x):
    """predict(program, x) with one image: its rows are not a batch of examples."""
    with pytest.raises(DataError) as info:
        fit_to_shape(x, [784])
    assert str(info.value).endswith(f"does not fit model input [784] (784 values); an array "
                                    f"shaped {list(x.shape)} is one example without its batch "
                                    "dimension: give x[None]")
    with pytest.raises(DataError, match=r"\(10 values\)$"):       # no such hint for a batch
        fit_to_shape(np.zeros((2, 784)), [10])


def test_batches_cover_everything():
    x, y = np.arange(10 * 3).reshape(10, 3), np.arange(10)
    got = list(batches(x, y, 4))
    assert [len(b) for b, _ in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b for b, _ in got]), x)
    shuffled = list(batches(x, y, 4, shuffle=True, rng=np.random.default_rng(3)))
    ys = np.concatenate([b for _, b in shuffled])
    assert sorted(ys) == list(range(10)) and list(ys) != list(range(10))
    for xb, yb in shuffled:
        assert xb.flags.c_contiguous and yb.flags.c_contiguous
        np.testing.assert_array_equal(xb[:, 0] // 3, yb)
    again = np.concatenate([b for _, b in batches(x, y, 4, shuffle=True, rng=3)])
    assert list(again) == list(np.concatenate([b for _, b in batches(x, y, 4, shuffle=True, rng=3)]))
    with pytest.raises(DataError):
        next(batches(x, y, 0))
    with pytest.raises(DataError):
        next(batches(x, y[:3], 2))


# ------------------------------------------------------------------ PNG

def test_png_round_trip_gray(tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (13, 7), dtype=np.uint8)
    save_png(tmp_path / "g.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "g.png")[..., 0], img)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), img / np.float32(255))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_png_round_trip_rgb(tmp_path):
    img = np.random.default_rng(5).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    save_png(tmp_path / "c.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "c.png"), img)
    gray = load_image(tmp_path / "c.png")
    np.testing.assert_allclose(gray, img @ np.array([0.299, 0.587, 0.114]) / 255, atol=1e-6)


def test_save_png_inside_a_file_names_the_file(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(DataError) as err:
        save_png(tmp_path / "plain" / "maps" / "m.png", np.zeros((2, 2)))
    assert str(err.value) == (f"{tmp_path / 'plain' / 'maps' / 'm.png'}: cannot write "
                              f"('{tmp_path / 'plain'}' is a file, not a folder)")


def test_save_png_float_and_bad_shape(tmp_path):
    save_png(tmp_path / "f.png", np.array([[0.0, 0.5, 1.0, 2.0, -1.0]]))
    np.testing.assert_array_equal(read_png(tmp_path / "f.png")[0, :, 0], [0, 128, 255, 255, 0])
    with pytest.raises(DataError, match="cannot save"):
        save_png(tmp_path / "x.png", np.zeros((2, 2, 5)))


def _filter_row(ftype, row, prev, bpp):
    """Reference PNG encoder filter (the inverse of what the decoder undoes)."""
    out = []
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            pred = 0
        elif ftype == 1:
            pred = a
        elif ftype == 2:
            pred = b
        elif ftype == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((x - pred) % 256)
    return bytes([ftype] + out)


def _hand_png(pixels, color):
    """A PNG whose row r uses filter type r % 5 (1, 2, 3, 4 all exercised)."""
    h, w, ch = pixels.shape
    prev, body = [0] * (w * ch), b""
    for r in range(h):
        row = [int(v) for v in pixels[r].reshape(-1)]
        body += _filter_row(r % 5 if r else 1 + r, row, prev, ch)  # row 0: Sub
        prev = row

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"tEXt", b"Comment\0hand made")
            + chunk(b"IDAT", zlib.compress(body)[:10]) + chunk(b"IDAT", zlib.compress(body)[10:])
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("color, channels", [(0, 1), (4, 2), (2, 3), (6, 4)])
def test_png_hand_made_filters(tmp_path, color, channels):
    pixels = np.random.default_rng(color).integers(0, 256, (11, 6, channels), dtype=np.uint8)
    path = tmp_path / "h.png"
    path.write_bytes(_hand_png(pixels, color))
    np.testing.assert_array_equal(read_png(path), pixels)
    v = pixels / np.float32(255)
    if channels in (2, 4):
        v = v[..., :-1] * v[..., -1:]
    want = v @ np.array([0.299, 0.587, 0.114]) if v.shape[-1] == 3 else v[..., 0]
    np.testing.assert_allclose(load_image(path), want, atol=1e-6)


def test_png_palette(tmp_path):
    pal = np.array([[0, 0, 0], [255, 0, 0], [10, 20, 30]], np.uint8)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)[..., None]
    png = bytearray(_hand_png(idx, 3))
    plte = b"PLTE" + pal.tobytes()
    chunk = struct.pack(">I", 9) + plte + struct.pack(">I", zlib.crc32(plte))
    at = 8 + 25                                # after the signature and IHDR
    (tmp_path / "p.png").write_bytes(bytes(png[:at]) + chunk + bytes(png[at:]))
    np.testing.assert_array_equal(read_png(tmp_path / "p.png"), pal[idx[..., 0]])


def test_png_errors(tmp_path):
    good = tmp_path / "g.png"
    save_png(good, np.zeros((3, 3), np.uint8))
    raw = good.read_bytes()
    cases = {
        "bad CRC": raw[:30] + bytes([raw[30] ^ 1]) + raw[31:],
        "truncated PNG": raw[:-20],
        "not a PNG": b"GIF89a" + raw[6:],
    }
    for message, content in cases.items():
        (tmp_path / "b.png").write_bytes(content)
        with pytest.raises(DataError, match=message) as info:
            read_png(tmp_path / "b.png")
        assert str(tmp_path / "b.png") in str(info.value)


def test_load_image_npy_and_unsupported(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.uint8).reshape(2, 2))
    want = np.arange(4, dtype=np.uint8).reshape(2, 2) / np.float32(255)
    np.testing.assert_array_equal(load_image(tmp_path / "a.npy"), want)
    np.save(tmp_path / "f.npy", np.ones((1, 28, 28), np.float64))
    img = load_image(tmp_path / "f.npy")
    assert img.dtype == np.float32 and fit_to_shape(img[None], [784]).shape == (1, 784)
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    with pytest.raises(DataError, match="unsupported input"):
        load_image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="file not found"):
        load_image(tmp_path / "missing.png")
