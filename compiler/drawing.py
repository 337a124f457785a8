"""The computation graph as a Graphviz drawing (`symnet graph`).

`to_dot(model)` writes the DOT text itself, one node per tensor of model.graph labelled
with its name, op and shape, so no graphviz Python package is needed; `write_graph`
saves it as .dot, or as .svg/.png through Graphviz's `dot` program when installed.
With `backward=True` the gradient buffers of the backward program
(compiler.autodiff.differentiate) are drawn too, as `grad:T` nodes with an edge from
every tensor their loop nests read: the picture of what backpropagation computes from
what. Auxiliary tensors (a max pool's argmax) are left out: they are bookkeeping, not
part of the mathematics.
"""
import os
import shutil
import subprocess

from runtime.files import write_atomically

from .autodiff import differentiate
from .errors import SymnetError
from .ops import format_shape

# Node styles by kind: what a reader tells apart at a glance.
STYLES = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#cfe2ff"',
    "param": 'shape=box, style=filled, fillcolor="#ffe8a3"',
    "const": 'shape=box, style=filled, fillcolor="#e0e0e0"',
    "value": 'shape=box, style=rounded',
    "output": 'shape=box, style="rounded,bold", penwidth=2',
    "loss": 'shape=box, style="rounded,filled", fillcolor="#f8c8c8"',
    "grad": 'shape=box, style="rounded,dashed", color="#b03030", fontcolor="#b03030"',
}
FORMATS = ("dot", "svg", "png")


def to_dot(model, backward=False):
    """The model's computation graph (and, with `backward`, its gradients) as DOT text."""
    lines = [f"digraph {quote(model.name)} {{", "  rankdir=TB;",
             '  graph [fontname="Helvetica"]; node [fontname="Helvetica", fontsize=11];']
    drawn = [n for n, attrs in model.graph.nodes(data=True) if attrs["kind"] != "aux"]
    for name in drawn:
        attrs = model.graph.nodes[name]
        op = None if attrs["kind"] in ("input", "param", "const") else attrs["op"]
        label = node_label(name, attrs["shape"], op, attrs.get("dtype"))
        lines.append(f"  {quote(name)} [label={quote(label)}, "
                     f"{STYLES[style_of(model, name, attrs['kind'])]}];")
    for source, target in model.graph.edges():
        if source in drawn and target in drawn:
            lines.append(f"  {quote(source)} -> {quote(target)};")
    if backward:
        lines += backward_lines(model)
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_label(name, shape, op=None, dtype="f32"):
    """name, op (for computed tensors) and shape, one per line."""
    text = format_shape(shape) if shape else "scalar"
    if dtype == "i32":
        text += " : i32"
    return f"{name}\n{op}\n{text}" if op else f"{name}\n{text}"


def style_of(model, name, kind):
    if name == model.loss:
        return "loss"
    if name in model.outputs:
        return "output"
    return kind if kind in STYLES else "value"


def backward_lines(model):
    """Nodes `grad:T` for the backward program's buffers, edges from what they read."""
    if model.loss is None:
        raise SymnetError(f"model '{model.name}' has no loss statement, so --backward "
                          "has no gradients to draw")
    if not model.params:
        return []
    backward = differentiate(model)
    lines = ['  subgraph cluster_backward {',
             '    label="backward"; color="#b03030"; fontcolor="#b03030";']
    for name, info in backward.tensors.items():
        label = node_label(name, info.shape)
        lines.append(f"    {quote(name)} [label={quote(label)}, {STYLES['grad']}];")
    lines.append("  }")
    edges = []
    for comp in backward.comps:
        for read in comp.reads:
            if model.tensors.get(read) is not None and model.tensors[read].kind == "aux":
                continue
            edge = f"  {quote(read)} -> {quote(comp.out)} [style=dashed, color=\"#b03030\"];"
            if read != comp.out and edge not in edges:
                edges.append(edge)
    return lines + edges


def quote(text):
    """A DOT string: double quotes, with backslashes, quotes and newlines escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_graph(dot_text, path):
    """Save DOT text as `path`: .dot as it is, .svg and .png through Graphviz's `dot`."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise SymnetError(f"cannot write '{path}': the output must end in .dot, .svg or .png")
    if fmt == "dot":
        _atomic_write(path, dot_text.encode())
        return
    dot = shutil.which("dot")
    if dot is None:
        raise SymnetError(f"writing {fmt.upper()} needs Graphviz's `dot` program, which is "
                          "not installed (e.g. `apt-get install graphviz`); "
                          "`-o FILE.dot` works without it")
    result = subprocess.run([dot, f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    if result.returncode != 0:
        detail = (result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise SymnetError(f"Graphviz's dot failed on {path}: {detail}")
    _atomic_write(path, result.stdout)


def _atomic_write(path, data):
    try:
        write_atomically(path, data)
    except OSError as e:
        raise SymnetError(f"cannot write '{path}': {e.strerror or e}") from None
