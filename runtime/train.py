"""The training loop: mini-batches through Program.train_step, metrics after each epoch.

    program = compiler.compile(model)
    history = train(program, load_dataset(), **settings_from_train(model.train))

A Program knows nothing of datasets, so this module maps one onto the model's inputs:
the first floating-point input holds the features (data is reshaped to its declared
shape, so [n, 1, 28, 28] images feed an x[N, 784] as well as an x[N, 1, 28, 28]); the
i32 input, or failing that the other input, holds the labels. With i32 labels and an
output shaped [N, K] the model is a classifier: accuracy is the argmax of that output.
Otherwise (linear regression, a perceptron with float targets) only the loss is reported.

Each step is one native call; Python only slices batches, checks the loss is finite,
and draws progress. Ctrl-C is deferred to the end of the current step, so the
parameters are never half-updated and the caller can checkpoint what it gets back.
Only numpy and the standard library are used: the runtime never imports sympy.
"""
import math
import signal
import threading
import time

import numpy as np

from .data import batches, fit_to_shape
from .progress import Progress, format_epoch

# The same fallbacks as compiler/defaults.py (the runtime may not import the compiler).
DEFAULT_BATCH = 64
DEFAULT_EPOCHS = 5
EVAL_BATCH = 1000


class TrainingError(Exception):
    """Training cannot go on: bad settings, data that does not fit, a non-finite loss.

    `history` holds the epochs completed before the failure; `epoch` and `step` say
    where a non-finite loss appeared (None for other failures)."""

    def __init__(self, message, *, history=None, epoch=None, step=None):
        super().__init__(message)
        self.history = history if history is not None else History()
        self.epoch, self.step = epoch, step


class History(list):
    """One dict per completed epoch; `interrupted` is True when Ctrl-C (or a callback
    raising KeyboardInterrupt) stopped training early."""
    interrupted = False


# ---- mapping a dataset onto the model's inputs --------------------------------------------
def _buffer(spec, name):
    return next(b for b in spec["buffers"] if b["name"] == name)


def input_roles(spec):
    """(features, labels) input names; labels is None for a model with one input."""
    inputs = spec["inputs"]
    floats = [n for n in inputs if _buffer(spec, n)["dtype"] != "i32"]
    ints = [n for n in inputs if _buffer(spec, n)["dtype"] == "i32"]
    if not floats or len(inputs) > 2:
        # Said by train, eval, run and show alike: the message names no one verb.
        raise TrainingError(f"model {spec['name']} has inputs {', '.join(inputs) or 'none'}; "
                            "data is fed to one floating-point input (the features) and "
                            "at most one more (the labels)")
    features = floats[0]
    others = [n for n in inputs if n != features]
    return features, (ints or others or [None])[0]


def sample_shape(spec, name):
    """The declared shape of input `name` without its leading batch dimension."""
    shape = _buffer(spec, name)["shape"]
    if not shape or shape[0] not in spec["size_names"] or \
            not all(isinstance(d, int) for d in shape[1:]):
        raise TrainingError(f"input '{name}' is declared [{', '.join(map(str, shape))}]; "
                            "training needs a batch dimension first and fixed sizes after it")
    return shape[1:]


def num_classes(spec):
    """K when the model is a classifier (i32 labels, first output [N, K]), else None."""
    _, labels = input_roles(spec)
    if labels is None or _buffer(spec, labels)["dtype"] != "i32" or not spec["outputs"]:
        return None
    shape = _buffer(spec, spec["outputs"][0])["shape"]
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def _shape_data(program, x, y):
    """(features, labels) arrays shaped for the model; labels are zeros when unused.
    Class labels are checked against K here: the native loss does not check them, and
    an out-of-range label silently drops its example's target term."""
    spec = program.spec
    features, labels = input_roles(spec)
    x = _finite(fit_to_shape(np.asarray(x), sample_shape(spec, features)), "features")
    if labels is None:
        return x, np.zeros(len(x), np.int32)
    if y is None:
        raise TrainingError(f"model {spec['name']} needs labels for input '{labels}'")
    y = np.asarray(y)
    if len(y) != len(x):
        raise TrainingError(f"{len(x)} examples but {len(y)} labels")
    check_labels(spec, y)
    if _buffer(spec, labels)["dtype"] != "i32":
        y = _finite(fit_to_shape(y, sample_shape(spec, labels)), "labels")
    return x, y


