"""Random valid .nn models, for testing the compiler on programs nobody wrote by hand.

`random_model(seed, smooth=False)` returns a RandomModel: the .nn text of a chain of
ops whose shapes are tracked here (so every model is valid by construction) and
inputs for it. The generator knows each op's shape rule, not its values: the
oracle for values is compiler.reference, so a wrong shape rule here shows up as a
SymnetError (a generator bug or a checker bug, both worth a look), never as a
silently wrong comparison.

With `smooth=True` only ops with continuous derivatives are used (no relu, abs,
max, maxpool, ...), so finite differences can check the derived gradients without
stepping over a kink. With `wide=True` widths, channels and image sides are drawn
from wider ranges (1..40 units, 1..7 channels, 3..13 pixels): rows that are not a
multiple of the vector width or of a register tile. Without it, a seed makes the
model it always made (the random draws are the same, only their ranges differ).

With `rich=True` the menus grow to the rest of the language (docs/language.md): every
elementwise builtin (step, sign, log, sqrt, leaky_relu and elu with their defaults or a
positional alpha), fns calling fns, maxout, dense and conv2d with init= and bias=false,
conv2d with any stride and padding (integer, "valid", TensorFlow's asymmetric "same")
and with given [Cout, Cin, kh, kw] or [kh, kw] kernels, pools whose windows overlap or
leave gaps, reductions to a scalar and over negative axes, [N, 1] against [F]
broadcasting, vector @ matrix, 3-D, 1-D ([N]) and transposed tensors, reshape with -1,
onehot of an i32 input, a second fed input, scalar and literal params, ops with index
arithmetic (zero padding), max(k: ...) and transposed outputs, soft, one-hot and
clamped targets, weight decay on a layer's parameter, a non-scalar loss, and a `train`
statement with sgd, momentum or adam. Then the forms added later: inputs [N, D] with a
named size D bound when data arrives (RandomModel.inputs draws a new D at each call; two
inputs may share it) and used as a number, i32 inputs (counts 0..K-1) as operands of f32
arithmetic, tensor-valued exponents (`(1.5 + sigmoid(h)) ^ p`), several layers in one
statement (`dense(tanh(dense(h, 3)), 4)`, conv2d of conv2d, dense of a convolution;
later statements and the weight-decay loss read their parameters by name, `h3_2.W`),
reductions of reductions and inside max/min (`max(sum(h, axis=1) / F, mean(h, axis=1))`,
`sum(h, axis=0) / N`), op bodies nesting one reduction in another, and `output x` of an
input (f32, i32 or [N, D]). Rich models draw differently (the menus are longer), so
`rich=False` keeps the old models seed for seed; each extension of the rich menus changes
the rich models of a seed (the seeds of an old rich failure no longer reproduce it: keep
its text).

Shapes are tuples whose first entry is the string "N" for batched tensors.
"""
from dataclasses import dataclass, field
import random

import numpy as np

SMOOTH_ACTIVATIONS = ["sigmoid({})", "tanh({})", "exp(0.25 * ({}))", "({}) ^ 2", "swish({})",
                      "-({})"]
KINKED_ACTIVATIONS = ["relu({})", "leaky_relu({}, alpha=0.1)", "elu({}, alpha=0.5)",
                      "abs({})", "max({}, 0.1)", "min({}, 0.3)"]
USER_FUNCTIONS = "fn swish(z) = z * sigmoid(z)\nfn gate(a, b) = a * sigmoid(b)\n"
# rich=True: the other builtins, and fns that call fns or pass a positional argument
RICH_FUNCTIONS = ("fn softplus(z) = log(1 + exp(z))\nfn bump(z) = swish(z) + 0.1 * tanh(z)\n"
                  "fn softsign(z) = z / (1 + abs(z))\nfn lrelu(z) = leaky_relu(z, 0.2)\n"
                  "fn hard(z) = min(max(z, -1), 1)\n")
RICH_SMOOTH = ["softplus({0})", "bump({0})", "sqrt(1 + ({0}) ^ 2)", "({0}) / (1 + ({0}) ^ 2)",
               "-({0}) ^ 2", "(1.5 + sigmoid({0})) ^ 1.5", "log(1.5 + tanh({0}))"]
RICH_KINKED = ["step({0}) * ({0})", "sign({0}) * sqrt(abs({0}) + 0.01)", "leaky_relu({0})",
               "elu({0})", "leaky_relu({0}, 0.2)", "log(abs({0}) + 0.5)", "softsign({0})",
               "lrelu({0})", "hard({0})", "relu(-({0}))"]


