"""Verbs that compile and run models: train, eval, run, compile, gpucheck, cache.

    symnet train FILE          train on data; one line per epoch; checkpoints with -o
    symnet eval FILE           loss, accuracy and confusion matrix of trained weights
    symnet run FILE            the outputs (and the predicted class) for an input file
    symnet compile FILE        the generated code: LLVM IR, assembly, object, PTX, loops
    symnet gpucheck FILE       the GPU kernels, run on this CPU, against the CPU backend
    symnet cache info|clear    the on-disk cache of compiled machine code

The runtime reports what the user can fix (bad data, a checkpoint of another model, a
loss that became NaN) as DataError, TrainingError, CheckpointError or ProgramError;
`reporting` turns them into SymnetErrors, so they print as one `error: ...` line with
exit status 1 like every other mistake.

The compiler (sympy, LLVM) is imported inside the functions that run the verbs, so that
`symnet --help` does not wait for it (symnet/cli.py).
"""
import argparse
import functools
import math
import os
import sys
import time

import numpy as np

from compiler.defaults import OPTIMIZERS
from compiler.errors import SymnetError
from runtime import checkpoint, files
from runtime.checkpoint import CheckpointError
from runtime.data import DataError, fit_to_shape, load_dataset, load_image
from runtime.program import ProgramError
from runtime.progress import format_epoch, format_loss, is_tty
from runtime.train import (TrainingError, check_labels, evaluate, input_roles, num_classes, predict,
                           sample_shape, settings_from_train, train)

from .cli import (format_array, format_table, model_with_loss, non_negative_int,
                  output_file, positive_int)
from .verb import Verb

RUNTIME_ERRORS = (DataError, TrainingError, CheckpointError, ProgramError)
HYPERPARAMETERS = {key for settings in OPTIMIZERS.values() for key in settings}
INTERRUPTED = 130                      # the shell's status for a command ended by Ctrl-C


def reporting(run):
    """Wrap a verb's run(args): runtime errors become one-line SymnetErrors."""
    @functools.wraps(run)
    def wrapped(args):
        try:
            return run(args)
        except RUNTIME_ERRORS as err:
            raise SymnetError(one_line(err)) from None
    return wrapped


def one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def positive_float(text):
    """argparse type: a finite number > 0 (an infinite learning rate only ends in a NaN
    loss after the first step)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def add_data_argument(parser, default="fashion-mnist"):
    parser.add_argument("--data", metavar="NAME|PATH",
                        help=f"default: {default}; fashion-mnist (the Debian package's "
                             "files, else the embedded subset), embedded, mnist, a folder "
                             "of IDX files, a .csv (features, then the label or target if "
                             "the model takes one), "
                             "train.csv,test.csv, or an .npz")


# ---- shared -------------------------------------------------------------------------
def compile_program(model, device="cpu", dtype="f32", optimizer=None, entries=None):
    """(Program, seconds). For --device cuda the CUDA runtime is imported only here, so
    a machine without it (or without cuda-bindings) gets one line saying what is missing."""
    from compiler import native
    started = time.perf_counter()
    if device == "cpu":
        program = native.compile(model, dtype=dtype, optimizer=optimizer, entries=entries)
        return program, time.perf_counter() - started
    if dtype != "f32":
        raise SymnetError("--device cuda computes in float32; drop --dtype f64")
    try:
        from runtime import cuda
    except ImportError as err:
        raise SymnetError(f"--device cuda needs the CUDA runtime (runtime/cuda.py with the "
                          f"'gpu' extra, cuda-bindings), which is missing here: {err}") from None
    try:
        program = native.compile(model, target="ptx", dtype=dtype, optimizer=optimizer)
    except cuda.CudaError as err:
        raise SymnetError(f"--device cuda: {one_line(err)}") from None
    return program, time.perf_counter() - started


def load_data(spec, program, limit=None, trained_on=None):
    """The dataset, after checking that its examples fit the model's feature input:
    the default image data cannot feed linreg's x[N], and the message says what can
    (and, for eval, what the checkpoint was trained on: `trained_on`). A model without a
    label input takes data without labels: every CSV column a feature, an .npz's x."""
    features, labels = input_roles(program.spec)
    data = load_dataset(spec, limit=limit, labels=labels is not None)
    want = sample_shape(program.spec, features)
    have = list(data.x_train.shape[1:])
    if math.prod(want) != math.prod(have):
        count = math.prod(want)
        matching = (f"a CSV of {count} feature column(s) then the target, or an .npz holding x and y"
                    if labels else f"a CSV of {count} column(s), or an .npz holding x")
        raise SymnetError(
            f"model {program.spec['name']}'s input '{features}' takes {count} value(s) per "
            f"example, but {data.name} has {math.prod(have)} ({have}); this model needs "
            f"--data naming matching columns: {matching}"
            + (f"; the checkpoint was trained on {trained_on}" if trained_on else ""))
    for part, y in (("training", data.y_train), ("test", data.y_test)):
        if labels is None or y is None:
            continue
        try:            # here, before the plan is printed and any step runs
            check_labels(program.spec, y)
        except TrainingError as err:
            raise SymnetError(f"{data.name}, {part} examples: {err}") from None
    return data


