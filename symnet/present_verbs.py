"""Verbs that show models to people: graph, show, export.

    symnet graph FILE [-o OUT.dot|.svg|.png] [--backward]   the computation graph
    symnet show FILE --input IMAGE -o MAPS.png                feature maps of conv layers
    symnet show FILE --boundary OUT.png --data CSV            a 2-D classifier's regions
    symnet export FILE --weights CKPT -o DIR                  a standalone C library

`show` and `export` take trained weights with --weights (a checkpoint of `symnet train
-o`); without it they use the file's initial values. `show` computes with the float64
reference evaluator (compiler/reference.py), which keeps every intermediate tensor;
`export` compiles the predict entry to machine code and links it with a generated C
wrapper (runtime/export.py).

The compiler (sympy, LLVM) is imported inside the functions that use it, so that
`symnet --help` does not wait for it (symnet/cli.py).
"""
import functools

import numpy as np

from compiler.errors import SymnetError
from runtime import checkpoint
from runtime.checkpoint import CheckpointError
from runtime.data import DataError, fit_to_shape, load_dataset, load_image
from runtime.plot import save_decision_boundary, save_feature_maps
from runtime.progress import Progress

from .cli import output_file
from .verb import Verb


def reporting(run):
    """Wrap a verb's run(args): the runtime's one-line errors become SymnetErrors."""
    @functools.wraps(run)
    def wrapped(args):
        from runtime.export import ExportError      # imports LLVM
        try:
            return run(args)
        except (CheckpointError, DataError, ExportError) as err:
            raise SymnetError(" ".join(str(err).split())) from None
    return wrapped


class Stages(Progress):
    """runtime.progress's bar counting named stages (compile, link) instead of steps:
    redrawn in place on a terminal, a plain line only when a stage is slow otherwise."""

    def __init__(self, total, label, quiet, **options):
        super().__init__(total, label, quiet=quiet, **options)
        self.stage = ""

    def __call__(self, stage):
        self.stage = stage
        self.update(0.0)

    def line(self, now=None, width=24):
        filled = int(min(self.steps / self.total, 1.0) * width)
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                f"{self.steps}/{self.total} {self.stage}")


def weights(model, path):
    """The parameters from checkpoint `path` (checked against the model), or the
    file's initial values when no checkpoint is given."""
    from compiler.native import model_hash
    if path is None:
        return dict(model.params)
    expected = {name: value.shape for name, value in model.params.items()}
    params, _ = checkpoint.load(path, expect_hash=model_hash(model), expect_params=expected)
    return params


def feature_input(model):
    """The first floating-point input: what an image or a data point feeds."""
    name = next((n for n, info in model.inputs.items() if info.dtype != "i32"), None)
    if name is None:
        raise SymnetError(f"model {model.name} has no floating-point input to feed")
    return name


def batch_inputs(model, features, x):
    """Inputs for the reference evaluator: `x` for the features, zeros for the others
    (labels are not needed to compute what a network sees, but the loss reads them)."""
    from compiler.index_ir import shape_value
    sizes = {s: len(x) for s in model.size_symbols}
    inputs = {features: x}
    for name, info in model.inputs.items():
        if name != features:
            shape = shape_value(info.shape, sizes)
            inputs[name] = np.zeros(shape, np.int32 if info.dtype == "i32" else np.float64)
    return inputs


def input_shape(model, name):
    """The declared shape of an input after its leading batch dimension (fixed sizes)."""
    from compiler.ops import format_shape
    shape = model.inputs[name].shape
    rest = shape[1:]
    if not shape or not all(isinstance(d, int) for d in rest):
        raise SymnetError(f"input '{name}' of {model.name} is {format_shape(shape)}; "
                          "this needs a batch dimension first and fixed sizes after it")
    return list(rest)


