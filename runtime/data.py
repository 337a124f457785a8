"""Data loading for the symnet runtime.

What lives here:

* ``load_dataset`` - Fashion-MNIST (or MNIST, or your own data) as a
  ``Dataset`` of float32 images in [0, 1] and labels (int32 class indices,
  or float targets where they are not whole non-negative numbers).  Sources: IDX
  files (the original MNIST format, gzip or raw), CSV, NPZ, and a small real
  Fashion-MNIST subset shipped in ``runtime/datasets/``.
* ``read_idx`` / ``write_idx`` - the IDX file format.
* ``batches`` - mini-batch iteration.
* ``load_image`` / ``read_png`` / ``save_png`` - inputs for ``symnet run``
  and a tiny PNG codec built on zlib (no Pillow).
* ``fit_to_shape`` - reshape data to what a model's input declares.

Only numpy and the standard library are used (the runtime never imports
sympy).  Every problem the user can fix raises ``DataError`` with a one-line
message that names the offending file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .files import file_in_the_way, write_atomically

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]

ENV_VAR = "SYMNET_DATA"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_PATH = Path(__file__).resolve().parent / "datasets" / "fashion_mnist_small.npz"
EMBEDDED_NAME = "embedded fashion-mnist subset"


class DataError(Exception):
    """A data problem the user has to fix; ``str(err)`` is one line."""


def _oneline(err: BaseException) -> str:
    """First line of an exception's message (library messages can be long)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _read_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or _oneline(err)})") from None


def _atomic_write(path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over
    ``path`` so readers never see a half-written file."""
    path = Path(path)
    blocker = file_in_the_way(path.parent)
    if blocker:
        raise DataError(f"{path}: cannot write ('{blocker}' is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)     # `-o out/maps.png`
        write_atomically(path, data)
    except OSError as err:
        raise DataError(f"{path}: cannot write ({err.strerror or _oneline(err)})") from None


# --------------------------------------------------------------- Dataset

@dataclass
class Dataset:
    """A train/test split.

    Image data is float32 in [0, 1], shaped [n, 1, H, W] (NCHW, one channel);
    other data keeps its own shape [n, features...].  Labels are int32 class
    indices when every one is a whole non-negative number, else float targets (a
    regression), or None where the data holds none (loaded with labels=False);
    ``classes`` names the classes when known.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] | None = None

    @property
    def num_classes(self) -> int | None:
        """len(classes) when named, else 1 + the largest label seen; None for float
        targets, which are not classes."""
        if self.classes:
            return len(self.classes)
        if self.y_train is None or self.y_test is None:
            return None
        if self.y_train.dtype.kind == "f" or self.y_test.dtype.kind == "f":
            return None
        top = max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))
        return int(top) + 1

    def features(self, shape: Sequence[int], split: str = "train") -> np.ndarray:
        """The ``split`` ("train" or "test") inputs reshaped to a model input
        ``shape`` given without the batch dimension, e.g. [784] or [1, 28, 28]."""
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} (expected 'train' or 'test')")
        return fit_to_shape(self.x_train if split == "train" else self.x_test, shape)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={list(self.x_train.shape)}, "
                f"test={list(self.x_test.shape)}, classes={self.num_classes})")


def fit_to_shape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reshape a batch ``x`` [n, ...] to [n, *shape]; ``shape`` excludes the
    batch dimension.  [n, 1, 28, 28] -> [784] gives [n, 784] and back.
    For a single example use ``fit_to_shape(img[None], shape)[0]``."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise DataError(f"model input shape {shape!r} must be a list of integers") from None
    if any(d <= 0 for d in dims):
        raise DataError(f"model input shape {list(dims)} must have positive sizes")
    x = np.asarray(x)
    if x.ndim == 0:
        raise DataError("cannot fit a scalar to a model input; expected a batch [n, ...]")
    have, want = math.prod(x.shape[1:]), math.prod(dims)
    if have != want:
        single = x.size == want         # one example, its batch dimension left out
        raise DataError(f"data shaped {list(x.shape[1:])} ({have} values per example) does not "
                        f"fit model input {list(dims)} ({want} values)"
                        + (f"; an array shaped {list(x.shape)} is one example without its batch "
                           "dimension: give x[None]" if single else ""))
    return x.reshape((x.shape[0],) + dims)


