"""Checkpoints: a model's parameters in one .npz, plus what is needed to trust them.

The file is an ordinary NumPy archive, readable without symnet (`np.load(path)["h1.W"]`).
Besides one array per parameter it holds a JSON metadata entry: the format version,
the model's name and hash (compiler.native.model_hash: its parameter names and shapes),
each parameter's shape, and whatever the caller adds (training history, settings).

Writes are atomic: the archive goes to a temporary file in the same directory, is
flushed and fsynced, then renamed over the target with os.replace. An interrupted or
failed save therefore leaves the previous checkpoint whole, never half a file.
Loading checks everything it can and reports a problem as one CheckpointError line
that names the file. Pickles are never loaded.
"""
import json
import os

import numpy as np

from .files import write_atomically

FORMAT = "symnet-checkpoint/1"
META_KEY = "__symnet_meta__"          # cannot clash: parameter names are identifiers


class CheckpointError(Exception):
    """A checkpoint cannot be written, read, or used for this model (one-line message)."""


def _jsonable(value):
    """json.dumps fallback for the NumPy scalars and arrays a history may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def save(path, params, *, model_name, model_hash, extra=None):
    """Write `params` (name -> array) and metadata to `path` atomically.

    `extra` is any JSON-serializable dict (e.g. {"history": [...], "epoch": 3}); it comes
    back as meta["extra"]. The path is used as given (no '.npz' is appended)."""
    path = os.fspath(path)
    arrays = {name: np.asarray(value) for name, value in params.items()}
    if META_KEY in arrays:
        raise CheckpointError(f"{path}: '{META_KEY}' is reserved and cannot be a parameter name")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(f"{path}: extra metadata must be a dict, got {type(extra).__name__}")
    meta = {"format": FORMAT, "model": model_name, "model_hash": str(model_hash),
            "params": {name: list(a.shape) for name, a in arrays.items()},
            "dtypes": {name: str(a.dtype) for name, a in arrays.items()},
            "extra": extra}
    try:
        text = json.dumps(meta, default=_jsonable, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: extra metadata is not JSON serializable ({err})") from None
    arrays[META_KEY] = np.array(text)
    try:
        write_atomically(path, lambda f: np.savez(f, **arrays), durable=True)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write ({err.strerror or err})") from None


def load(path, *, expect_hash=None, expect_params=None):
    """(params, meta) from a checkpoint written by save().

    `expect_params` (name -> shape) and `expect_hash` describe the model the caller
    wants to load into; any difference raises CheckpointError naming the first
    parameter that differs (or the two hashes)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror})") from None
    if len(magic) < 4:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: "
                              f"{len(magic)} bytes)")
    if magic != b"PK\x03\x04":        # not even a zip (an .npz): a model file, an image...
        raise CheckpointError(f"{path}: not a symnet checkpoint (those are the .npz "
                              "archives `symnet train -o` writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop(META_KEY)[()]))
    except KeyError:
        raise CheckpointError(f"{path}: not a symnet checkpoint (no metadata entry)") from None
    # A damaged archive can fail inside zipfile, zlib, NumPy's header parser or json with
    # almost any exception type; all of them mean the same thing to the user.
    except Exception as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: "
                              f"{detail})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: unsupported checkpoint format {found!r} "
                              f"(this symnet reads {FORMAT!r})")
    stored = {name: list(a.shape) for name, a in arrays.items()}
    if stored != meta.get("params"):
        raise CheckpointError(f"{path}: corrupt checkpoint (its arrays do not match its "
                              "parameter list)")
    if not isinstance(meta.get("extra") or {}, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (its extra metadata is not a dict)")
    for name, a in arrays.items():      # export and show use them without a Program's checks
        if a.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: parameter '{name}' holds {a.dtype} values, "
                                  "not real numbers")
        bad = a.size - np.count_nonzero(np.isfinite(a))
        if bad:                         # eval printed loss nan; train blamed the learning rate
            raise CheckpointError(f"{path}: parameter '{name}' holds nan or inf ({bad:,} of "
                                  f"{a.size:,} values); a checkpoint's weights must be finite")
    model = meta.get("model")
    if expect_params is not None:
        _compare(path, model, stored, {n: list(s) for n, s in expect_params.items()})
    if expect_hash is not None and str(expect_hash) != meta.get("model_hash"):
        raise CheckpointError(f"{path}: checkpoint of model '{model}' (hash "
                              f"{meta.get('model_hash')}) does not fit this model (hash "
                              f"{expect_hash})")
    return arrays, meta


def _compare(path, model, stored, expected):
    for name, shape in expected.items():
        if name not in stored:
            raise CheckpointError(f"{path}: checkpoint of model '{model}' has no parameter "
                                  f"'{name}' (it has {', '.join(stored) or 'none'})")
        if stored[name] != shape:
            raise CheckpointError(f"{path}: parameter '{name}' has shape {stored[name]} in "
                                  f"the checkpoint of model '{model}', but the model expects "
                                  f"{shape}")
    extra = [name for name in stored if name not in expected]
    if extra:
        raise CheckpointError(f"{path}: checkpoint of model '{model}' has parameter "
                              f"'{extra[0]}', which this model lacks")


# ---- with a Program -------------------------------------------------------------------------
def save_program(path, program, extra=None):
    """save() for a Program: its current parameters, name and hash."""
    save(path, program.get_params(), model_name=program.spec["name"],
         model_hash=getattr(program, "model_hash", ""), extra=extra)


def restore(path, program):
    """Load a checkpoint into `program` after checking it fits; returns its metadata."""
    expected = {name: value.shape for name, value in program.get_params().items()}
    params, meta = load(path, expect_hash=getattr(program, "model_hash", None),
                        expect_params=expected)
    program.set_params(params)
    return meta