def reloadable(spec):
    """`--data` as a checkpoint keeps it, for eval to read the same data again from any
    folder: paths made absolute (each of a 'train.csv,test.csv' pair); names as given."""
    if spec in (None, "", "fashion-mnist", "mnist", "embedded"):
        return spec or None
    if "," in spec and not os.path.exists(spec):
        return ",".join(os.path.abspath(part.strip()) for part in spec.split(","))
    return os.path.abspath(spec)


def eval_data(args, extra):
    """--data, else the data the checkpoint was trained on (from a train that named it)."""
    if args.data is not None or not extra.get("data_spec"):
        return args.data
    spec = extra["data_spec"]
    paths = [] if spec in ("mnist", "embedded") else spec.split(",")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SymnetError(f"{args.weights} was trained on {extra.get('data') or spec}, but "
                          f"{missing[0]} is not there any more; name the data with --data")
    return spec


def class_names(k, *candidates):
    """The first list of exactly k names among the candidates, else None."""
    return next((list(c) for c in candidates if c is not None and len(c) == k), None)


def write_atomically(path, data):
    """Write bytes to `path` via a temporary file in the same folder and os.replace, so
    an interrupted write never leaves half a file."""
    path = os.path.abspath(path)
    try:
        files.write_atomically(path, data)
    except OSError as err:
        raise SymnetError(f"cannot write {path}: {err.strerror or err}") from None


# ---- train --------------------------------------------------------------------------
def train_arguments(parser):
    """symnet train FILE [--data D] [--epochs E] [--batch B] [--lr LR] [--optimizer O]
    [--seed S] [--weights CKPT] [-o CHECKPOINT] [-q] [--dtype f32|f64] [--limit N]
    [--device cpu|cuda]"""
    parser.add_argument("file", help="the .nn model file")
    add_data_argument(parser)
    parser.add_argument("--epochs", type=positive_int, help="passes over the training data")
    parser.add_argument("--batch", type=positive_int, help="examples per step")
    parser.add_argument("--lr", type=positive_float, help="learning rate")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS),
                        help="default: the file's train statement, else sgd")
    parser.add_argument("--seed", type=non_negative_int,
                        help="initial weights and data order (default: the file's, else 0)")
    parser.add_argument("--weights", metavar="CKPT",
                        help="start from this checkpoint's weights (of the same model) to "
                             "train further; the optimizer's state starts afresh")
    parser.add_argument("-o", "--output", metavar="CHECKPOINT",
                        help="save the weights here after every epoch (an .npz archive)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar; only the epoch lines")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32",
                        help="floating-point type of the native code (default f32)")
    parser.add_argument("--plot", metavar="PNG",
                        help="draw the loss and accuracy of each epoch into this PNG file")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="only the first N training examples (the test set stays whole)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the training steps run (default cpu)")


