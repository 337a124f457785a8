"""The `symnet` command line: one small function per verb.

    symnet check FILE        the model's tensors, shapes and parameter count (or: summary)
    symnet grad FILE         the derived gradients as formulas (and values, with --at)
    symnet gradcheck FILE    derived gradients against finite differences

A verb is one entry of VERBS: a help line, a function adding its arguments and a
function running it, which returns the exit status. Mistakes in the user's files or
flags are SymnetErrors: printed as `FILE:LINE:COL: error: ...`, exit status 1, and so
are argparse's usage errors (one line, not the usage block). Anything else is a bug of
symnet: one `internal error:` line, exit status 2 (`--traceback` shows the traceback).

The compiler (sympy, networkx, LLVM: about a second) is imported by the verbs when they
run, not here: `symnet --help`, `--version` and usage errors answer at once.
"""
import argparse
import difflib
import importlib
import io
import os
import re
import sys
import tempfile

import numpy as np

from compiler.defaults import FORMULA_FORMATS
from compiler.errors import Loc, SymnetError
from runtime import files

from .verb import Verb

GRADCHECK_TOLERANCE = 1e-6


def main(argv=None):
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:          # the verb's own parser says it: its name, and its --help
            args.verb_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        refuse_empty_values(args)
        load_compiler()
    except ImportError as e:     # a dependency missing or too old (llvmlite): say which
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:    # a Ctrl-C while the compiler loads
        return 130
    try:
        return args.verb.run(args)
    except SymnetError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`symnet compile ... | head`): stop quietly, as cat does;
        # stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        return 1
    except Exception as e:
        if args.traceback:
            raise
        message = " ".join(str(e).split())
        print(f"internal error: {type(e).__name__}: {message} "
              "(rerun with --traceback for details)", file=sys.stderr)
        return 2


def load_compiler():
    """Import the compiler's dependencies once the command line is parsed (not before:
    `--help` needs none of them), so that a missing or too old one is one line before
    any verb starts: sympy and networkx (compiler.pipeline), llvmlite (compiler.codegen
    checks its version, runtime.jit loads its LLVM)."""
    for name in ("compiler.pipeline", "compiler.codegen", "runtime.jit"):
        importlib.import_module(name)


def all_verbs():
    """The verbs of this module, then those of the runtime and presentation modules."""
    from . import present_verbs, run_verbs
    return {**VERBS, **run_verbs.VERBS, **present_verbs.VERBS}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1, like any other mistake
    in the command line (argparse prints the whole usage block and exits with 2)."""

    def error(self, message):
        wrong = re.match(r"argument command: invalid choice: '(.*?)' \(choose from", message)
        if wrong:
            verbs = list(all_verbs())
            aliases = [a for verb in all_verbs().values() for a in verb.aliases]
            close = difflib.get_close_matches(wrong.group(1), verbs + aliases, n=1)
            message = (f"unknown command '{wrong.group(1)}'"
                       + (f"; did you mean '{close[0]}'?" if close else "")
                       + f" (the commands are {', '.join(verbs)})")
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(1)


def refuse_empty_values(args):
    """An empty value (`-o ''`, `--data "$UNSET"`) is a mistake, not a request for the
    default: `-o ''` trained and saved nothing, `--data ''` read Fashion-MNIST."""
    for action in args.verb_parser._actions:
        if getattr(args, action.dest, None) == "":
            name = "/".join(action.option_strings) or action.dest
            args.verb_parser.error(f"argument {name}: the value is empty")


def build_parser():
    """The argparse parser: one subparser per entry of VERBS, each with --traceback."""
    from compiler.version import VERSION
    parser = Parser(prog="symnet", description="Compile neural-network definitions (.nn files).")
    parser.add_argument("--version", action="version", version=VERSION.replace("-", " ", 1))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of internal errors")
    verbs = parser.add_subparsers(title="commands", dest="command", required=True)
    for name, verb in all_verbs().items():
        sub = verbs.add_parser(name, aliases=verb.aliases, help=verb.help,
                               description=verb.help, parents=[common])
        verb.arguments(sub)
        sub.set_defaults(verb=verb, verb_parser=sub)
    return parser


# ---- check --------------------------------------------------------------------------
def check_arguments(parser):
    """symnet check FILE"""
    parser.add_argument("file", help="the .nn model file")


def check_command(args):
    """Parse and check the model; print its summary table."""
    from compiler.pipeline import load
    print(load(args.file).summary())
    return 0


# ---- grad ---------------------------------------------------------------------------
def grad_arguments(parser):
    """symnet grad FILE [--wrt NAME] [--format F] [--at NAME=VALUE,...] [--no-simplify]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--chain", action="store_true",
                        help="each gradient as the chain rule's product of local derivatives")
    parser.add_argument("--wrt", metavar="NAME", help="only the gradient for this parameter")
    parser.add_argument("--format", choices=FORMULA_FORMATS, default="text",
                        help="how to print formulas (default: text)")
    parser.add_argument("--at", metavar="NAME=VALUE,...",
                        help="also evaluate the loss and gradients here: every input "
                             "(as a batch of one) and any parameters to override")
    parser.add_argument("--no-simplify", action="store_true",
                        help="the raw derivation, without textbook simplifications")


