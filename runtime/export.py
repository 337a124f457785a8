"""A trained model as a standalone C library (`symnet export`): no Python needed to use it.

    export_library(ir_text, spec, params, "out", buffers)  ->  out/libMODEL.so, out/MODEL.o,
                                                               out/MODEL.h, out/example.c,
                                                               out/Makefile, out/README.txt

The compiled module's `predict` entry (`void predict(i64* sizes, ptr* buffers, i64 part,
i64 parts, i64* barrier)`, see compiler/codegen/llvm.py; called here as the one part)
becomes a hidden symbol; the other entries are made internal
so the optimizer drops them. A generated C file holds the weights as constant arrays
(hexadecimal float literals, so every bit survives) and the two exported functions:

    int MODEL_forward(int64_t n, const float* input, float** outputs)
        n examples in, every output out: outputs[k] has room for n * MODEL_OUTPUT_k_SIZE
        floats (NULL: not wanted). The workspace is malloc'ed per call, so calls from
        several threads are safe. Returns 0, or -1 when memory runs out.
    int MODEL_predict(const float* input, float* output)
        one example; writes the first output (NULL: not wanted) and returns its argmax
        for a classifier (i32 labels and a first output [N, K], as `symnet run` sees one),
        0 for other models, -1 on failure.

The LLVM object and the C wrapper are linked into one relocatable object (MODEL.o, for
static linking) and a shared library. The code is optimized for this machine's CPU.
"""
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from .files import write_atomically
from .jit import emit_object
from .train import TrainingError, num_classes


class ExportError(Exception):
    """The model cannot be exported as it is, or the C toolchain failed (one line)."""


def export_library(ir_text, spec, params, out_dir, buffers, opt_level=2, progress=None):
    """Write the library files for `spec["name"]` into out_dir; returns their paths.

    `buffers` are the names of the buffers the predict entry uses; `params` the trained
    values (name -> array); `progress(stage)` is called as each stage starts."""
    report = progress or (lambda stage: None)
    cc = shutil.which("cc")
    if cc is None:
        raise ExportError("export needs a C compiler: no 'cc' on PATH")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} is a file; -o names the folder to write the library into")
    layout = Layout(spec, buffers)
    name = layout.name
    _check_replaceable(out_dir, name)
    report("compiling the model")
    entry_object = emit_object(_predict_only(ir_text, spec, f"{name}_symnet_predict"), opt_level)
    files = {f"{name}.h": header(layout), "example.c": example(layout),
             "Makefile": makefile(name), "README.txt": readme(layout)}
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {out_dir}: {err.strerror or err}") from None
    try:
        return _build(cc, name, layout, params, files, entry_object, out_dir, report)
    except BaseException:
        if created:                 # a failed export leaves no empty folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _check_replaceable(out_dir, name):
    """Refuse before anything is built to replace a file that an export did not write:
    `-o .` in a project would put the example's Makefile over the project's own."""
    marks = {f"lib{name}.so": f"{name}_symnet_predict", f"{name}.o": f"{name}_symnet_predict",
             f"{name}.h": "exported by symnet", "example.c": "/* example.c: run the exported ",
             "Makefile": makefile(name).splitlines()[0], "README.txt": "exported by symnet"}
    for filename, mark in marks.items():
        path = os.path.join(out_dir, filename)
        if not os.path.lexists(path):
            continue
        try:
            data = _read(path)
        except OSError:             # a folder, a dangling link: not an export's file either
            data = b""
        if not filename.endswith((".so", ".o")):
            data = data.split(b"\n", 1)[0]        # the generated text's first line
        if mark.encode() not in data:
            raise ExportError(f"{path} exists and symnet export did not write it; -o names "
                              "a folder for the library: choose a new one")


def _build(cc, name, layout, params, files, entry_object, out_dir, report):
    """Compile and link in a scratch folder, then copy the results into out_dir. The
    scratch files' names hold a '-', which no model's C name does: a model named
    "entry" or "wrapper" must not link its object over an input of the link."""
    with tempfile.TemporaryDirectory(prefix="symnet-export-") as work:
        for filename, text in files.items():
            _write(os.path.join(work, filename), text.encode())
        _write(os.path.join(work, "symnet-entry.o"), entry_object)
        _write(os.path.join(work, "symnet-wrapper.c"), wrapper(layout, params).encode())
        report("compiling the C wrapper")
        _run(cc, "-O2", "-fPIC", "-c", "symnet-wrapper.c", "-o", "symnet-wrapper.o", cwd=work)
        report("linking")
        _run(cc, "-r", "-o", f"{name}.o", "symnet-entry.o", "symnet-wrapper.o", cwd=work)
        _run(cc, "-shared", "-o", f"lib{name}.so", f"{name}.o", "-lm", cwd=work)
        written = {}
        for filename in [f"lib{name}.so", f"{name}.o", *files]:
            written[filename] = os.path.join(out_dir, filename)
            _write(written[filename], _read(os.path.join(work, filename)))
    return written