def training_settings(model, args):
    """(optimizer, keywords for runtime.train.train): the file's `train` statement,
    overridden by the flags. The file's hyperparameters were tuned for its optimizer;
    with another one (--optimizer) that optimizer's defaults apply instead, so an sgd
    lr=0.1 never reaches Adam. Every hyperparameter is passed explicitly, and only
    those the chosen optimizer has."""
    own = model.train.get("optimizer", "sgd")
    optimizer = args.optimizer or own
    statement = model.train if optimizer == own else \
        {k: v for k, v in model.train.items() if k not in HYPERPARAMETERS}
    settings = settings_from_train(statement, epochs=args.epochs, batch=args.batch,
                                   lr=args.lr, seed=args.seed)
    settings = {k: v for k, v in settings.items()
                if k in ("epochs", "batch", "seed") or k in OPTIMIZERS[optimizer]}
    settings.setdefault("seed", 0)
    return optimizer, {**OPTIMIZERS[optimizer], **settings}


@reporting
def train_command(args):
    """Compile, load data, train; print one line per epoch and checkpoint with -o."""
    from compiler.pipeline import load
    reads = [args.file, *(args.data or "").split(",")]    # -o may name --weights
    if args.output:
        output_file(args.output, "-o", reads=reads)
    if args.plot:
        output_file(args.plot, "--plot", png=True, reads=reads)
    model = model_with_loss(args.file, args.seed or 0,
                            consequence="so there is nothing to train")
    if not model.params:
        raise SymnetError(f"model {model.name} has no parameters to train")
    optimizer, settings = training_settings(model, args)
    if settings["seed"] != (args.seed or 0):  # a seed from the file's train statement
        model = load(args.file, seed=settings["seed"])
    program, seconds = compile_program(model, args.device, args.dtype, optimizer)
    if args.weights:                      # checked before the data is read
        checkpoint.restore(args.weights, program)
    data = load_data(args.data, program, args.limit)
    if len(data.x_train) == 0:                # before the plan, whose batch would be 0
        raise SymnetError(f"{data.name} has no training examples")
    print_plan(model, program, seconds, data, args, optimizer, settings)
    if args.weights:
        print(f"starting from the weights in {args.weights}")
    extra = {"file": args.file, "data": data.name, "data_spec": reloadable(args.data),
             "classes": data.classes,
             "optimizer": optimizer, "dtype": args.dtype, "settings": settings,
             "start": args.weights}

    def after_epoch(program, history):
        if args.quiet:                        # train() prints these lines unless quiet
            print(format_epoch(history[-1], settings["epochs"]), flush=True)
        if args.output:
            save(args.output, program, extra, history)

    try:
        history = train(program, data, callback=after_epoch, quiet=args.quiet,
                        stream=sys.stdout, **settings)
    except TrainingError as err:
        raise SymnetError(one_line(err) + what_was_kept(args.output, err.history)) from None
    if args.plot and history:
        from runtime.plot import plot_history
        plot_history(history, args.plot)
        print(f"plotted {args.plot}")
    if history.interrupted:
        return interrupted(program, extra, history, args.output)
    if args.output:
        print(f"saved {args.output}")
    return 0


def print_plan(model, program, seconds, data, args, optimizer, settings):
    """Where the data came from, how long compiling took, and the settings."""
    print(f"data: {data.name}: {len(data.x_train):,} training and {len(data.x_test):,} "
          "test examples")
    cached = getattr(getattr(program, "library", None), "from_cache", False)
    print(f"compiled {model.name} for {args.device} ({args.dtype}) in {seconds:.2f} s"
          + (" (machine code from the cache)" if cached else ""))
    hypers = ", ".join(f"{k}={v:g}" for k, v in settings.items() if k in OPTIMIZERS[optimizer])
    epochs, batch, count = settings["epochs"], settings["batch"], len(data.x_train)
    if isinstance(batch, int) and batch > count:    # a step takes at most every example
        batch = f"{count} (every training example; capped from {batch})"
    print(f"training: {epochs} epoch{'s' * (epochs != 1)}, batch {batch}, "
          f"{optimizer} ({hypers}), seed {settings['seed']}", flush=True)