def grad_command(args):
    """Print the gradient of the loss w.r.t. each parameter, the deltas, and values."""
    from compiler import chain, printing
    model = model_with_loss(args.file)
    simplify = not args.no_simplify
    # Check the --at values before printing anything, so a mistake is the only output.
    values = parse_assignments(args.at) if args.at else None
    point = evaluation_point(model, values) if args.at else None
    if args.chain:
        print(chain.render_chains(model, wrt=args.wrt, fmt=args.format, simplify=simplify))
        if args.at:
            print_values(model, values, point, [args.wrt] if args.wrt else list(model.params),
                         simplify, args.format)
        return 0
    derivation = printing.derive(model, wrt=args.wrt, simplify=simplify)
    comment = "% " if args.format == "latex" else ""
    if not derivation.gradients:
        print(f"{comment}{model.name} has no parameters, so there are no gradients")
        return 0
    print(f"{comment}gradients of the loss J of {model.name}:")
    for formula in derivation.gradients.values():
        print_formula(formula, args.format)
    if derivation.deltas:
        print(f"{comment}where, in backward order, δT = dJ/dT for the named tensors T:")
        for formula in derivation.deltas:
            print_formula(formula, args.format)
    formulas = list(derivation.gradients.values()) + derivation.deltas
    for read in printing.outside_reads(model, formulas, args.format):
        print(f"{comment}  (reads outside a tensor are 0: {read})")
    if args.at:
        print_values(model, values, point, list(derivation.gradients), simplify, args.format)
    return 0


def print_formula(formula, fmt):
    """One equation, indented (unicode drawings line by line); LaTeX unindented."""
    indent = "" if fmt == "latex" else "  "
    text = formula.render(fmt)
    print("\n".join(indent + line for line in text.split("\n")))


def parse_assignments(text):
    """'a=0.4,b=0.1' -> {'a': 0.4, 'b': 0.1}."""
    values = {}
    for item in text.split(","):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name:
            raise SymnetError(f"--at expects NAME=VALUE pairs separated by commas, got '{item}'")
        if name in values:
            raise SymnetError(f"--at gives '{name}' twice; give each name one value")
        try:
            values[name] = float(value)
        except ValueError:
            raise SymnetError(f"--at: '{value}' is not a number (in '{item}')") from None
        if not np.isfinite(values[name]):      # 1e400 became inf, and J = inf, status 0
            raise SymnetError(f"--at: '{value}' is not a finite number (in '{item}')")
    return values