# ------------------------------------------------------------------- IDX

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path) -> bytes:
    """File contents, gunzipped when they start with the gzip magic 1f 8b
    (the extension does not matter)."""
    raw = _read_file(path)
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        raise DataError(f"{path}: corrupt or truncated gzip data") from None


def read_idx(path, ndims: Sequence[int] | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw.

    Layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short,
    0x0C int, 0x0D float, 0x0E double), the number of dimensions, each
    dimension as a big-endian uint32, then the values (big-endian, C order).
    Returns a native-endian array with exactly those dimensions.  ``ndims``,
    when given, are the numbers of dimensions the caller accepts (labels: 1);
    another is refused before the header's sizes are read as dimensions.
    """
    data = _read_maybe_gzip(path)
    if not data:
        raise DataError(f"{path}: empty file, not an IDX file")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number 0x{data[:4].hex() or 'empty'})")
    ndim, start = data[3], 4 + 4 * data[3]
    if ndims is not None and ndim not in ndims:
        raise DataError(f"{path}: its magic number 0x{data[:4].hex()} declares {ndim} "
                        f"dimension(s), expected {' or '.join(map(str, ndims))}")
    if len(data) < start:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(data) - start
    if have < need:
        raise DataError(f"{path}: truncated IDX data (shape {list(dims)} needs {need} bytes, found {have})")
    if have > need:
        raise DataError(f"{path}: {have - need} unexpected bytes after the IDX data (shape {list(dims)})")
    arr = np.frombuffer(data, dtype, count=count, offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in .gz."""
    a = np.asarray(array)
    big = a.dtype.newbyteorder(">")
    codes = [code for code, name in _IDX_DTYPES.items() if np.dtype(name) == big]
    if not codes:
        raise DataError(f"{path}: dtype {a.dtype} cannot be stored in an IDX file")
    payload = (bytes([0, 0, codes[0], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
               + a.astype(big).tobytes())
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    _atomic_write(path, payload)


# ------------------------------------------------------- array conversion

def _to_float(x: np.ndarray, source) -> np.ndarray:
    """float32 values; uint8 pixels are scaled by 1/255 into [0, 1]."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    if x.dtype.kind not in "biuf":        # complex would silently lose its imaginary part
        raise DataError(f"{source}: expected real numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore"):      # beyond float32 becomes inf, which callers refuse
        return x.astype(np.float32)


def _as_images(x: np.ndarray) -> np.ndarray:
    """[n, H, W] -> [n, 1, H, W]; flat 784-vectors -> [n, 1, 28, 28]; else as is."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 2 and x.shape[1] == 28 * 28:
        return x.reshape(-1, 1, 28, 28)
    return x


def _labels(y: np.ndarray, source) -> np.ndarray:
    """Targets as int32 class indices when they are whole and non-negative, else as
    float32 regression targets (y = 2x + 1 in a CSV trains linreg.nn)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {list(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{source}: labels must be numbers, got dtype {y.dtype}")
    if y.size and not np.all(np.isfinite(y)):
        raise DataError(f"{source}: targets must be finite numbers")
    if y.size and (np.any(y != np.round(y)) or y.min() < 0):
        return y.astype(np.float32)
    return y.astype(np.int32)


def _line_up(x, y, source, what="examples"):
    """Refuse labels that are not 1-D or not one per example (0-d arrays included: an
    .npz may hold anything), before they are sliced or converted.  None: no labels."""
    if y is None:
        return
    if np.ndim(y) != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {list(np.shape(y))}")
    if np.ndim(x) < 1 or len(x) != len(y):
        raise DataError(f"{source}: {len(y)} labels for {len(x) if np.ndim(x) else 0} {what}")


def _pair(x, y, source, what="examples"):
    """Check that inputs and labels line up; return (images as float, labels)."""
    _line_up(x, y, source, what)
    return (_as_images(_to_float(np.asarray(x), source)),
            None if y is None else _labels(y, source))


def _split_sixth(x, y, source):
    """Use the last sixth (rounded down) of the examples as the test set (y may be None)."""
    _line_up(x, y, source)
    n_test = len(x) // 6
    if n_test == 0:
        raise DataError(f"{source}: {len(x)} examples are too few to split off a test sixth (need 6)")
    if y is None:
        return x[:-n_test], None, x[-n_test:], None
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


def _classes_for(path) -> list[str] | None:
    """Fashion-MNIST class names when the path says fashion, else unknown."""
    return FASHION_CLASSES if "fashion" in str(path).lower() else None


# ------------------------------------------------------------ IDX folders

def _find_idx(folder: Path, split: str, kind: str) -> Path:
    """Locate e.g. train-images-idx3-ubyte[.gz] or train-images.idx3-ubyte[.gz]."""
    nd = 3 if kind == "images" else 1
    stems = [f"{split}-{kind}-idx{nd}-ubyte", f"{split}-{kind}.idx{nd}-ubyte"]
    for name in (s + ext for s in stems for ext in ("", ".gz")):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {stems[0]}[.gz] (the {split} {kind} IDX file)")


def _load_idx_split(folder: Path, split: str):
    ipath, lpath = _find_idx(folder, split, "images"), _find_idx(folder, split, "labels")
    x, y = read_idx(ipath, ndims=(3, 4)), read_idx(lpath, ndims=(1,))   # [n, rows, cols], [n]
    if len(x) != len(y):
        raise DataError(f"{lpath}: {len(y)} labels but {ipath.name} has {len(x)} images")
    return _pair(x, y, lpath, "images")


def load_idx_folder(folder, name: str | None = None, classes=None) -> Dataset:
    """Load train-* and t10k-* IDX image/label files from ``folder``."""
    folder = Path(folder)
    x_train, y_train = _load_idx_split(folder, "train")
    x_test, y_test = _load_idx_split(folder, "t10k")
    return Dataset(name or f"IDX files ({folder})", x_train, y_train, x_test, y_test,
                   classes if classes is not None else _classes_for(folder))


# ------------------------------------------------------------------- CSV

NOT_UTF8 = "not UTF-8 text (save the CSV as UTF-8)"


def _csv_header(path) -> list[str] | None:
    """The header cells when the first line is not all numbers, else None."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: {NOT_UTF8}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or _oneline(err)})") from None
    cells = [_unquoted(c) for c in first.split(",")]
    try:
        [float(c) for c in cells]
        return None
    except ValueError:
        return cells


def _unquoted(cell: str) -> str:
    """A CSV cell without its spaces and double quotes: R, Excel and pandas quote
    header names ("label"), some writers numbers too."""
    return cell.strip().strip('"')


def _csv_problem(path, header) -> str:
    """Find the first bad row for a readable error (slow path, errors only)."""
    width = len(header) if header else None
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if (header and lineno == 1) or not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = line.split(",")
            width = width or len(cells)
            if len(cells) != width:
                return f"line {lineno} has {len(cells)} columns, expected {width}"
            for c in cells:
                try:
                    float(_unquoted(c))
                except ValueError:
                    return f"line {lineno}: {c.strip()!r} is not a number"
    return "unreadable CSV data"


def _read_csv(path, labels=True):
    """Rows ``features..., label`` -> (float64 features [n, d], labels).

    A first line that is not all numbers is a header; if it names a column
    "label" (as Kaggle's Fashion-MNIST CSVs do), that column holds the labels.
    With ``labels`` False and no "label" column, every column is a feature and the
    labels are None (a model without a label input).
    """
    header = _csv_header(path)
    try:
        with warnings.catch_warnings():   # an empty file is reported below
            warnings.simplefilter("ignore", UserWarning)
            data = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0,
                              ndmin=2, encoding="utf-8-sig", quotechar='"')
    except UnicodeDecodeError:            # a ValueError too, but no row is to blame
        raise DataError(f"{path}: {NOT_UTF8}") from None
    except ValueError:
        raise DataError(f"{path}: {_csv_problem(path, header)}") from None
    if data.size == 0:
        raise DataError(f"{path}: no data rows")
    if header and len(header) != data.shape[1]:
        raise DataError(f"{path}: header has {len(header)} columns, rows have {data.shape[1]}")
    names = [h.lower() for h in header or []]
    if "label" in names:
        col = names.index("label")
    elif labels:
        col = data.shape[1] - 1
    else:
        return data, None
    if data.shape[1] < 2:
        raise DataError(f"{path}: rows need at least one feature and a label")
    return np.delete(data, col, axis=1), _labels(data[:, col], path)