# ---- graph ---------------------------------------------------------------------------
def graph_arguments(parser):
    """symnet graph FILE [-o OUT.dot|OUT.svg|OUT.png] [--backward]"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="a .dot, .svg or .png file (SVG and PNG need Graphviz's dot); "
                             "default: DOT text on stdout")
    parser.add_argument("--backward", action="store_true",
                        help="also draw the gradient buffers grad:T of the backward pass")


def graph_command(args):
    """Draw the computation graph: tensors as nodes (name, op, shape), reads as edges."""
    from compiler.drawing import to_dot, write_graph
    from compiler.pipeline import load
    if args.output:
        output_file(args.output, "-o")
    model = load(args.file)
    dot = to_dot(model, backward=args.backward)
    if args.output is None:
        print(dot, end="")
        return 0
    write_graph(dot, args.output)
    print(f"wrote {args.output}")
    return 0


# ---- show ----------------------------------------------------------------------------
def show_arguments(parser):
    """symnet show FILE [--weights CKPT] (--input IMAGE -o MAPS.png [--tensors A,B] |
    --boundary OUT.png --data CSV)"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--weights", metavar="CKPT",
                        help="a checkpoint written by symnet train -o (default: the file's "
                             "initial weights)")
    parser.add_argument("--input", metavar="IMAGE",
                        help="a .png image or .npy array to compute the feature maps of")
    parser.add_argument("-o", "--output", metavar="MAPS.png",
                        help="where to draw the feature maps (with --input)")
    parser.add_argument("--tensors", metavar="NAME,...",
                        help="the tensors to draw (default: every convolution layer's "
                             "output, after its bias and activation)")
    parser.add_argument("--boundary", metavar="OUT.png",
                        help="draw the decision regions of a model with 2 input features")
    parser.add_argument("--data", metavar="CSV",
                        help="the points to draw with --boundary (rows x1, x2, label)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@reporting
def show_command(args):
    """Feature maps of an image (--input, -o) or decision regions (--boundary, --data)."""
    from compiler.pipeline import load
    if (args.input is None) == (args.boundary is None):
        raise SymnetError("show needs either --input IMAGE -o MAPS.png (feature maps) or "
                          "--boundary OUT.png --data CSV (decision regions)")
    for path, option in ((args.output, "-o"), (args.boundary, "--boundary")):
        if path:
            output_file(path, option, png=True)
    model = load(args.file)
    params = weights(model, args.weights)
    if args.boundary:
        if args.data is None:
            raise SymnetError("--boundary needs --data CSV: the points to draw")
        return show_boundary(model, params, args.data, args.boundary, args.quiet)
    if args.output is None:
        raise SymnetError("--input needs -o MAPS.png: where to draw the feature maps")
    tensors = args.tensors.split(",") if args.tensors else None
    maps = feature_maps(model, params, load_image(args.input), tensors, source=args.input)
    save_feature_maps(maps, args.output)
    print(f"wrote {args.output}: {', '.join(f'{n} {list(a.shape)}' for n, a in maps)}")
    return 0


def feature_maps(model, params, image, tensors=None, source="the image"):
    """[(name, array [C, H, W])]: the input, then each tensor drawn, for one image
    (read from `source`, which a misfit's message names)."""
    from compiler import reference
    from compiler.ops import format_shape
    features = feature_input(model)
    try:
        x = fit_to_shape(image[None], input_shape(model, features)).astype(np.float64)
    except DataError as err:
        raise SymnetError(f"{source}: {err}") from None
    env = reference.run_forward(model, batch_inputs(model, features, x), params)
    # Each tensor once, in the order given (`--tensors c1,c1` drew it twice); the input
    # is drawn first anyway (`--tensors x,c1` drew it twice too).
    names = (list(dict.fromkeys(t.strip() for t in tensors if t.strip() != features))
             if tensors else conv_outputs(model))
    if not names and not tensors:
        raise SymnetError(f"model {model.name} has no convolution layers; name the "
                          "tensors to draw with --tensors")
    maps = [(features, x[0])]
    for name in names:
        if name not in env or model.tensors[name].kind == "aux":
            raise SymnetError(f"'{name}' is not a tensor of {model.name}; the tensors are: "
                              f"{', '.join(t for t, i in model.tensors.items() if i.kind != 'aux')}")
        if env[name].ndim not in (3, 4) or len(env[name]) != 1:
            raise SymnetError(f"'{name}' is {format_shape(model.tensors[name].shape)}; "
                              "feature maps need a tensor shaped [N, C, H, W]")
        maps.append((name, env[name][0]))
    return maps


def conv_outputs(model):
    """Each convolution's output, followed through the elementwise steps that come
    right after it (bias, activation): c1.conv2d -> c1 for `c1 = relu(conv2d(...))`."""
    comps = {c.out: c for c in model.forward}
    outputs = []
    for comp in model.forward:
        if model.graph.nodes[comp.out]["op"] == "conv2d" and len(model.tensors[comp.out].shape) == 4:
            end = comp.out
            while True:
                following = [v for v in model.graph.successors(end)
                             if _elementwise_of(comps.get(v), end)]
                if len(following) != 1:
                    break
                end = following[0]
            if end not in outputs:
                outputs.append(end)
    return outputs


def _elementwise_of(comp, tensor):
    """Whether `comp` computes each element from the same element of `tensor`."""
    return comp is not None and comp.reduce is None and any(
        a.tensor == tensor and tuple(a.index) == tuple(comp.index)
        for a in comp.accesses.values())


def show_boundary(model, params, data_path, out, quiet):
    """Colour the plane by the class the model predicts; draw the data on top."""
    from compiler.ops import format_shape
    features = feature_input(model)
    if input_shape(model, features) != [2]:
        raise SymnetError(f"--boundary needs a model whose input has 2 features; "
                          f"'{features}' is {format_shape(model.inputs[features].shape)}")
    if not model.outputs:
        raise SymnetError(f"model {model.name} has no output to classify with")
    data = load_dataset(data_path)
    points = np.concatenate([data.x_train, data.x_test])
    if points[0].size != 2:            # a reshape would pair up unrelated values
        raise SymnetError(f"--boundary needs points of 2 features (x1, x2); {data_path} has "
                          f"{points[0].size} per example (shape {list(points.shape)})")
    points = points.reshape(-1, 2)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():                      # the plot's axes would span infinity
        raise SymnetError(f"{data_path}: point {int(bad.argmax())} has a coordinate that is "
                          "inf or nan")
    labels = np.concatenate([data.y_train, data.y_test])
    bar = Stages(1, "show", quiet)
    bar("classifying the plane")
    save_decision_boundary(out, lambda xy: predicted_classes(model, params, features, xy),
                           points, labels)
    bar.close()
    print(f"wrote {out}: the regions of {model.name}'s output '{model.outputs[0]}' "
          f"and {len(points)} points of {data_path}")
    return 0


def predicted_classes(model, params, features, xy):
    """Classes from the first output: argmax of [N, K], else a [N] or [N, 1] value > 0.5
    (a step's 0/1 or a sigmoid's probability)."""
    from compiler import reference
    output = reference.forward(model, batch_inputs(model, features, xy), params)[model.outputs[0]]
    output = output.reshape(len(xy), -1)
    if output.shape[1] > 1:
        return output.argmax(axis=1)
    return (output[:, 0] > 0.5).astype(int)


# ---- export --------------------------------------------------------------------------
def export_arguments(parser):
    """symnet export FILE [--weights CKPT] -o DIR"""
    parser.add_argument("file", help="the .nn model file")
    parser.add_argument("--weights", metavar="CKPT",
                        help="a checkpoint written by symnet train -o (default: the file's "
                             "initial weights)")
    parser.add_argument("-o", "--output", metavar="DIR", required=True,
                        help="the folder for libMODEL.so, MODEL.o, MODEL.h and example.c")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@reporting
def export_command(args):
    """Compile the predict entry and link it with the weights into a C library."""
    from compiler.native import compile_ir
    from compiler.pipeline import load
    from runtime.export import export_library
    model = load(args.file)
    params = weights(model, args.weights)
    bar = Stages(4, "export", args.quiet)
    bar("generating LLVM IR")
    ir_text, spec, kernels, _ = compile_ir(model)
    written = export_library(ir_text, spec, params, args.output,
                             predict_buffers(kernels["predict"]), progress=bar)
    bar.close()
    print(f"exported {model.name} to {args.output}: {', '.join(written)}")
    if args.weights is None and model.params:
        print("note: without --weights the library holds the model's initial (untrained) weights")
    return 0


def predict_buffers(kernels):
    """The buffers the predict entry's loop nests read or write."""
    return list(dict.fromkeys(t for kernel in kernels for nest in kernel.nests for t in nest.buffers))


VERBS = {
    "graph": Verb("draw the computation graph (DOT, or SVG/PNG with Graphviz)",
                  graph_arguments, graph_command),
    "show": Verb("draw feature maps of an image, or a classifier's decision regions",
                 show_arguments, show_command),
    "export": Verb("export a trained model as a C library (.so, .o, header, example)",
                   export_arguments, export_command),
}