class Layout:
    """What the C code needs to know of the compiled model: input, outputs, buffers."""

    def __init__(self, spec, buffers):
        self.spec = spec
        self.name = c_identifier(spec["name"])
        self.macro = self.name.upper()
        self.buffers = {b["name"]: b for b in spec["buffers"]}
        self.index = {b["name"]: k for k, b in enumerate(spec["buffers"])}
        if not spec["outputs"]:
            raise ExportError(f"model {spec['name']} has no output statement: there is "
                              "nothing for the library to compute")
        inputs = spec["entry_inputs"]["predict"]
        if len(inputs) != 1 or self.buffers[inputs[0]]["dtype"] != "f32":
            raise ExportError(f"export needs a model whose outputs depend on one "
                              f"floating-point input; {spec['name']}'s depend on "
                              f"{', '.join(inputs) or 'none'}")
        self.input = inputs[0]
        self.batch = self._batch_name(self.input)
        self.input_size = self.example_size(self.input)
        self.outputs = [(o, self.example_size(o)) for o in spec["outputs"]]
        self.used = [b for b in buffers if b in self.index]
        self.constants = [b for b in self.used if self.buffers[b]["kind"] in ("param", "const")]
        self.workspace = [b for b in self.used if b not in self.constants
                          and b != self.input and b not in spec["outputs"]]
        self.classes = _classes(spec)

    def _batch_name(self, tensor):
        shape = self.buffers[tensor]["shape"]
        if not shape or not isinstance(shape[0], str) or \
                not all(isinstance(d, int) for d in shape[1:]):
            raise ExportError(f"export needs input '{tensor}' shaped [N, fixed sizes...], "
                              f"got [{', '.join(map(str, shape))}]")
        if self.spec["size_names"] != [shape[0]]:
            raise ExportError(f"export supports one symbolic size, the batch "
                              f"{shape[0]}; {self.spec['name']} has "
                              f"{', '.join(self.spec['size_names'])}")
        return shape[0]

    def example_size(self, tensor):
        """Elements per example of a tensor shaped [N, fixed sizes...]."""
        shape = self.buffers[tensor]["shape"]
        if not shape or shape[0] != self.batch or not all(isinstance(d, int) for d in shape[1:]):
            raise ExportError(f"export needs every output shaped [{self.batch}, fixed "
                              f"sizes...]; '{tensor}' is [{', '.join(map(str, shape))}]")
        return int(np.prod(shape[1:], dtype=np.int64))

    def elements(self, tensor):
        """A C expression for a buffer's element count, in terms of `n`."""
        shape = self.buffers[tensor]["shape"]
        factors = ["n" if d == self.batch else str(d) for d in shape]
        for d in shape:
            if isinstance(d, str) and d != self.batch:
                raise ExportError(f"buffer '{tensor}' has a size '{d}' that export cannot "
                                  "compute from the batch size")
        return "(size_t)" + " * ".join(["1"] + factors)


def _classes(spec):
    """K for a classifier as train, eval and run see one (a loss, i32 labels, the first
    output [N, K]), else None: an output [N, 3] alone may be three regression targets."""
    if spec["loss"] is None:
        return None
    try:
        k = num_classes(spec)
    except TrainingError:           # inputs that training could not feed: not a classifier
        return None
    return k if k and k > 1 else None