def what_was_kept(path, history):
    """The end of the message of a failed run: which epoch the checkpoint holds."""
    if not path:
        return ""
    if not history:
        return f"; no checkpoint was written to {path}"
    return f"; {path} keeps epoch {len(history)}"


def save(path, program, extra, history, **more):
    checkpoint.save_program(path, program, extra={**extra, **more, "epoch": len(history),
                                                  "history": list(history)})


def interrupted(program, extra, history, path):
    """Ctrl-C: save the weights as they are (train() stops between steps, so they are
    whole) and exit with status 130."""
    where = f"after {len(history)} complete epoch(s)"
    if path:
        save(path, program, extra, history, interrupted=True)
        print(f"interrupted {where}: saved the weights to {path}", file=sys.stderr)
    else:
        print(f"interrupted {where}; nothing saved (use -o to keep the weights)",
              file=sys.stderr)
    return INTERRUPTED


# ---- eval ---------------------------------------------------------------------------
def eval_arguments(parser):
    """symnet eval FILE --weights CKPT [--data D] [--split test|train]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--weights", required=True, metavar="CKPT",
                        help="a checkpoint written by symnet train -o")
    add_data_argument(parser, default="the data the checkpoint was trained on")
    parser.add_argument("--split", choices=["test", "train"], default="test",
                        help="which part of the data (default test)")


@reporting
def eval_command(args):
    """Loss, accuracy and the confusion matrix of the checkpoint's weights."""
    model = model_with_loss(args.file, consequence="so there is nothing to evaluate")
    program, _ = compile_program(model)
    meta = checkpoint.restore(args.weights, program)
    extra = meta.get("extra") or {}
    data = load_data(eval_data(args, extra), program, trained_on=extra.get("data"))
    x, y = (data.x_test, data.y_test) if args.split == "test" else (data.x_train, data.y_train)
    if len(x) == 0:
        raise SymnetError(f"the {args.split} split of {data.name} is empty: nothing to evaluate")
    result = evaluate(program, x, y)
    print(f"{program.spec['name']} ({args.weights}) on the {args.split} split of {data.name}: "
          f"{result['count']:,} examples")
    if result["loss"] is not None:
        print(f"loss {format_loss(result['loss'])}")     # as train's epoch lines
    if result["accuracy"] is not None:
        print(f"accuracy {result['accuracy']:.2%}")
        names = class_names(len(result["confusion"]), data.classes, extra.get("classes"))
        print("confusion matrix (rows: true class, columns: predicted class):")
        print(format_confusion(result["confusion"], names))
    return 0


def format_confusion(confusion, names):
    """The matrix as a table: a row per true class, named when the names are known."""
    k = len(confusion)
    header = ("true \\ predicted",) + tuple(str(j) for j in range(k))
    rows = [(f"{i} {names[i]}" if names else str(i),) + tuple(str(n) for n in confusion[i])
            for i in range(k)]
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(k + 1)]
    return "\n".join("  " + row[0].ljust(widths[0]) + "".join(
        cell.rjust(w + 2) for cell, w in zip(row[1:], widths[1:])) for row in [header] + rows)