def check_labels(spec, y):
    """Refuse labels an i32 label input cannot take (2.5), and class labels outside
    0..K-1 for a classifier (nothing to check otherwise). K is the class count the
    native code checks each step (spec["classes"], known with or without an output),
    else the classifier's output width."""
    _, labels = input_roles(spec)
    y = np.asarray(y)
    if labels is not None and _buffer(spec, labels)["dtype"] == "i32" and y.dtype.kind == "f":
        fractional = y[~np.isfinite(y) | (y != np.round(y))]
        if fractional.size:     # said here, with the data's name, not at the first step
            raise TrainingError(f"input '{labels}' must hold integers (class indices), got "
                                f"{y.dtype} values such as {fractional[0]:g}")
    k = spec.get("classes", {}).get(labels) or num_classes(spec)
    if k is not None and len(y) and (y.min() < 0 or y.max() >= k):
        one_based = y.min() == 1 and y.max() == k          # numbered from 1, as in R or MATLAB
        raise TrainingError(f"labels range over {y.min():g}..{y.max():g}, but model "
                            f"{spec['name']}'s input '{labels}' takes classes 0..{k - 1}"
                            + ("; class indices count from 0: subtract 1 from the labels"
                               if one_based else ""))


def _finite(a, what):
    """Refuse inf/nan in the data up front: it would only show up later as a
    non-finite loss (or, through relu, silently as non-finite parameters)."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int(np.argwhere(~np.isfinite(a))[0][0])
        raise TrainingError(f"the {what} contain inf or nan (first in example {bad})")
    return a


def _first_nonfinite(params):
    return next((name for name, value in params.items() if not np.isfinite(value).all()), None)


def _feed(roles, xb, yb):
    features, labels = roles
    return {features: xb} if labels is None else {features: xb, labels: yb}


# ---- evaluation -----------------------------------------------------------------------------
def evaluate(program, x, y, batch=EVAL_BATCH):
    """Loss over (x, y) in chunks of `batch`; for classifiers also accuracy and the
    confusion matrix (rows: true class, columns: predicted).

    Returns {loss, accuracy, confusion, count}; accuracy and confusion are None for
    regression models, and loss too when there are no examples."""
    x, y = _shape_data(program, x, y)
    roles, k = input_roles(program.spec), num_classes(program.spec)
    confusion = np.zeros((k, k), np.int64) if k else None
    total = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        loss, outputs = program.evaluate(_feed(roles, xb, yb))
        total += loss * len(xb)                # the loss is a mean over the chunk
        if k:
            predicted = outputs[program.spec["outputs"][0]].argmax(axis=-1)
            confusion += np.bincount(yb.astype(np.int64) * k + predicted,
                                     minlength=k * k).reshape(k, k)
    n = len(x)
    return {"loss": total / n if n else None, "count": n, "confusion": confusion,
            "accuracy": float(np.trace(confusion)) / n if k and n else None}


def predict(program, x, batch=EVAL_BATCH):
    """The model's outputs for features x (any layout fit_to_shape accepts), computed
    in chunks so that a whole test set never needs one huge workspace."""
    spec = program.spec
    features, _ = input_roles(spec)
    others = [n for n in spec["entry_inputs"].get("predict", []) if n != features]
    if others:      # the forward pass would stop at "missing input": say why it is missing
        raise TrainingError(f"model {spec['name']}'s outputs read input '{others[0]}' as well "
                            f"as '{features}', and predictions are fed only the features "
                            f"('{features}'); call Program.forward with every input instead")
    x = fit_to_shape(np.asarray(x), sample_shape(spec, features))
    batched = all(_buffer(spec, o)["shape"][:1] == _buffer(spec, features)["shape"][:1]
                  for o in spec["outputs"])
    if not batched or len(x) <= batch:
        return program.forward({features: x})
    chunks = [program.forward({features: x[s:s + batch]}) for s in range(0, len(x), batch)]
    return {name: np.concatenate([c[name] for c in chunks]) for name in spec["outputs"]}


# ---- settings -------------------------------------------------------------------------------
def settings_from_train(train, **overrides):
    """Keyword arguments for train() from a model's `train` statement (Model.train) and
    command-line overrides; overrides that are None are ignored. The optimizer itself is
    chosen when compiling, so it is dropped here."""
    settings = {"epochs": DEFAULT_EPOCHS, "batch": DEFAULT_BATCH}
    settings.update({k: v for k, v in train.items() if k != "optimizer"})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("epochs", "batch", "seed"):     # the parser stores numbers as floats
        if isinstance(settings.get(key), float) and settings[key].is_integer():
            settings[key] = int(settings[key])
    return settings


def _batch_size(batch, n):
    if batch in ("full", "N"):
        return max(n, 1)
    if isinstance(batch, bool) or not isinstance(batch, (int, float, np.number)) \
            or batch != int(batch) or batch < 1:
        raise TrainingError(f"batch must be a positive integer or 'full', got {batch!r}")
    return int(batch)


# ---- the loop -------------------------------------------------------------------------------
class _DeferredInterrupt:
    """While active, the first Ctrl-C only sets `requested` (checked between steps); a
    second one interrupts at once. Signal handlers can only be installed from the main
    thread; elsewhere KeyboardInterrupt is simply caught where it lands."""
    requested = False

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def train(program, data, *, epochs=DEFAULT_EPOCHS, batch=DEFAULT_BATCH, seed=0, shuffle=True,
          callback=None, quiet=False, stream=None, eval_batch=EVAL_BATCH, **hypers):
    """Train `program` on `data` (anything with x_train, y_train, x_test, y_test; the
    test pair may be None) and return a History of per-epoch dicts:

        epoch, steps (total so far), step_loss (mean loss of the epoch's steps),
        train_loss, train_accuracy, test_loss, test_accuracy, samples_per_s, seconds

    `batch` is an int or "full"; the last batch of an epoch may be smaller. `hypers`
    (lr, beta, beta1, beta2, eps; None means keep) go to program.configure. Each epoch
    draws a new order from a generator seeded with `seed`, so a run is reproducible.
    `callback(program, history)` runs after each epoch (e.g. to save a checkpoint).

    Data holding inf/nan is refused up front. A non-finite loss raises TrainingError
    naming the epoch and step (non-finite parameters found at an epoch's end: the
    epoch), after restoring the parameters of the last completed epoch. Ctrl-C, or
    KeyboardInterrupt from the callback, ends training between steps and returns the
    history so far with `interrupted` set.
    """
    missing = [a for a in ("x_train", "y_train", "x_test", "y_test") if not hasattr(data, a)]
    if missing:
        raise TrainingError(f"data must have x_train, y_train, x_test and y_test (a "
                            f"runtime.data.Dataset); this {type(data).__name__} has no {missing[0]}")
    program.configure(**{k: v for k, v in hypers.items() if v is not None})
    if isinstance(epochs, bool) or epochs != int(epochs) or epochs < 0:
        raise TrainingError(f"epochs must be a non-negative integer, got {epochs!r}")
    epochs = int(epochs)
    x, y = _shape_data(program, data.x_train, data.y_train)
    if len(x) == 0:
        raise TrainingError("the training set is empty")
    batch = _batch_size(batch, len(x))
    roles = input_roles(program.spec)
    rng = np.random.default_rng(seed)
    steps = math.ceil(len(x) / batch)
    history = History()
    good = program.get_params()               # the last parameters known to be finite
    with _DeferredInterrupt() as interrupt:
        try:
            for epoch in range(1, epochs + 1):
                bar = Progress(steps, f"epoch {epoch}/{epochs}", stream=stream, quiet=quiet)
                started = time.perf_counter()
                try:
                    for step, (xb, yb) in enumerate(batches(x, y, batch, shuffle=shuffle,
                                                            rng=rng), 1):
                        if interrupt.requested:
                            raise KeyboardInterrupt
                        loss = program.train_step(_feed(roles, xb, yb))
                        if not math.isfinite(loss):
                            _give_up(program, good, history, epoch, step,
                                     f"loss became {loss} at epoch {epoch}, step {step} of "
                                     f"{steps}")
                        bar.update(loss, len(xb))
                finally:
                    bar.close()
                seconds = time.perf_counter() - started
                params = program.get_params()
                bad = _first_nonfinite(params)
                if bad is not None:           # possible with a finite loss: relu(nan) = 0
                    _give_up(program, good, history, epoch, None,
                             f"parameter '{bad}' became inf or nan during epoch {epoch}")
                record = _epoch_record(program, data, x, y, eval_batch, epoch,
                                       epoch * steps, bar.running_loss, seconds)
                if not np.isfinite(record["train_loss"]):   # diverged between the steps
                    _give_up(program, good, history, epoch, None,
                             f"the train loss became {record['train_loss']} at epoch {epoch}")
                good = params
                history.append(record)
                bar.message(format_epoch(history[-1], epochs))
                if callback is not None:
                    callback(program, history)
        except KeyboardInterrupt:
            history.interrupted = True
    return history


def _give_up(program, good, history, epoch, step, what):
    """Put back the last finite parameters and stop. The optimizer state is zeroed too:
    a momentum or Adam moment that saw the blow-up may itself be inf."""
    culprit = program.first_nonfinite()
    if culprit:
        what += f" (the first non-finite tensor: {culprit})"
    program.set_params(good)
    program.reset_optimizer()
    restored = f"the end of epoch {epoch - 1}" if epoch > 1 else "their values before training"
    raise TrainingError(f"{what}; parameters restored to {restored} (try a smaller learning "
                        "rate)", history=history, epoch=epoch, step=step)


def _epoch_record(program, data, x, y, eval_batch, epoch, steps, step_loss, seconds):
    """The history entry of one epoch: metrics on the whole train and test sets."""
    train_eval = evaluate(program, x, y, eval_batch)
    has_test = getattr(data, "x_test", None) is not None and len(data.x_test) > 0
    test_eval = evaluate(program, data.x_test, data.y_test, eval_batch) if has_test \
        else {"loss": None, "accuracy": None}
    return {"epoch": epoch, "steps": steps, "step_loss": step_loss,
            "train_loss": train_eval["loss"], "train_accuracy": train_eval["accuracy"],
            "test_loss": test_eval["loss"], "test_accuracy": test_eval["accuracy"],
            "samples_per_s": len(x) / seconds, "seconds": seconds}