def _scale_csv(*xs):
    """Rows of 784 whole numbers in 0..255 (some > 1) are 28x28 pixel images:
    scale them by 1/255 and shape them [n, 1, 28, 28].  Other tables are kept."""
    top = max(x.max() for x in xs)
    pixels = (xs[0].shape[1] == 28 * 28 and 1 < top <= 255
              and all(x.min() >= 0 and np.all(x == np.round(x)) for x in xs))
    with np.errstate(over="ignore"):      # beyond float32 becomes inf, which callers refuse
        return [_as_images((x / 255 if pixels else x).astype(np.float32)) for x in xs]


def load_csv(path, test_path=None, labels=True) -> Dataset:
    """One CSV (last sixth becomes the test set) or a train/test pair; with
    ``labels`` False every column is a feature unless one is called "label"."""
    x, y = _read_csv(path, labels)
    if test_path is None:
        x_train, y_train, x_test, y_test = _split_sixth(x, y, path)
        name = f"CSV ({path})"
    else:
        (x_train, y_train), (x_test, y_test) = (x, y), _read_csv(test_path, labels)
        if x_test.shape[1] != x_train.shape[1]:
            raise DataError(f"{test_path}: {x_test.shape[1]} features per row, "
                            f"but {path} has {x_train.shape[1]}")
        name = f"CSV ({path}, {test_path})"
    x_train, x_test = _scale_csv(x_train, x_test)
    return Dataset(name, x_train, y_train, x_test, y_test, _classes_for(path))