# ---- run ----------------------------------------------------------------------------
def run_arguments(parser):
    """symnet run FILE [--weights CKPT] --input ARRAY.npy|IMAGE.png [--top K]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--weights", metavar="CKPT",
                        help="a checkpoint written by symnet train -o (default: the "
                             "file's initial weights)")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="a .png image, or a .npy array: one example or a batch "
                             "(leading batch dimension)")
    parser.add_argument("--top", type=positive_int, default=3, metavar="K",
                        help="for a classifier, the K most likely classes (default 3)")


@reporting
def run_command(args):
    """Feed one example (or a batch) through the model and print the outputs."""
    from compiler.pipeline import load
    model = load(args.file)
    if not model.outputs:
        raise SymnetError(f"model {model.name} has no output for run to print; mark the "
                          "tensor to compute as one: `output NAME = ...`")
    program, _ = compile_program(model, entries=("predict",))
    meta = checkpoint.restore(args.weights, program) if args.weights else {}
    x, single = shape_input(load_image(args.input), program.spec, args.input)
    check_examples(x, args.input)
    outputs = predict(program, x)
    for name, value in outputs.items():
        print(f"{name} = {format_array(value[0] if single else value, indent=len(name) + 3)}")
    k = num_classes(program.spec) if model.loss else None
    if k:
        first = program.spec["outputs"][0]
        probabilities = outputs[first] if model.graph.nodes[first].get("op") == "softmax" \
            else softmax(outputs[first])
        names = class_names(k, (meta.get("extra") or {}).get("classes"))
        print_classes(probabilities, names, args.top, single)
    return 0


def shape_input(array, spec, path):
    """(batch for the feature input, whether it is a single example): an array with
    exactly one example's values is one example, else its first dimension is the batch
    (a 1-D array is a batch only of scalar examples: else it is one flattened example)."""
    features, _ = input_roles(spec)
    shape = sample_shape(spec, features)
    if array.size == math.prod(shape):
        return fit_to_shape(array.reshape(1, -1), shape), True
    if (array.ndim > 1 or not shape) and array.size == len(array) * math.prod(shape):
        return fit_to_shape(array, shape), False
    raise SymnetError(f"{path}: an array shaped {list(array.shape)} is neither one example "
                      f"of input '{features}' {shape} nor a batch of them")


def check_examples(x, path):
    """Refuse an input that would only print NaN (or nothing) with exit status 0."""
    if len(x) == 0:
        raise SymnetError(f"{path}: holds no examples")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise SymnetError(f"{path}: holds inf or nan (first in example {int(bad.argmax())})")


def softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def print_classes(probabilities, names, top, single):
    """The predicted class and its probability; for one example also the top K."""
    label = (lambda c: f"{c} {names[c]}") if names else str
    if single:
        p = probabilities[0]
        best = int(p.argmax())
        print(f"predicted class: {label(best)}, probability {p[best]:.4f}")
        order = np.argsort(-p, kind="stable")[:top]
        print(f"top {len(order)}:")
        print(format_table([(label(int(c)), f"{p[c]:.4f}") for c in order]))
        return
    for i, p in enumerate(probabilities):
        order = np.argsort(-p, kind="stable")[:top]
        print(f"example {i}: " + ", ".join(f"{label(int(c))} ({p[c]:.4f})" for c in order))


# ---- compile ------------------------------------------------------------------------
EMITS = ["llvm", "asm", "obj", "ptx", "schedule"]


def compile_arguments(parser):
    """symnet compile FILE [--emit llvm|asm|obj|ptx|schedule] [--target cpu|ptx]
    [--arch sm_80|sm_90] [--dtype f32|f64] [--optimizer O] [-O 0..3] [-o OUT]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--emit", choices=EMITS,
                        help="llvm: LLVM IR; asm: host assembly; obj: an ELF object file "
                             "(needs -o); ptx: PTX text; schedule: the loop nests "
                             "(default: llvm, or ptx with --target ptx)")
    parser.add_argument("--target", choices=["cpu", "ptx"],
                        help="the host CPU or an NVIDIA GPU (default cpu; --emit ptx implies ptx)")
    parser.add_argument("--arch", choices=["sm_80", "sm_90"],
                        help="GPU architecture for --target ptx (default sm_80)")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32",
                        help="floating-point type of the generated code (default f32)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS),
                        help="the update in train_step (default: the file's, else sgd)")
    parser.add_argument("-O", dest="opt_level", type=int, choices=range(4), metavar="0..3",
                        help="optimization level (default 2; --emit llvm shows the IR "
                             "before optimization unless -O is given)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write here instead of stdout ('-': stdout)")