def evaluation_point(model, values):
    """Inputs (each a batch of one, filled with its value) and parameter overrides."""
    from compiler import reference
    from compiler.index_ir import shape_value
    for name in values:
        if name not in model.inputs and name not in model.params:
            raise SymnetError(f"--at: '{name}' is neither an input nor a parameter of "
                              f"{model.name} (inputs: {', '.join(model.inputs)}; "
                              f"parameters: {', '.join(model.params)})")
    missing = [name for name in model.inputs if name not in values]
    if missing:
        raise SymnetError(f"--at needs a value for every input; missing: {', '.join(missing)}")
    for name in (n for n, info in model.inputs.items() if info.dtype == "i32"):
        if not values[name].is_integer():
            raise SymnetError(f"--at: input '{name}' holds class indices (i32), "
                              f"got {format_number(values[name])}")
        # As in training: an out-of-range class silently drops the loss's target term.
        k = reference.classes_of(model, name)       # None: not a class label (a count)
        if k is not None and not 0 <= values[name] < k:
            raise SymnetError(f"--at: input '{name}' is a class of 0..{k - 1}, "
                              f"got {format_number(values[name])}")
    sizes = {s: 1 for s in model.size_symbols}
    inputs = {name: np.full(shape_value(info.shape, sizes), values[name],
                            dtype=np.int32 if info.dtype == "i32" else np.float64)
              for name, info in model.inputs.items()}
    params = {name: np.full(np.shape(model.params[name]), values[name])
              for name in model.params if name in values}
    return inputs, params


def print_values(model, values, point, wrt, simplify, fmt="text"):
    """The loss and the gradients at the --at point, from the float64 reference
    (with --format latex as `%` comments, like the headings: no equations)."""
    from compiler import reference
    inputs, params = point
    with np.errstate(all="ignore"):     # an overflow is said below, not warned about
        loss, grads = reference.value_and_grad(model, inputs, params, simplify=simplify)
    where = ", ".join(f"{name}={format_number(v)}" for name, v in values.items())
    lines = [f"at {where} (inputs as a batch of one):", f"  J = {format_number(loss)}"]
    lines += [f"  dJ/d{name} = {format_array(grads[name], indent=len(name) + 9)}"
              for name in wrt]
    shown = [loss] + [grads[name] for name in wrt]
    if not all(np.all(np.isfinite(v)) for v in shown):
        lines.append("  (inf or nan: the values overflow float64 at this point)")
    comment = "% " if fmt == "latex" else ""
    print("\n".join(comment + line for line in "\n".join(lines).split("\n")))


def format_number(value):
    """Up to 6 significant digits: 0.0196, -0.042, 2.30259."""
    return f"{float(value):.6g}"


def format_array(array, indent=0):
    """A number, or an array whose continuation lines are indented by `indent`."""
    array = np.asarray(array)
    if array.ndim == 0:
        return format_number(array)
    text = np.array2string(array, separator=", ", formatter={"float_kind": format_number},
                           threshold=64)
    return text.replace("\n", "\n" + " " * indent)


# ---- gradcheck ----------------------------------------------------------------------
def gradcheck_arguments(parser):
    """symnet gradcheck FILE [--seed S] [--batch B] [--samples K]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random inputs and sample (default 0)")
    parser.add_argument("--batch", type=positive_int, default=3, help="batch size N (default 3)")
    parser.add_argument("--samples", type=positive_int, default=24,
                        help="entries checked per parameter (default 24)")


def gradcheck_command(args):
    """Compare each parameter's derived gradient with central differences."""
    from compiler import gradcheck
    model = model_with_loss(args.file)
    checks, _ = gradcheck(model, seed=args.seed, batch=args.batch, samples=args.samples)
    rows = [("param", "shape", "checked", "max rel error", "")]
    for c in checks:
        shape = "[" + ", ".join(map(str, c.shape)) + "]" if c.shape else "scalar"
        rows.append((c.name, shape, str(c.checked), f"{c.rel_error:.2e}",
                     "ok" if passes(c) else "FAIL"))
    print(f"gradcheck of {model.name}: batch {args.batch}, seed {args.seed}, "
          f"tolerance {GRADCHECK_TOLERANCE:g}")
    print(format_table(rows))
    # 0 against 0 passes while testing nothing (the perceptron at seed 0: every random
    # point classified right): say so rather than let "ok" stand for a real check.
    zero = [c.name for c in checks if c.checked and c.max_abs_grad == 0]
    if zero:
        print(f"note: the checked gradient entries of {', '.join(zero)} are all 0 at this "
              "point, so nothing was compared there; try another --seed")
    failed = [c.name for c in checks if not passes(c)]
    if failed:
        print(f"FAIL: {len(failed)} of {len(checks)} parameters: {', '.join(failed)}")
        return 1
    print({0: "ok: no parameters to check", 1: "ok: 1 parameter"}.get(
        len(checks), f"ok: all {len(checks)} parameters"))
    return 0