def c_identifier(name):
    """A model name as a C identifier: other characters become '_'."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    return ident if re.match(r"[A-Za-z_]", ident) else f"model_{ident}"


def _predict_only(ir_text, spec, entry_name):
    """The IR with `predict` renamed and hidden and every other function internal."""
    for entry in spec["entries"]:
        pattern = re.compile(rf'^define void @"{re.escape(entry)}"\(', re.M)
        replacement = (f'define hidden void @"{entry_name}"(' if entry == "predict"
                       else f'define internal void @"{entry}"(')
        ir_text, count = pattern.subn(replacement, ir_text)
        if count != 1:
            raise ExportError(f"cannot find the entry point {entry} in the compiled module")
    # Everything else the module defines (the runtime's worker loop, say) is internal too:
    # two exported models linked into one program must not clash.
    return re.sub(r"^define (?!internal |hidden )", "define internal ", ir_text, flags=re.M)


# ---- generated files -----------------------------------------------------------------
def header(layout):
    m, name = layout.macro, layout.name
    lines = [f"/* {name}.h: the {layout.spec['name']} model, exported by symnet. */",
             f"#ifndef {m}_H", f"#define {m}_H", "", "#include <stdint.h>", "",
             "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
             f"#define {m}_INPUT_SIZE {layout.input_size}  /* floats per example of input "
             f"'{layout.input}' */",
             f"#define {m}_OUTPUTS {len(layout.outputs)}",
             f"#define {m}_OUTPUT_SIZE {layout.outputs[0][1]}  /* floats per example of "
             f"the first output, '{layout.outputs[0][0]}' */"]
    for k, (output, size) in enumerate(layout.outputs):
        lines.append(f"#define {m}_OUTPUT_{c_identifier(output).upper()}_SIZE {size}"
                     f"  /* outputs[{k}] */")
    if layout.classes:
        lines.append(f"#define {m}_CLASSES {layout.classes}")
    lines += ["",
              "/* One example: writes the first output (unless output is NULL) and returns",
              "   its argmax for a classifier, 0 otherwise; -1 when memory runs out. */",
              f"int {name}_predict(const float* input, float* output);", "",
              "/* n examples: outputs[k] has room for n times output k's size (NULL: not",
              "   wanted). Returns 0, or -1 when memory runs out. Thread-safe. */",
              f"int {name}_forward(int64_t n, const float* input, float** outputs);", "",
              "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)


def wrapper(layout, params):
    """The C source of the exported functions, with the weights as constant arrays."""
    name, m = layout.name, layout.macro
    lines = [f'#include "{name}.h"', "#include <stdlib.h>", "",
             "/* The compiled predict entry; parts > 1 would split rows among threads. */",
             f"void {name}_symnet_predict(const int64_t* sizes, void** buffers, int64_t part,",
             "                            int64_t parts, int64_t* barrier);", ""]
    for k, tensor in enumerate(layout.constants):
        value = params.get(tensor)
        if value is None:
            value = layout.spec["consts"].get(tensor)
        lines.append(f"/* {tensor} */")
        lines.append(f"static const float constant_{k}[] = {{{float_literals(value, tensor)}}};")
    lines += ["", "#define ALIGN(bytes) (((bytes) + 63) & ~(size_t)63)", "",
              f"int {name}_forward(int64_t n, const float* input, float** outputs) {{",
              f"    void* buffers[{len(layout.spec['buffers'])}] = {{0}};",
              "    int64_t sizes[1] = {n}, barrier[16] = {0};",
              "    if (n <= 0) return 0;"]
    for k, tensor in enumerate(layout.constants):
        lines.append(f"    buffers[{layout.index[tensor]}] = (void*)constant_{k};")
    lines.append(f"    buffers[{layout.index[layout.input]}] = (void*)input;")
    scratch = [(t, layout.elements(t)) for t in layout.workspace]
    # An input marked as an output (`output x`) is copied from the caller's input.
    scratch += [(o, layout.elements(o)) for o, _ in layout.outputs if o != layout.input]
    lines.append("    size_t bytes = 0;")
    for tensor, count in scratch:
        lines.append(f"    bytes += ALIGN({count} * 4);  /* {tensor} */")
    lines += ["    char* workspace = malloc(bytes);", "    if (workspace == NULL) return -1;",
              "    size_t offset = 0;"]
    for tensor, count in scratch:
        slot = f"buffers[{layout.index[tensor]}]"
        lines.append(f"    {slot} = workspace + offset;")
        lines.append(f"    offset += ALIGN({count} * 4);")
    lines.append(f"    {name}_symnet_predict(sizes, buffers, 0, 1, barrier);")
    for k, (output, size) in enumerate(layout.outputs):
        slot = f"buffers[{layout.index[output]}]"
        lines.append(f"    if (outputs != NULL && outputs[{k}] != NULL)")
        lines.append(f"        for (int64_t i = 0; i < n * {size}; i++) "
                     f"outputs[{k}][i] = ((const float*){slot})[i];")
    lines += ["    free(workspace);", "    return 0;", "}", "",
              f"int {name}_predict(const float* input, float* output) {{",
              f"    float first[{m}_OUTPUT_SIZE];",
              f"    float* outputs[{m}_OUTPUTS] = {{first}};",
              f"    if ({name}_forward(1, input, outputs) != 0) return -1;",
              "    int best = 0;",
              f"    for (int k = 0; k < {m}_OUTPUT_SIZE; k++) {{",
              "        if (output != NULL) output[k] = first[k];",
              "        if (first[k] > first[best]) best = k;",
              "    }",
              f"    return {'best' if layout.classes else '0'};", "}", ""]
    return "\n".join(lines)


def float_literals(values, tensor):
    """Exact C float literals (hexadecimal), eight to a line."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    if not np.isfinite(flat).all():
        raise ExportError(f"parameter '{tensor}' holds inf or nan; export a checkpoint "
                          "with finite weights")
    texts = [float(v).hex() + "f" for v in flat]
    return ",\n".join(", ".join(texts[k:k + 8]) for k in range(0, len(texts), 8))