@reporting
def compile_command(args):
    """Print (or write with -o) the code the compiler generates for the model."""
    from compiler import native
    from compiler.pipeline import load
    from runtime import jit
    target = args.target or ("ptx" if args.emit == "ptx" else "cpu")
    emit = args.emit or ("ptx" if target == "ptx" else "llvm")
    if emit == "ptx" and target != "ptx":
        raise SymnetError("--emit ptx needs --target ptx (or no --target)")
    if args.arch and target != "ptx":
        raise SymnetError(f"--arch {args.arch} is a GPU architecture; it needs --target ptx")
    if target == "ptx" and emit in ("asm", "obj"):
        raise SymnetError(f"--emit {emit} is host code; with --target ptx use --emit ptx, "
                          "llvm or schedule")
    if target == "ptx" and emit == "llvm" and args.opt_level:
        raise SymnetError("-O with --emit llvm optimizes for the host CPU; with --target ptx "
                          "the IR is shown before optimization (drop -O)")
    if target == "ptx" and args.dtype != "f32":
        raise SymnetError("--target ptx computes in float32; drop --dtype f64")
    to_stdout = args.output in (None, "-")      # `-o -` is standard output, as usual
    if emit == "obj" and (not args.output or to_stdout and is_tty(sys.stdout)):
        raise SymnetError("--emit obj writes a binary object file; give -o FILE")
    if not to_stdout:
        output_file(args.output, "-o", reads=[args.file])
    model = load(args.file)
    ir_text, _, kernels, emitter = native.compile_ir(model, args.optimizer, args.dtype,
                                                     target, arch=args.arch)
    level = 2 if args.opt_level is None else args.opt_level
    code = {
        "llvm": lambda: jit.optimized_ir(ir_text, level) if args.opt_level else ir_text,
        "asm": lambda: jit.emit_assembly(ir_text, level),
        "obj": lambda: jit.emit_object(ir_text, level),
        "ptx": lambda: emitter.ptx(level),
        "schedule": lambda: format_kernels(kernels, emitter.tensors, target),
    }[emit]()
    if not to_stdout:
        data = code if isinstance(code, bytes) else code.encode()
        write_atomically(args.output, data)
        print(f"wrote {args.output} ({len(data):,} bytes)")
    elif isinstance(code, bytes):       # an object file, into a pipe or a file
        sys.stdout.flush()
        sys.stdout.buffer.write(code)
    else:
        sys.stdout.write(code if code.endswith("\n") else code + "\n")
    return 0


def format_kernels(kernels, tensors, target="cpu"):
    """Every entry point's kernels as loop nests (for the GPU: its launches), under a
    heading per entry."""
    from compiler.gpu_schedule import format_gpu_schedule
    from compiler.schedule import format_schedule
    show = (lambda ks: format_gpu_schedule(ks, tensors)) if target == "ptx" else format_schedule
    return "\n\n".join(f"entry {entry}:\n{show(ks)}" for entry, ks in kernels.items())