# ------------------------------------------------------------------- NPZ

def load_npz(path, labels=True) -> Dataset:
    """Arrays x_train, y_train, x_test, y_test - or x, y (last sixth is test); with
    ``labels`` False x_train, x_test or x alone will do.  An optional ``classes``
    array of strings names the labels."""
    _check_npz_magic(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({_oneline(err)})") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        parts = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    elif {"x", "y"} <= arrays.keys():
        parts = _split_sixth(arrays["x"], arrays["y"], path)
    elif not labels and {"x_train", "x_test"} <= arrays.keys():
        parts = [arrays["x_train"], None, arrays["x_test"], None]
    elif not labels and "x" in arrays:
        parts = _split_sixth(arrays["x"], None, path)
    else:
        found = ", ".join(sorted(arrays)) or "none"
        need = "x_train, y_train, x_test, y_test (or x, y)" if labels else "x_train, x_test (or x)"
        raise DataError(f"{path}: missing keys: need {need}; found {found}")
    x_train, y_train = _pair(parts[0], parts[1], path)
    x_test, y_test = _pair(parts[2], parts[3], path)
    classes = (_class_names(arrays["classes"], (y_train, y_test), path) if "classes" in arrays
               else _classes_for(path))
    return Dataset(f"NPZ ({path})", x_train, y_train, x_test, y_test, classes)


def _check_npz_magic(path) -> None:
    """Refuse what is not a zip archive by its first bytes: np.load would return a
    .npy file's lone array (no keys to look up) and read anything else as a pickle,
    whose refusal suggests allow_pickle."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or _oneline(err)})") from None
    if magic == b"\x93NUMPY":
        raise DataError(f"{path}: a single .npy array, not an .npz archive of named arrays "
                        "(write it with np.savez(path, x=..., y=...))")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not a readable .npz file (not a zip archive)")


def _class_names(classes: np.ndarray, labels, path) -> list[str]:
    if classes.ndim != 1:
        raise DataError(f"{path}: classes must be a 1-D array of names, got shape "
                        f"{list(classes.shape)}")
    # Names for fewer classes than the labels use were ignored without a word.
    top = max((int(y.max()) for y in labels if y is not None and y.size and y.dtype.kind in "iu"),
              default=-1)
    if top >= len(classes):
        raise DataError(f"{path}: classes names {len(classes)} class(es), but the labels go "
                        f"up to {top}: give one name for each class 0..{top}")
    return [str(c) for c in classes]


def load_embedded() -> Dataset:
    """The real Fashion-MNIST subset shipped in runtime/datasets/."""
    if not EMBEDDED_PATH.is_file():
        raise DataError(f"{EMBEDDED_PATH}: embedded dataset missing "
                        "(regenerate: python -m runtime.datasets.make_embedded)")
    return replace(load_npz(EMBEDDED_PATH), name=EMBEDDED_NAME)


# ------------------------------------------------------------ resolution

def _load_path(spec: str, labels: bool = True) -> Dataset:
    """A folder of IDX files, a .csv, a .npz, or "train.csv,test.csv"."""
    if "," in spec and not os.path.exists(spec):
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2 or not all(p.lower().endswith(".csv") for p in parts):
            raise DataError(f"{spec}: a pair must be written 'train.csv,test.csv'")
        return load_csv(parts[0], parts[1], labels)
    path = Path(spec)
    if path.is_dir():
        return load_idx_folder(path)
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, labels=labels)
    if suffix == ".npz":
        return load_npz(path, labels)
    raise DataError(f"{spec}: unsupported data file (expected a folder of IDX files, "
                    ".csv, .npz, or 'train.csv,test.csv')")


def _from_env(label: str, classes: list[str], labels: bool = True) -> Dataset:
    """Load whatever $SYMNET_DATA points at, naming it ``label``."""
    spec = os.environ[ENV_VAR]
    try:
        ds = _load_path(spec, labels)
    except DataError as err:         # say where the path came from: no flag named it
        raise DataError(f"{err} (from ${ENV_VAR})") from None
    if ds.classes is None and ds.num_classes is not None and ds.num_classes <= len(classes):
        ds.classes = classes
    ds.name = f"{label} (${ENV_VAR}={spec})"
    return ds


def load_dataset(spec: str | os.PathLike | None = None, *, limit: int | None = None,
                 labels: bool = True) -> Dataset:
    """Load a dataset.

    ``spec`` is one of:
      None or "fashion-mnist" - $SYMNET_DATA if set, else the Debian package
                                files in /usr/share/datasets/fashion-mnist,
                                else the embedded subset;
      "mnist"                 - $SYMNET_DATA (must be set);
      "embedded"              - the Fashion-MNIST subset in runtime/datasets/;
      a folder of IDX files, a .csv file, "train.csv,test.csv", or a .npz.
    ``limit`` keeps only the first ``limit`` training examples.  ``labels=False``
    is for a model without a label input: a CSV's columns are then all features
    (unless one is called "label"), an .npz needs only x (or x_train and x_test),
    and y_train and y_test are None where the data holds no labels.
    """
    spec = None if spec is None else os.fspath(spec)
    if spec in (None, "", "fashion-mnist"):
        if os.environ.get(ENV_VAR):
            ds = _from_env("fashion-mnist", FASHION_CLASSES, labels)
        elif DEBIAN_DIR.is_dir():
            ds = load_idx_folder(DEBIAN_DIR, f"fashion-mnist ({DEBIAN_DIR})", FASHION_CLASSES)
        else:
            ds = load_embedded()
    elif spec == "mnist":
        if not os.environ.get(ENV_VAR):
            raise DataError(f"mnist: set ${ENV_VAR} to a folder holding the MNIST IDX files "
                            "(train-images-idx3-ubyte.gz, ...)")
        ds = _from_env("mnist", DIGIT_CLASSES, labels)
    elif spec == "embedded":
        ds = load_embedded()
    else:
        ds = _load_path(spec, labels)
    return _limit(_same_shapes(ds), limit)


def _same_shapes(ds: Dataset) -> Dataset:
    """Refuse test examples shaped unlike the training ones: caught here, the message
    can say which split is which."""
    train, test = list(ds.x_train.shape[1:]), list(ds.x_test.shape[1:])
    if len(ds.x_train) and len(ds.x_test) and train != test:
        raise DataError(f"{ds.name}: test examples are shaped {test}, training examples {train}")
    return ds


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return ds
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    y_train = None if ds.y_train is None else ds.y_train[:limit].copy()
    return replace(ds, x_train=ds.x_train[:limit].copy(), y_train=y_train)


# --------------------------------------------------------------- batches

def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
            rng: np.random.Generator | int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield contiguous (xb, yb) mini-batches covering every example once.

    With ``shuffle`` the order is a permutation drawn from ``rng`` (a
    Generator, or a seed).  The last batch may be smaller than
    ``batch_size``; callers that need full batches can skip it.
    """
    if len(x) != len(y):
        raise DataError(f"batches: {len(x)} inputs but {len(y)} labels")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    order = None
    if shuffle:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = gen.permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        yield np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx])