def example(layout):
    name, m = layout.name, layout.macro
    return f"""\
/* example.c: run the exported {layout.spec['name']} model on examples stored as raw
   float32 values ({m}_INPUT_SIZE per example, e.g. written by NumPy's tofile).
   Prints one line per example: the predicted class (or 0), then the first output. */
#include <stdio.h>
#include "{name}.h"

int main(int argc, char** argv) {{
    static float input[{m}_INPUT_SIZE], output[{m}_OUTPUT_SIZE];
    if (argc != 2) {{
        fprintf(stderr, "usage: %s INPUTS.f32 (raw float32, %d values per example)\\n",
                argv[0], {m}_INPUT_SIZE);
        return 2;
    }}
    FILE* file = fopen(argv[1], "rb");
    if (file == NULL) {{
        perror(argv[1]);
        return 1;
    }}
    size_t got;
    while ((got = fread(input, sizeof(float), {m}_INPUT_SIZE, file)) == {m}_INPUT_SIZE) {{
        int result = {name}_predict(input, output);
        if (result < 0) {{
            fprintf(stderr, "out of memory\\n");
            return 1;
        }}
        printf("%d", result);
        for (int k = 0; k < {m}_OUTPUT_SIZE; k++) printf(" %.9g", output[k]);
        printf("\\n");
    }}
    fclose(file);
    if (got != 0) {{    /* not a whole number of examples: not raw float32 of this size */
        fprintf(stderr, "%s: ends with %zu of the %d values of an example\\n",
                argv[1], got, {m}_INPUT_SIZE);
        return 1;
    }}
    return 0;
}}
"""


def makefile(name):
    return f"""\
# Build the example against the shared library (or, example_static, the object file).
CC ?= cc

example: example.c {name}.h lib{name}.so
\t$(CC) -O2 -o example example.c -L. -l{name} -Wl,-rpath,'$$ORIGIN'

example_static: example.c {name}.h {name}.o
\t$(CC) -O2 -o example_static example.c {name}.o -lm

# {name}.o is symnet's code, not to be rebuilt from a .c file (for a model named
# "example", make's built-in rule would compile example.c over it).
%.o: %.c
"""


def readme(layout):
    name, m = layout.name, layout.macro
    kind = (f"a classifier with {layout.classes} classes" if layout.classes
            else "a model without class outputs")
    outputs = "\n".join(f"  outputs[{k}]: '{o}', {size} floats per example"
                        for k, (o, size) in enumerate(layout.outputs))
    files = [(f"lib{name}.so", "shared library (weights included)"),
             (f"{name}.o", "the same code as one relocatable object, for static linking"),
             (f"{name}.h", "the C interface"),
             ("example.c", "reads raw float32 examples from a file and prints predictions")]
    width = max(len(file) for file, _ in files) + 3      # one column, whatever the name
    listing = "\n".join(f"  {file.ljust(width)}{what}" for file, what in files)
    return f"""\
{layout.spec['name']}, exported by symnet: {kind}.

Files
{listing}

Build and run the example
  make                 # or: cc -O2 -o example example.c -L. -l{name} -Wl,-rpath,'$ORIGIN'
  ./example inputs.f32
  make example_static  # or: cc -O2 -o example_static example.c {name}.o -lm

Interface (see {name}.h)
  int {name}_predict(const float* input, float* output);
  int {name}_forward(int64_t n, const float* input, float** outputs);
  input: '{layout.input}', {layout.input_size} floats per example ({m}_INPUT_SIZE), row-major
{outputs}

Calls from several threads are safe (each call allocates its own workspace).

The machine code is optimized for the CPU it was exported on; export again on the
machine that runs it if that CPU is older.
"""


# ---- files and processes -------------------------------------------------------------
def _run(*command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        # The line that says what went wrong, not gcc's closing "compilation terminated."
        lines = result.stderr.strip().splitlines() or ["unknown error"]
        detail = next((line for line in lines if "error" in line), lines[-1])
        raise ExportError(f"{command[0]} failed while exporting: {detail}")


def _write(path, data):
    try:
        write_atomically(path, data, mode=0o777 if path.endswith(".so") else 0o666)
    except OSError as err:
        raise ExportError(f"cannot write {path}: {err.strerror or err}") from None


def _read(path):
    with open(path, "rb") as f:
        return f.read()