# ---- gpucheck -----------------------------------------------------------------------
def gpucheck_arguments(parser):
    """symnet gpucheck FILE [--batch B ...] [--seed S] [--optimizer O]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--batch", type=positive_int, nargs="+", metavar="B",
                        help="batch sizes to run (default: 5 300)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random inputs (default 0)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS),
                        help="the update in train_step (default: the file's, else sgd)")


@reporting
def gpucheck_command(args):
    """Run the PTX target's kernels on this CPU (no GPU needed) and compare them with
    the CPU backend; report races and out-of-bounds accesses."""
    from compiler import gpucheck
    from compiler.pipeline import load
    args.batch = args.batch or list(gpucheck.BATCHES)    # not the parser's default: LLVM
    model = load(args.file)
    check = gpucheck.gpucheck(model, args.batch, args.seed, args.optimizer)
    comparisons, report = check.comparisons, check.report
    print(f"gpucheck of {model.name}: the PTX kernels run on this CPU ({gpucheck.GRID_SHAPE})\n"
          f"against the CPU backend; seed {args.seed}, tolerance {gpucheck.TOLERANCE:.0e}")
    rows = [("value", *(f"batch {b}" for b in args.batch), "")]
    for c in comparisons:
        verdict = "FAIL" if not c.passes() else "ok*" if c.rounding else "ok"
        rows.append((c.name, *(f"{c.errors[b]:.1e}" for b in args.batch), verdict))
    print(format_table(rows))
    judged = [(c.name, b, gpu, cpu) for c in comparisons for b, (gpu, cpu) in c.rounding.items()]
    if judged:
        print(f"  against float64 where over {gpucheck.TOLERANCE:.0e} (ok* if the GPU errs at most "
              f"{gpucheck.ROUNDING}x what the CPU does:\n  rounding, in a value that cancels)")
        for name, batch, gpu, cpu in judged:
            print(f"    {name}, batch {batch}: GPU {gpu:.1e}, CPU {cpu:.1e}")
    if check.eps_raised:
        print(f"  (Adam's steps with eps at {gpucheck.ADAM_EPS:.0%} of the largest gradient: with a tiny\n"
              "  eps, rounding noise in a near-zero gradient steps by +lr or -lr either way)")
    print(f"  {report}" if report else "  no races in shared or global memory, no out-of-bounds accesses")
    failed = [c.name for c in comparisons if not c.passes()]
    if failed or report:
        print("FAIL: " + "; ".join(([f"{len(failed)} of {len(comparisons)} values differ: "
                                     + ", ".join(failed)] if failed else []) + ([report] if report else [])))
        return 1
    print(f"ok: all {len(comparisons)} values agree")
    return 0


# ---- cache --------------------------------------------------------------------------
def cache_arguments(parser):
    """symnet cache info|clear"""
    parser.add_argument("action", choices=["info", "clear"],
                        help="info: where the cache is and what it holds; clear: empty it")


def cache_command(args):
    """The disk cache of compiled code ($SYMNET_CACHE, else ~/.cache/symnet)."""
    from runtime import jit
    folder = jit.default_cache_dir()
    if os.path.exists(folder) and not os.path.isdir(folder):   # compiling goes on uncached
        raise SymnetError(f"{folder} is not a folder, so no compiled code is cached; "
                          "point $SYMNET_CACHE at a folder")
    if args.action == "clear":
        removed = jit.clear_cache()
        print(f"removed {removed} compiled model(s) from {jit.default_cache_dir()}")
        return 0
    stats = jit.cache_stats()
    print(f"{stats['dir']}: {stats['entries']} compiled model(s), {stats['bytes']:,} bytes")
    return 0


VERBS = {
    "train": Verb("train a model on data, printing metrics per epoch",
                  train_arguments, train_command),
    "eval": Verb("loss, accuracy and confusion matrix of trained weights",
                 eval_arguments, eval_command),
    "run": Verb("run a model on an input (.png or .npy) and print its outputs",
                run_arguments, run_command),
    "compile": Verb("print the generated code: LLVM IR, assembly, object, PTX, loop nests",
                    compile_arguments, compile_command),
    "gpucheck": Verb("run the GPU kernels on this CPU and check them against the CPU backend",
                     gpucheck_arguments, gpucheck_command),
    "cache": Verb("show or clear the cache of compiled machine code",
                  cache_arguments, cache_command),
}