def conv_side(side, size, stride, pad):
    """An output side of a convolution or pool: pad is an int, '"valid"' or '"same"'
    (TensorFlow's: ceil(side / stride) whatever the window, the padding split unevenly
    when it is odd)."""
    if pad == '"same"':
        return -(-side // stride)
    pad = 0 if pad == '"valid"' else int(pad)
    return (side + 2 * pad - size) // stride + 1


@dataclass
class RandomModel:
    """A generated model: its source, the seed, and how to make inputs for it."""
    seed: int
    text: str
    input_shapes: dict                 # name -> shape with "N"
    label_classes: dict = field(default_factory=dict)   # i32 input -> class count
    unit_interval: set = field(default_factory=set)     # f32 inputs drawn from [0, 1]
    sizes: dict = field(default_factory=dict)           # named size but N -> (low, high)

    def inputs(self, batch, seed=0):
        """Inputs for batch size `batch`: normal features, valid labels and targets."""
        rng = np.random.default_rng(seed)
        bound = {size: int(rng.integers(low, high + 1)) for size, (low, high) in self.sizes.items()}
        out = {}
        for name, shape in self.input_shapes.items():
            dims = tuple(batch if d == "N" else bound.get(d, d) for d in shape)
            if name in self.label_classes:
                out[name] = rng.integers(0, self.label_classes[name], dims).astype(np.int32)
            elif name in self.unit_interval:
                out[name] = rng.uniform(0.0, 1.0, dims)
            else:
                out[name] = rng.normal(0.0, 1.0, dims)
        return out


RICH_FLAT = ["r_maxout", "r_dense_options", "r_scalar_reduction", "r_column_broadcast",
             "r_vector_matrix", "r_three_d", "r_transposed", "r_op_padded", "r_op_rows",
             "r_op_transposed", "r_second_input", "r_max_min", "r_scalar_literal", "r_onehot",
             "r_flat_reshape", "r_copy_output", "r_named_size", "r_i32_arithmetic",
             "r_tensor_power", "r_layers", "r_layer_param", "r_nested_reduction", "r_op_nested"]
RICH_IMAGE = ["r_conv_options", "r_conv_kernel", "r_pool_options", "r_image_reduction",
              "r_image_softmax", "r_image_broadcast", "r_image_transposed", "r_image_op",
              "r_image_maxout", "r_image_layers", "r_image_nested_reduction", "r_image_power"]


class _Generator:
    """Appends statements to `lines` while tracking every tensor's shape."""

    def __init__(self, seed, smooth, wide=False, rich=False):
        self.rng = random.Random(seed)
        self.smooth = smooth
        self.wide = wide
        self.rich = rich
        self.lines = []
        self.pool = []                 # (name, shape) of tensors the model has computed
        self.count = 0
        self.input_shapes = {}
        self.label_classes, self.unit_interval = {}, set()
        self.sizes = {}                # named sizes other than N -> (low, high) when fed
        self.layer_params = []         # (name, shape) of parameters layers created
        self.pending_layers = []       # (k, "W" or "b", shape): the next statement's kth layer

    # ---- names and declarations -----------------------------------------------------
    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def param(self, shape, init=None):
        name = self.fresh("p")
        init = init or self.rng.choice(["glorot", "normal(0, 0.5)", "uniform(-1, 1)"])
        dims = f"[{', '.join(map(str, shape))}]" if shape else ""
        self.lines.append(f"param {name}{dims} ~ {init}")
        return name

    def statement(self, expr, shape):
        name = self.fresh("h")
        self.lines.append(f"{name} = {expr}")
        for k, suffix, param_shape in self.pending_layers:     # h.W, h_2.W, ...
            self.layer_params.append((f"{name}{'' if k == 1 else f'_{k}'}.{suffix}", param_shape))
        self.pending_layers = []
        self.pool.append((name, shape))
        return name, shape

    def input(self, name, shape, dtype="f32"):
        dims = ", ".join(map(str, shape))
        self.lines.append(f"input {name}[{dims}]" + (" : i32" if dtype == "i32" else ""))
        self.input_shapes[name] = shape
        self.pool.append((name, shape))

    def draw(self, low, high, wide_low, wide_high):
        """randint over [low, high], or over the wide range: one draw either way."""
        return self.rng.randint(wide_low, wide_high) if self.wide else self.rng.randint(low, high)

    # ---- elementwise pieces -------------------------------------------------------------
    def activation(self, expr, once=False):
        """An elementwise function of expr; with once=True, one that writes expr once
        (a layer written twice is two layers, which would rename the ones after it)."""
        choices = SMOOTH_ACTIVATIONS + ([] if self.smooth else KINKED_ACTIVATIONS)
        if self.rich:
            choices = choices + RICH_SMOOTH + ([] if self.smooth else RICH_KINKED)
        if once:
            choices = [c for c in choices if c.count("{") == 1]
        return self.rng.choice(choices).format(expr)

    def same_shape(self, shape, exclude):
        """Another tensor of exactly `shape`, if the model has one."""
        others = [n for n, s in self.pool if s == shape and n != exclude]
        return self.rng.choice(others) if others else None

    def binary(self, expr, shape):
        """expr (+ - * /) something broadcastable: a parameter or another tensor."""
        op = self.rng.choice("+-*/")
        trailing = (1,) + shape[2:] if len(shape) > 2 else (1,)
        other_shape = self.rng.choice([(), shape[-1:], trailing])
        if len(shape) == 4 and self.rng.random() < 0.5:
            other_shape = (shape[1], 1, 1)            # per-channel, broadcast over H, W
        if other_shape == ():
            other = str(round(self.rng.uniform(0.5, 2), 2))
        else:
            other = self.param(other_shape)
        same = self.same_shape(shape, None)
        if same and self.rng.random() < 0.4:
            other = same
        if op == "/":                  # keep denominators away from zero
            return f"({expr}) / (1.5 + sigmoid({other}))"
        if op == "*" and self.rng.random() < 0.5:
            return f"gate({expr}, {other})"
        return f"({expr}) {op} {other}"

    # ---- steps on [N, F] ---------------------------------------------------------------
    def step_flat(self, name, shape):
        F = shape[1]
        units = self.draw(2, 5, 1, 40)
        pick = self.rng.randrange(12 + (len(RICH_FLAT) if self.rich else 0))
        if pick >= 12:
            return getattr(self, RICH_FLAT[pick - 12])(name, shape, units)
        if pick == 0:
            bias = "" if self.rng.random() < 0.7 else ", bias=false"
            return f"dense({name}, {units}{bias})", ("N", units)
        if pick == 1:
            W = self.param((F, units))
            return f"{name} @ {W}", ("N", units)
        if pick == 2:
            kind = self.rng.choice(["sum", "mean"])
            return f"reshape({kind}({name}, axis=1), [N, 1])", ("N", 1)
        if pick == 3:
            kind = self.rng.choice(["sum", "mean"])
            return f"({name}) - {kind}({name}, axis=0)", shape      # couples the batch
        if pick == 4:
            fn = self.rng.choice(["softmax({})", "log_softmax({})", "softmax({}, axis=1)",
                                  "log_softmax({}, axis=0)"])
            return fn.format(name), shape
        if pick == 5:
            P = self.param((units, F))
            return f"transpose({P} @ transpose({name}))", ("N", units)
        if pick == 6 and F % 2 == 0:
            return f"flatten(reshape({name}, [N, 2, {F // 2}]))", shape
        if pick == 7:
            return self.user_op(name, shape, units)
        if pick == 8:
            other = self.same_shape(shape, name)
            if other:
                return f"gate({name}, {other}) + {name}", shape
        if pick == 9:
            w = self.param((F,))
            return f"reshape({name} @ {w}, [N, 1])", ("N", 1)
        if pick == 10:
            return self.binary(name, shape), shape
        return self.activation(name), shape

    def user_op(self, name, shape, units):
        F = shape[1]
        op = self.fresh("op")
        if self.rng.random() < 0.5:
            W = self.param((F, units))
            self.lines.append(f"op {op}(A, B)[n, j] = sum(i: A[n, i] * B[i, j])")
            return f"{op}({name}, {W})", ("N", units)
        w = self.param((F,))
        reducer = "" if self.smooth else " + max(k: A[n, k])"
        self.lines.append(f"op {op}(A, w)[n, i] = A[n, i] * w[i]" + reducer)
        return f"{op}({name}, {w})", shape

    # ---- steps on [N, C, H, W] ---------------------------------------------------------
    def step_image(self, name, shape):
        _, C, H, W = shape
        pick = self.rng.randrange(8 + (len(RICH_IMAGE) if self.rich else 0))
        if pick >= 8:
            return getattr(self, RICH_IMAGE[pick - 8])(name, shape)
        if pick == 0:
            size = self.rng.randint(1, min(3, H, W))
            filters = self.draw(1, 3, 1, 7)
            pad = self.rng.choice(['"valid"', '"same"', "1"] if size > 1 else ['"valid"'])
            stride = self.rng.choice([1, 1, 2])
            Ho, Wo = conv_side(H, size, stride, pad), conv_side(W, size, stride, pad)
            if Ho < 1 or Wo < 1:
                return self.activation(name), shape
            return (f"conv2d({name}, filters={filters}, size={size}, stride={stride}, pad={pad})",
                    ("N", filters, Ho, Wo))
        if pick == 1 and H >= 2 and W >= 2:
            kind = "avgpool" if self.smooth else self.rng.choice(["avgpool", "maxpool"])
            if self.rng.random() < 0.3:          # overlapping windows
                return f"{kind}({name}, 2, stride=1)", ("N", C, H - 1, W - 1)
            return f"{kind}({name}, 2)", ("N", C, H // 2, W // 2)
        if pick == 2 and H >= 2 and W >= 2:
            K = self.param((2, C, 2, 2))
            return f"conv2d({name}, {K})", ("N", 2, H - 1, W - 1)
        if pick == 3 and H >= 2 and W >= 2:
            edge = self.fresh("edge")
            self.lines.append(f"const {edge}[2, 2] = [[1, -1], [0.5, 0.25]]")
            return f"conv2d({name}, {edge})", ("N", C, H - 1, W - 1)
        if pick == 4:
            kind = self.rng.choice(["sum", "mean"])
            return f"reshape({kind}({name}, axis=1), [N, 1, {H}, {W}])", ("N", 1, H, W)
        if pick == 5:
            return self.binary(name, shape), shape
        if pick == 6:
            return f"({name}) - mean({name}, axis=0)", shape        # over the batch
        return self.activation(name), shape

    # ---- rich=True: the rest of the language --------------------------------------------
    def r_maxout(self, name, shape, units):
        if self.smooth:
            return self.activation(name), shape
        return f"maxout({name}, {units}, pieces={self.rng.randint(1, 3)})", ("N", units)

    def r_dense_options(self, name, shape, units):
        init = self.rng.choice(["glorot", "he", "zeros", "normal(0, 0.3)", "uniform(-0.5, 0.5)"])
        bias = self.rng.choice(["", ", bias=false", ", bias=true"])
        return f"dense({name}, {units}{bias}, init={init})", ("N", units)

    def r_scalar_reduction(self, name, shape, units):
        return self.rng.choice([f"({name}) - mean({name})", f"({name}) / (1 + sum(({name}) ^ 2))",
                                f"({name}) - 0.5 * sum({name}) / {shape[1]}"]), shape

    def r_column_broadcast(self, name, shape, units):
        F = shape[1]
        kind = self.rng.choice(["sum", "mean"])
        axis = self.rng.choice(["1", "-1"])
        column = f"reshape({kind}({name}, axis={axis}), [N, 1])"
        if self.rng.random() < 0.5:
            return f"{column} * {self.param((F,))} + ({name})", shape      # [N, 1] x [F]
        return f"({name}) - {column}", shape

    def r_vector_matrix(self, name, shape, units):
        F, V = shape[1], self.rng.randint(1, 4)
        v, M, W = self.param((V,)), self.param((V, units)), self.param((F, units))
        return f"{name} @ {W} + {v} @ {M}", ("N", units)

    def r_three_d(self, name, shape, units):
        F = shape[1]
        a = self.rng.choice([d for d in range(1, F + 1) if F % d == 0])
        b = F // a
        three = f"reshape({name}, [N, {a}, {self.rng.choice([b, -1])}])"
        pick = self.rng.randrange(4)
        if pick == 0:
            fn = self.rng.choice(["softmax", "log_softmax"])
            return f"reshape({fn}({three}, axis={self.rng.choice([1, -2, 2, -1])}), [N, {F}])", shape
        if pick == 1:
            return f"sum({three}, axis={self.rng.choice([2, -1])})", ("N", a)
        if pick == 2:
            return f"mean({three}, axis={self.rng.choice([1, -2])})", ("N", b)
        return f"flatten(transpose({self.param((b, a, 1))} * transpose({three})))", shape

    def r_transposed(self, name, shape, units):
        F = shape[1]
        if self.rng.random() < 0.5:
            fn = self.rng.choice(["softmax", "log_softmax"])      # over the batch
            return f"transpose({fn}(transpose({name}), axis=-1))", shape
        return f"transpose(transpose({name}) * {self.param((F, 1))})", shape

    def r_op_padded(self, name, shape, units):
        op = self.fresh("op")
        size = self.rng.randint(1, 3)
        K = self.param((size,))
        self.lines.append(f"op {op}(A, K)[n, i] = A[n, i] + sum(k: A[n, i + k - {size // 2}] * K[k])")
        return f"{op}({name}, {K})", shape

    def r_op_rows(self, name, shape, units):
        """An op to [N]: scalar params on a 1-D tensor, reshaped back to [N, 1]."""
        op = self.fresh("op")
        if self.smooth:
            self.lines.append(f"op {op}(A)[n] = log(sum(j: exp(A[n, j])))")
        else:
            self.lines.append(f"op {op}(A)[n] = max(j: A[n, j]) - 0.5 * sum(j: A[n, j])")
        a, b = self.fresh("a"), self.fresh("b")
        self.lines.append(f"param {a} = {round(self.rng.uniform(-1, 1), 2)}")
        self.lines.append(f"param {b} ~ {self.rng.choice(['zeros', 'ones', 'normal(0, 1)'])}")
        return f"reshape({a} * {op}({name}) + {b}, [N, 1])", ("N", 1)

    def r_op_transposed(self, name, shape, units):
        op = self.fresh("op")
        other = self.same_shape(shape, None)
        if other:
            self.lines.append(f"op {op}(A, B)[i, n] = A[n, i] * B[n, i]")
        else:
            other = self.param(shape[1:])
            self.lines.append(f"op {op}(A, B)[i, n] = A[n, i] * B[i] + A[n, i]")
        return f"transpose({op}({name}, {other}))", shape

    def r_second_input(self, name, shape, units):
        u = self.fresh("u")
        self.input(u, shape)
        op = self.rng.choice(["+", "*", "-"])
        return f"({name}) {op} {u}", shape

    def r_max_min(self, name, shape, units):
        other = self.same_shape(shape, name) or self.param(shape[1:])
        if self.smooth:
            return f"gate({name}, {other})", shape
        return f"{self.rng.choice(['max', 'min'])}({name}, {other})", shape

    def r_scalar_literal(self, name, shape, units):
        F = shape[1]
        a = self.fresh("a")
        self.lines.append(f"param {a} = {round(self.rng.uniform(-1.5, 1.5), 2)}")
        w = self.fresh("w")
        values = ", ".join(str(round(self.rng.uniform(-1, 1), 2)) for _ in range(F))
        if self.rng.random() < 0.5:
            self.lines.append(f"param {w}[{F}] = [{values}]")
        else:
            self.lines.append(f"const {w}[{F}] = [{values}]")
        return f"{a} * ({name}) + {w}", shape

    def r_onehot(self, name, shape, units):
        F = shape[1]
        c = self.fresh("c")
        self.input(c, ("N",), "i32")
        self.label_classes[c] = F
        self.pool.pop()               # an i32 input is no operand for arithmetic
        return f"({name}) + onehot({c}, {F})", shape

    def r_flat_reshape(self, name, shape, units):
        F = shape[1]
        fn = self.activation("reshape({}, [-1])".format(name))
        return f"reshape({fn}, [N, {self.rng.choice([F, -1])}])", shape

    def r_copy_output(self, name, shape, units):
        out = self.fresh("o")
        self.lines.append(f"output {out} = {name}")
        return self.activation(out), shape

    def r_named_size(self, name, shape, units):
        """An input [N, D] with D a named size bound when data arrives (a new value at
        each call), reduced over D to [N, 1]; D also appears as a number."""
        shared = [s for s in self.sizes if self.rng.random() < 0.5]
        D = shared[0] if shared else self.fresh("D")
        self.sizes[D] = (1, 9)
        v = self.fresh("v")
        self.input(v, ("N", D))
        if self.rng.random() < 0.25:
            self.lines.append(f"output {v}")
        partner = [n for n, s in self.pool if s == ("N", D) and n != v]
        reduced = [f"sum(tanh({v}), axis=1) / {D}", f"1 + mean(sigmoid({v}), axis=-1)",
                   f"log(sum(exp({v}), axis=1)) / 4", f"sum(softmax({v}) * {v}, axis=1)",
                   f"sum(transpose({v}), axis=0) / ({D} + 1)", f"mean(log_softmax({v}, axis=1), axis=1) / {D}"]
        if partner:
            reduced.append(f"mean({v} * {partner[0]}, axis=1)")
        if not self.smooth:
            reduced += [f"mean(relu({v}), axis=1)", f"sum(max({v}, 0.5) - abs({v}), axis=-1) / {D}"]
        column = f"reshape({self.rng.choice(reduced)}, [N, 1])"
        op = self.rng.choice(["+", "-", "*"])
        if self.rng.random() < 0.2:
            return f"({name}) {op} {column} * {D} / ({D} + 2)", shape
        return f"({name}) {op} {column}", shape

    def r_i32_arithmetic(self, name, shape, units):
        """An i32 input (small counts 0..K-1) as an operand of f32 arithmetic."""
        F = shape[1]
        c = self.fresh("c")
        full = self.rng.random() < 0.5
        self.input(c, ("N", F) if full else ("N",), "i32")
        self.label_classes[c] = self.rng.randint(1, 4)
        if not full:
            self.pool.pop()            # [N] is no operand the chain can use as it is
        if self.rng.random() < 0.25:
            self.lines.append(f"output {c}")
        col = c if full else f"reshape({c}, [N, 1])"
        forms = [f"({name}) * (1 + {col})", f"({name}) + 0.5 * {col}", f"({name}) / (1 + {col})",
                 f"({name}) - {col} ^ 2 / 4", f"({name}) * sigmoid({col} - 1)", f"({name}) + {col} / 2",
                 f"({name}) - {col} * {col} / 3", f"({name}) + (-{col} + 1) * 0.3",
                 f"({name}) * ({col} + {self.param((F,))})", f"({name}) + sum({c}) / (N * {F if full else 1})",
                 f"({name}) * (2 + tanh({col}))"]
        if not self.smooth:
            forms += [f"max({name}, {col} - 1)", f"({name}) * step({col} - 0.5)",
                      f"({name}) + abs({col} - 1)", f"min({col}, {name})"]
        return self.rng.choice(forms), shape

    def r_tensor_power(self, name, shape, units):
        """a ^ b with a tensor exponent (the base kept positive)."""
        F = shape[1]
        pick = self.rng.randrange(5)
        if pick == 0:
            return f"(1.5 + sigmoid({name})) ^ {self.param((F,), 'uniform(0.5, 2)')}", shape
        if pick == 1:
            other = self.same_shape(shape, name) or self.param((F,))
            return f"(1 + ({name}) ^ 2) ^ (0.5 * tanh({other}))", shape
        if pick == 2:
            return f"{self.rng.choice(['2', '0.5', '1.7'])} ^ tanh({name})", shape
        if pick == 3:
            a = self.fresh("a")
            self.lines.append(f"param {a} = {round(self.rng.uniform(0.5, 2), 2)}")
            return f"(0.5 + sigmoid({name})) ^ {a}", shape
        return f"sigmoid({name}) ^ (1 + {self.param((F,))} ^ 2)", shape

    def dense_layers(self, inner, F, units, k=1):
        """dense(dense(...)) from layer k on: the expression, and the params it makes."""
        depth = self.rng.choice([2, 2, 2, 3])
        width = F
        for layer in range(k, k + depth):
            out = units if layer == k + depth - 1 else self.draw(2, 5, 1, 40)
            if not self.smooth and layer > k and self.rng.random() < 0.3:
                pieces = self.rng.randint(2, 3)
                inner = f"maxout({inner}, {out}, pieces={pieces})"
                self.pending_layers += [(layer, "W", (width, out, pieces)), (layer, "b", (out, pieces))]
            else:
                bias = self.rng.random() < 0.7
                inner = f"dense({inner}, {out}{'' if bias else ', bias=false'})"
                self.pending_layers.append((layer, "W", (width, out)))
                if bias:
                    self.pending_layers.append((layer, "b", (out,)))
            if layer < k + depth - 1 and self.rng.random() < 0.5:
                inner = self.activation(inner, once=True)
            width = out
        return inner

    def r_layers(self, name, shape, units):
        """Several layers in one statement: h.W, h_2.W, h_3.W."""
        return self.dense_layers(name, shape[1], units), ("N", units)

    def r_layer_param(self, name, shape, units):
        """A parameter a layer of an earlier statement made, read by name."""
        F = shape[1]
        if not self.layer_params:
            return self.r_layers(name, shape, units)
        P, param_shape = self.rng.choice(self.layer_params)
        if param_shape == (F,):
            return f"({name}) + {P}", shape
        if len(param_shape) == 2 and param_shape[0] == F:
            return f"{name} @ {P}", ("N", param_shape[1])
        return f"({name}) * (1 + 0.1 * mean({P}))", shape

    def r_nested_reduction(self, name, shape, units):
        """Reductions of reductions, and reductions inside elementwise ops; N as a number."""
        F = shape[1]
        forms = [(f"({name}) / (1 + sum(mean(({name}) ^ 2, axis=0)))", shape),
                 (f"({name}) - mean(sum({name}, axis=1))", shape),
                 (f"({name}) - sum({name}, axis=0) / N", shape),
                 (f"reshape(mean(sum({name}, axis=0) / N) + sum({name}, axis=1), [N, 1])", ("N", 1)),
                 (f"({name}) * sigmoid(reshape(sum(mean({name}, axis=0) * {name}, axis=1), [N, 1]))", shape)]
        a = self.rng.choice([d for d in range(1, F + 1) if F % d == 0])
        forms.append((f"reshape(mean(sum(reshape({name}, [N, {a}, {F // a}]), axis=2), axis=-1), [N, 1])",
                      ("N", 1)))
        if not self.smooth and self.rng.random() < 0.5:
            forms = [(f"({name}) - reshape(max(sum({name}, axis=1) / {F}, mean({name}, axis=1)), [N, 1])",
                      shape),
                     (f"({name}) + max(sum(({name}) ^ 2), 1)", shape),
                     (f"min(({name}), reshape(mean(abs({name}), axis=1), [N, 1]))", shape)]
        return self.rng.choice(forms)

    def r_op_nested(self, name, shape, units):
        """ops whose bodies nest a reduction inside another (or inside an elementwise op)."""
        F = shape[1]
        op = self.fresh("op")
        pick = self.rng.randrange(3 if self.smooth else 5)
        if pick == 0:
            self.lines.append(f"op {op}(A)[n, i] = A[n, i] - log(sum(j: exp(A[n, j] - sum(k: A[n, k]) / {F})))")
            return f"{op}({name})", shape
        if pick == 1:
            m = self.rng.randint(1, 4)
            B, C = self.param((F, m)), self.param((m, units))
            self.lines.append(f"op {op}(A, B, C)[n, j] = sum(i: A[n, i] * sum(k: B[i, k] * C[k, j]))")
            return f"{op}({name}, {B}, {C})", ("N", units)
        if pick == 2:
            self.lines.append(f"op {op}(A)[n] = sum(j: A[n, j] * sum(k: A[n, k] ^ 2)) / {F * F}")
            return f"reshape({op}({name}), [N, 1])", ("N", 1)
        if pick == 3:
            self.lines.append(f"op {op}(A)[n] = max(j: A[n, j] - sum(k: A[n, k]) / {F})")
            return f"reshape({op}({name}), [N, 1])", ("N", 1)
        self.lines.append(f"op {op}(A)[n] = sum(j: max(k: A[n, j] * A[n, k])) / {F}")
        return f"reshape({op}({name}), [N, 1])", ("N", 1)

    # on [N, C, H, W]
    def r_conv_options(self, name, shape):
        _, C, H, W = shape
        size = self.rng.randint(1, min(4, H + 2, W + 2))
        stride = self.rng.randint(1, 3)
        pad = self.rng.choice(['"valid"', '"same"', "0", "1", "2"])
        Ho, Wo = conv_side(H, size, stride, pad), conv_side(W, size, stride, pad)
        if Ho < 1 or Wo < 1:
            pad, Ho, Wo = '"same"', conv_side(H, size, stride, '"same"'), conv_side(W, size, stride, '"same"')
        filters = self.draw(1, 3, 1, 7)
        extra = self.rng.choice(["", ", bias=false", ", init=glorot", ", bias=false, init=normal(0, 0.4)"])
        return (f"conv2d({name}, filters={filters}, size={size}, stride={stride}, pad={pad}{extra})",
                ("N", filters, Ho, Wo))

    def r_conv_kernel(self, name, shape):
        _, C, H, W = shape
        kh, kw = self.rng.randint(1, 3), self.rng.randint(1, 3)
        stride = self.rng.randint(1, 2)
        pad = self.rng.choice(['"same"', "1", "0"])
        if conv_side(H, kh, stride, pad) < 1 or conv_side(W, kw, stride, pad) < 1:
            pad = '"same"'
        out = ("N", None, conv_side(H, kh, stride, pad), conv_side(W, kw, stride, pad))
        if self.rng.random() < 0.5:
            cout = self.rng.randint(1, 3)
            K = self.param((cout, C, kh, kw))
            return f"conv2d({name}, {K}, stride={stride}, pad={pad})", ("N", cout) + out[2:]
        K = self.param((kh, kw))
        return f"conv2d({name}, {K}, pad={pad}, stride={stride})", ("N", C) + out[2:]

    def r_pool_options(self, name, shape):
        _, C, H, W = shape
        size = self.rng.randint(1, min(3, H, W))
        stride = self.rng.randint(1, 3)
        kind = "avgpool" if self.smooth else self.rng.choice(["avgpool", "maxpool"])
        return (f"{kind}({name}, {size}, stride={stride})",
                ("N", C, conv_side(H, size, stride, 0), conv_side(W, size, stride, 0)))

    def r_image_reduction(self, name, shape):
        _, C, H, W = shape
        kind = self.rng.choice(["sum", "mean"])
        axis = self.rng.choice([1, 2, 3, -1, -2, -3])
        kept = list(shape)
        kept[axis] = 1
        back = ", ".join(map(str, kept))
        return f"({name}) - reshape({kind}({name}, axis={axis}), [{back}]) / 2", shape

    def r_image_softmax(self, name, shape):
        fn = self.rng.choice(["softmax", "log_softmax"])
        return f"{fn}({name}, axis={self.rng.choice([1, -1, 2, -3])})", shape

    def r_image_broadcast(self, name, shape):
        _, C, H, W = shape
        other = self.param(self.rng.choice([(H, W), (W,), (1, W), (H, 1), (C, H, W), (C, 1, W)]))
        return f"({name}) {self.rng.choice('+-*')} {other}", shape

    def r_image_transposed(self, name, shape):
        _, C, H, W = shape
        return f"transpose({self.param((W, H, C, 1))} * transpose({name}))", shape

    def r_image_op(self, name, shape):
        _, C, H, W = shape
        op = self.fresh("op")
        if self.rng.random() < 0.5:
            w = self.param((C,))
            reduce = "sum" if self.smooth or self.rng.random() < 0.5 else "max"
            self.lines.append(f"op {op}(A, w)[n, y, x] = {reduce}(c: A[n, c, y, x] * w[c])")
            return f"reshape({op}({name}, {w}), [N, 1, {H}, {W}])", ("N", 1, H, W)
        dy, dx = self.rng.choice([(1, 0), (0, 1), (-1, 1), (2, -1)])
        self.lines.append(f"op {op}(A)[n, c, y, x] = A[n, c, y, x] - 0.5 * A[n, c, y + {dy}, x + {dx}]"
                          .replace("+ -", "- "))
        return f"{op}({name})", shape

    def r_image_maxout(self, name, shape):
        _, C, H, W = shape
        units = self.rng.randint(1, 5)
        if self.smooth:
            return f"dense(flatten({name}), {units}, init=glorot)", ("N", units)
        return f"maxout(flatten({name}), {units}, pieces={self.rng.randint(2, 3)})", ("N", units)

    def r_image_layers(self, name, shape):
        """conv2d(conv2d(...)), or dense layers on a convolution, in one statement."""
        _, C, H, W = shape
        size = self.rng.randint(1, min(3, H, W))
        filters = self.draw(1, 3, 1, 7)
        inner = f"conv2d({name}, filters={filters}, size={size})"
        self.pending_layers += [(1, "W", (filters, C, size, size)), (1, "b", (filters,))]
        H, W = H - size + 1, W - size + 1
        if self.rng.random() < 0.5:
            inner = self.activation(inner, once=True)
        if self.rng.random() < 0.5:
            units = self.draw(2, 5, 1, 40)
            return self.dense_layers(f"flatten({inner})", filters * H * W, units, k=2), ("N", units)
        size2, filters2 = self.rng.randint(1, 3), self.draw(1, 3, 1, 7)
        bias = self.rng.random() < 0.5
        self.pending_layers.append((2, "W", (filters2, filters, size2, size2)))
        if bias:
            self.pending_layers.append((2, "b", (filters2,)))
        return (f"conv2d({inner}, filters={filters2}, size={size2}, pad=\"same\"{'' if bias else ', bias=false'})",
                ("N", filters2, H, W))

    def r_image_nested_reduction(self, name, shape):
        _, C, H, W = shape
        forms = [f"({name}) - reshape(mean(sum({name}, axis=3), axis=2), [N, {C}, 1, 1]) / {H * W}",
                 f"({name}) / (1 + sum(mean(({name}) ^ 2, axis=0)))",
                 f"({name}) - reshape(sum(sum({name}, axis=-1), axis=1), [N, 1, {H}, 1]) / {C * W}"]
        if not self.smooth:
            forms.append(f"max({name}, reshape(mean(sum({name}, axis=1), axis=-1), [N, 1, {H}, 1]))")
        return self.rng.choice(forms), shape

    def r_image_power(self, name, shape):
        _, C, H, W = shape
        p = self.param(self.rng.choice([(C, 1, 1), (W,), (H, W)]), "uniform(0.5, 2)")
        return f"(1.2 + tanh({name})) ^ {p}", shape

    # ---- the model ----------------------------------------------------------------------
    def body(self, steps):
        image = self.rng.random() < 0.4
        if image:
            shape = ("N", self.draw(1, 2, 1, 7), self.draw(4, 6, 3, 13), self.draw(4, 6, 3, 13))
        else:
            shape = ("N", self.draw(2, 6, 1, 40))
        self.input("x", shape)
        if self.rich and self.rng.random() < 0.15:
            self.lines.append("output x")              # an input as an output
        name = "x"
        for _ in range(steps):
            if len(shape) == 4 and self.rng.random() < 0.25:
                name, shape = self.statement(f"flatten({name})", ("N", int(np.prod(shape[1:]))))
                continue
            step = self.step_image if len(shape) == 4 else self.step_flat
            expr, shape = step(name, shape)
            if self.rng.random() < 0.3:      # nest a second op inline: exercises fusion
                expr = self.activation(expr, once=bool(self.pending_layers))
            name, shape = self.statement(expr, shape)
            if self.rng.random() < 0.15:
                self.lines.append(f"output {name}")
        if len(shape) == 4:
            name, shape = self.statement(f"flatten({name})", ("N", int(np.prod(shape[1:]))))
        return name, shape

    def loss(self, name, shape):
        K = self.rng.randint(2, 4)
        kinds = ["mse", "ce_classes", "ce_onehot", "bce", "mean"]
        kind = self.rng.choice(kinds + (RICH_LOSSES if self.rich else []))
        if kind == "mse":
            self.input("t", ("N", K))
            self.lines.append(f"output pred = dense({name}, {K})")
            self.lines.append("loss mse(pred, t)")
        elif kind == "ce_classes":
            self.input("y", ("N",), "i32")
            self.label_classes["y"] = K
            self.lines.append(f"output logits = dense({name}, {K})")
            self.lines.append("loss cross_entropy(logits, y)")
        elif kind == "ce_onehot":
            self.input("t", ("N", K))
            self.unit_interval.add("t")
            self.lines.append(f"output logits = dense({name}, {K})")
            self.lines.append("loss cross_entropy(logits, t)")
        elif kind == "bce":
            self.input("t", ("N", K))
            self.unit_interval.add("t")
            self.lines.append(f"output z = dense({name}, {K})")
            self.lines.append("loss binary_cross_entropy(sigmoid(z), t)")
        elif kind == "mean":
            self.lines.append(f"loss total = mean(dense({name}, {K}) ^ 2) + sum({name}) / 10")
        elif kind == "mse_broadcast":            # a target without the batch: [K] against [N, K]
            self.input("t", (K,))
            self.lines.append(f"output pred = dense({name}, {K})")
            self.lines.append("loss mse(pred, t)" if self.rng.random() < 0.5 else "loss mse(t, pred)")
        elif kind == "ce_onehot_i32":
            self.input("y", ("N",), "i32")
            self.label_classes["y"] = K
            self.lines.append(f"output logits = dense({name}, {K})")
            self.lines.append(f"loss cross_entropy(logits, onehot(y, {K}))")
        elif kind == "ce_soft":
            self.input("t", ("N", K))
            self.lines.append(f"output logits = dense({name}, {K}, init=glorot)")
            self.lines.append("loss cross_entropy(logits, softmax(t))")
        elif kind == "bce_clamped":
            self.input("t", ("N", K))
            self.unit_interval.add("t")
            self.lines.append(f"output z = dense({name}, {K})")
            # Finite differences cannot follow log(1 - p) where p rounds near 1: 1 - p
            # keeps few digits (rich smooth seed 65: (1 + tanh(5.6)) / 2 errs 4e-4 at
            # eps 1e-6, 1e-8 at 1e-4), so smooth models keep p within [0.25, 0.75].
            p = self.rng.choice(["(2 + tanh(z)) / 4", "softmax(z) / 2 + 0.25", "sigmoid(z) * 0.5 + 0.25"]
                                if self.smooth else ["(1 + tanh(z)) / 2", "softmax(z)", "sigmoid(z) * 0.5 + 0.25"])
            self.lines.append(f"loss binary_cross_entropy({p}, t)")
        elif kind == "nonscalar":
            self.input("t", ("N", K))
            self.lines.append(f"loss (dense({name}, {K}) - t) ^ 2")
        else:                                    # weight decay on a layer's parameter
            self.input("y", ("N",), "i32")
            self.label_classes["y"] = K
            self.lines.append(f"output logits = dense({name}, {K})")
            decay = ""
            if self.layer_params:                # one a layer in a statement of the body made
                decay = f" + 0.01 * sum({self.rng.choice(self.layer_params)[0]} ^ 2)"
            self.lines.append("loss J = cross_entropy(logits, y) + 0.01 * sum(logits.W ^ 2)"
                              " + 0.1 * mean(logits.b ^ 2)" + decay)

    def train(self):
        """A train statement: its optimizer is the one train_step runs."""
        kind = self.rng.choice(["none", "sgd", "momentum", "adam"])
        batch = self.rng.choice(["", ", batch=N", ", batch=32, epochs=3", ", epochs=2, seed=5"])
        if kind == "sgd":
            self.lines.append(f"train sgd(lr=0.05{batch})")
        elif kind == "momentum":
            self.lines.append(f"train momentum(lr=0.1, beta={self.rng.choice([0.5, 0.9])}{batch})")
        elif kind == "adam":
            self.lines.append(f"train adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6{batch})")


RICH_LOSSES = ["mse_broadcast", "ce_onehot_i32", "ce_soft", "bce_clamped", "nonscalar", "decay"]


def random_model(seed, smooth=False, steps=None, wide=False, rich=False):
    """A random valid model (RandomModel) from `seed`; the same seed, the same model."""
    gen = _Generator(seed, smooth, wide, rich)
    functions = USER_FUNCTIONS + (RICH_FUNCTIONS if rich else "")
    gen.lines += [f"model random{seed}"] + functions.strip().split("\n")
    name, shape = gen.body(steps if steps is not None else gen.rng.randint(2, 6))
    gen.loss(name, shape)
    if rich:
        gen.train()
    return RandomModel(seed, "\n".join(gen.lines) + "\n", gen.input_shapes,
                       gen.label_classes, gen.unit_interval, gen.sizes)