# ------------------------------------------------------------------- PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _png_chunks(data: bytes, path):
    """Yield (type, body) for each chunk up to IEND, checking lengths and CRCs."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(crc) != 4:
            break
        if zlib.crc32(ctype + body) != int.from_bytes(crc, "big"):
            raise DataError(f"{path}: PNG chunk {ctype.decode('latin-1')!r} has a bad CRC")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos += 12 + length
    raise DataError(f"{path}: truncated PNG (no IEND chunk)")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _unfilter_row(ftype: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one row's filter.  None/Sub/Up vectorise; Average and Paeth depend
    on the byte just decoded, so they run byte by byte (fine for small images)."""
    if ftype == 0:
        return line
    if ftype == 1:   # Sub: x + left  ==  running sum per channel, mod 256
        return np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
    if ftype == 2:   # Up: x + above
        return line + prev
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        c = up[i - bpp] if i >= bpp else 0
        pred = (a + up[i]) >> 1 if ftype == 3 else _paeth(a, up[i], c)
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def read_png(path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG to uint8 [height, width, channels].

    Channels: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; palette images come back
    as RGB.  All five row filters are supported.
    """
    data = _read_file(path)
    if not data.startswith(_PNG_SIGNATURE):
        raise DataError(f"{path}: not a PNG file")
    ihdr, palette, idat = None, None, []
    for ctype, body in _png_chunks(data, path):
        if ctype == b"IHDR" and len(body) == 13:
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"PLTE":
            palette = np.frombuffer(body[:len(body) // 3 * 3], np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(body)
    if ihdr is None:
        raise DataError(f"{path}: PNG has no valid IHDR chunk")
    width, height, depth, color, _, _, interlace = ihdr
    if depth != 8 or color not in _PNG_CHANNELS:
        raise DataError(f"{path}: unsupported PNG ({depth}-bit, colour type {color}); "
                        "only 8-bit gray, gray+alpha, RGB, RGBA and palette images")
    if interlace:
        raise DataError(f"{path}: interlaced PNG is not supported")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        raise DataError(f"{path}: corrupt PNG image data") from None
    bpp = _PNG_CHANNELS[color]
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise DataError(f"{path}: PNG image data has {len(raw)} bytes, "
                        f"expected {height * (stride + 1)} for {width}x{height}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for r in range(height):
        if rows[r, 0] > 4:
            raise DataError(f"{path}: bad PNG filter type {rows[r, 0]} in row {r}")
        out[r] = prev = _unfilter_row(int(rows[r, 0]), rows[r, 1:], prev, bpp)
    pixels = out.reshape(height, width, bpp)
    if color == 3:
        if palette is None or (pixels.size and pixels.max() >= len(palette)):
            raise DataError(f"{path}: PNG palette missing or too short")
        pixels = palette[pixels[..., 0]]
    return pixels


def _to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, c] -> float32 [h, w] in [0, 1].  Alpha composites over
    black (the Fashion-MNIST background); RGB uses ITU-R 601 luma weights."""
    v = np.divide(pixels, np.float32(255), dtype=np.float32)
    if v.shape[-1] in (2, 4):
        v = v[..., :-1] * v[..., -1:]
    if v.shape[-1] == 3:
        return v @ np.array([0.299, 0.587, 0.114], np.float32)
    return v[..., 0]


def load_image(path) -> np.ndarray:
    """Load a model input for ``symnet run --input``.

    * PNG -> grayscale float32 [height, width] in [0, 1];
    * .npy -> the stored array as float32 (uint8 scaled by 1/255).
    The type is detected from the file's first bytes.  Shape it for a model
    with ``fit_to_shape(img[None], input_shape)``.
    """
    data = _read_file(path)
    if data.startswith(_PNG_SIGNATURE):
        return _to_gray(read_png(path))
    if data.startswith(b"\x93NUMPY"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: unreadable .npy array ({_oneline(err)})") from None
        return _to_float(arr, path)
    raise DataError(f"{path}: unsupported input (expected a .png image or a .npy array)")


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + ctype + body
            + struct.pack(">I", zlib.crc32(ctype + body)))


def save_png(path, image) -> None:
    """Write ``image`` as an 8-bit PNG (atomically).

    ``image`` is [h, w] (gray) or [h, w, 3] (RGB).  Floats are read as
    [0, 1] and clipped; integers are clipped to 0..255; booleans map to 0/255.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.size == 0 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise DataError(f"{path}: cannot save an array shaped {list(a.shape)} as PNG "
                        "(need [h, w] or [h, w, 3])")
    if a.dtype == bool:
        a = a * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.round(np.clip(np.nan_to_num(a), 0, 1) * 255)
    a = np.clip(a, 0, 255).astype(np.uint8)
    height, width = a.shape[:2]
    rows = np.hstack([np.zeros((height, 1), np.uint8), a.reshape(height, -1)])  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if a.ndim == 2 else 2, 0, 0, 0)
    _atomic_write(path, _PNG_SIGNATURE + _png_chunk(b"IHDR", header)
                  + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
                  + _png_chunk(b"IEND", b""))