def passes(check):
    """Within tolerance (a NaN error fails)."""
    return check.rel_error <= GRADCHECK_TOLERANCE


def positive_int(text):
    """argparse type: an integer >= 1."""
    return whole_number(text, 1)


def non_negative_int(text):
    """argparse type: an integer >= 0 (NumPy refuses negative seeds)."""
    return whole_number(text, 0)


def whole_number(text, least):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def format_table(rows):
    """Left-aligned columns, indented by two spaces."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


# ---- shared -------------------------------------------------------------------------
def output_file(path, option, png=False, reads=()):
    """Check an output path before any work starts (a training run must not fail at its
    end): a .png name for a PNG, not a folder, none of the files the command `reads`
    (`-o mlp.nn` replaced the model's source with a checkpoint), and a folder for it
    that exists (it is made here: `-o out/model.ptx` in a fresh clone) and can be
    written."""
    def refuse(why):
        raise SymnetError(f"cannot write '{path}': {why}")
    for source in reads:
        if os.path.isfile(path) and os.path.isfile(source) and os.path.samefile(path, source):
            refuse(f"the command reads that file, and {option} would replace it; "
                   "give another name")
    if path == "-":
        refuse(f"{option} names a file to write, and '-' would make one called '-'; "
               "give a file name")
    if png and not path.lower().endswith(".png"):
        refuse(f"{option} draws a PNG image; the name must end in .png")
    if os.path.isdir(path):
        refuse(f"it is a folder; {option} needs a file name")
    if path.endswith(("/", os.sep)):    # abspath drops the slash: `-o mlp.nn/` wrote mlp.nn
        refuse(f"a name ending in '/' is a folder's; {option} needs a file name")
    folder = os.path.dirname(os.path.abspath(path))
    blocker = files.file_in_the_way(folder)
    if blocker:
        refuse(f"'{blocker}' is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        refuse(f"cannot create its folder: {err.strerror or err}")
    try:       # a real file, not os.access, which says yes to root even for /proc
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".symnet-probe-"):
            pass
    except OSError as err:
        refuse(f"its folder {folder} is not writable ({err.strerror or err})")


def model_with_loss(path, seed=0, consequence="so it has no gradient"):
    """Load a model that must have a loss (grad, gradcheck, train, eval); the error
    says what its absence means for the command."""
    from compiler.pipeline import load
    model = load(path, seed=seed)
    if model.loss is None:
        where = model.loc or Loc(path, 1, 1, model.source.split("\n")[0])
        raise SymnetError(f"model '{model.name}' has no loss statement, {consequence}; "
                          "add one such as `loss mse(prediction, target)`", where)
    return model


VERBS = {
    "check": Verb("check a model and print its tensors and parameter count",
                  check_arguments, check_command, aliases=("summary",)),
    "grad": Verb("print the derived gradients of the loss as formulas",
                 grad_arguments, grad_command),
    "gradcheck": Verb("check the derived gradients against finite differences",
                      gradcheck_arguments, gradcheck_command),
}
