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

    def inputs(self, batch, seed=0):
        """Inputs for batch size `batch`: normal features, valid labels and targets."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self.input_shapes.items():
            dims = tuple(batch if d == "N" else d for d in shape)
            if name in self.label_classes:
                out[name] = rng.integers(0, self.label_classes[name], dims).astype(np.int32)
            elif name in self.unit_interval:
                out[name] = rng.uniform(0.0, 1.0, dims)
            else:
                out[name] = rng.normal(0.0, 1.0, dims)
        return out


class _Generator:
    """Appends statements to `lines` while tracking every tensor's shape."""

    def __init__(self, seed, smooth, wide=False):
        self.rng = random.Random(seed)
        self.smooth = smooth
        self.wide = wide
        self.lines = []
        self.pool = []                 # (name, shape) of tensors the model has computed
        self.count = 0
        self.input_shapes = {}
        self.label_classes, self.unit_interval = {}, set()

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
    def activation(self, expr):
        choices = SMOOTH_ACTIVATIONS + ([] if self.smooth else KINKED_ACTIVATIONS)
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
        pick = self.rng.randrange(12)
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
        pick = self.rng.randrange(8)
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

    # ---- the model ----------------------------------------------------------------------
    def body(self, steps):
        image = self.rng.random() < 0.4
        if image:
            shape = ("N", self.draw(1, 2, 1, 7), self.draw(4, 6, 3, 13), self.draw(4, 6, 3, 13))
        else:
            shape = ("N", self.draw(2, 6, 1, 40))
        self.input("x", shape)
        name = "x"
        for _ in range(steps):
            if len(shape) == 4 and self.rng.random() < 0.25:
                name, shape = self.statement(f"flatten({name})", ("N", int(np.prod(shape[1:]))))
                continue
            step = self.step_image if len(shape) == 4 else self.step_flat
            expr, shape = step(name, shape)
            if self.rng.random() < 0.3:      # nest a second op inline: exercises fusion
                expr = self.activation(expr)
            name, shape = self.statement(expr, shape)
            if self.rng.random() < 0.15:
                self.lines.append(f"output {name}")
        if len(shape) == 4:
            name, shape = self.statement(f"flatten({name})", ("N", int(np.prod(shape[1:]))))
        return name, shape

    def loss(self, name, shape):
        K = self.rng.randint(2, 4)
        kind = self.rng.choice(["mse", "ce_classes", "ce_onehot", "bce", "mean"])
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
        else:
            self.lines.append(f"loss total = mean(dense({name}, {K}) ^ 2) + sum({name}) / 10")


def random_model(seed, smooth=False, steps=None, wide=False):
    """A random valid model (RandomModel) from `seed`; the same seed, the same model."""
    gen = _Generator(seed, smooth, wide)
    gen.lines += [f"model random{seed}"] + USER_FUNCTIONS.strip().split("\n")
    name, shape = gen.body(steps if steps is not None else gen.rng.randint(2, 6))
    gen.loss(name, shape)
    return RandomModel(seed, "\n".join(gen.lines) + "\n", gen.input_shapes,
                       gen.label_classes, gen.unit_interval)
