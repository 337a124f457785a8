"""Op semantics against an independent oracle, PyTorch.

The other tests compare the native code with compiler.reference, symnet's own NumPy
interpreter of the same loop nests: an op defined wrongly (a padding convention, a
pooling edge, a mean's denominator, Adam's epsilon) would pass them all. Here each
builtin, loss and optimizer is written a second time in PyTorch from its documented
definition (docs/language.md, docs/training.md), given symnet's parameters
(Program.get_params), and the outputs, loss, every gradient and several train_steps
are compared in float64 to ~1e-12. Where symnet's documented convention differs from
PyTorch's default (max(a, b)'s tie, binary_cross_entropy's clamp), the oracle spells
out symnet's, and the test's docstring says so. Skipped where torch is not installed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from compiler import compile, parse     # noqa: E402 (after the skip: sympy is slow to load)

RTOL = {"f64": 1e-12, "f32": 2e-6}


# ---- helpers --------------------------------------------------------------------------
def program_of(source, name, dtype="f64", entries=("evaluate", "value_and_grad"), opt_level=0):
    """A model's native code. What an op computes does not depend on LLVM's
    optimization level, and -O0 compiles these many-output models three times faster;
    tests/test_ops.py and tests/test_conv.py hold -O2's code to the reference."""
    return compile(parse(source, f"{name}.nn", seed=1), dtype=dtype, entries=entries,
                   opt_level=opt_level)


def as_torch(arrays, grad=False):
    """float64 tensors (int64 for class indices) of NumPy arrays."""
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "iu":
            out[name] = torch.tensor(value, dtype=torch.int64)
        else:
            out[name] = torch.tensor(value, dtype=torch.float64, requires_grad=grad)
    return out


def assert_close(got, expected, what, rtol=RTOL["f64"]):
    """Equal to rtol of the largest magnitude in `expected` (so entries that cancel to
    near zero are held to the same absolute error as their neighbours)."""
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1e-300)
    error = np.abs(got - expected).max(initial=0.0) / scale
    assert error <= rtol, f"{what}: relative error {error:.2e} (tolerance {rtol:.0e})"


def compare(program, inputs, oracle, dtype="f64"):
    """Outputs, loss and the gradient of every parameter of `program` on `inputs`
    against `oracle(inputs, params) -> {output: tensor, ..., "loss": tensor}`, PyTorch
    in float64 from the same (for f32: rounded) parameters."""
    rtol = RTOL[dtype]
    feed = {k: v.astype(program.dtype) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    loss, outputs = program.evaluate(feed)
    grad_loss, grads = program.value_and_grad(feed)
    params = as_torch(program.get_params(), grad=True)
    expected = oracle(as_torch(feed), params)
    expected["loss"].backward()
    for name, value in outputs.items():
        assert_close(value, expected[name].detach().numpy(), f"output {name}", rtol)
    assert_close(loss, expected["loss"].item(), "loss", rtol)
    assert_close(grad_loss, expected["loss"].item(), "value_and_grad's loss", rtol)
    for name, tensor in params.items():
        want = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        assert_close(grads[name], want.numpy(), f"gradient of {name}", rtol)


def same_padding(x, kernel_shape, stride):
    """TensorFlow's "same" padding, as docs/language.md defines it: output ceil(H / s),
    total padding max((out - 1) * s + K - H, 0), its smaller half on top (left)."""
    pads = []
    for size, k in zip(reversed(x.shape[2:]), reversed(kernel_shape)):
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def rng_inputs(seed, **shapes):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape) for name, shape in shapes.items()}


# ---- elementwise functions ------------------------------------------------------------
ELEMENTWISE = """
input z[N, 4]
input p[N, 4]
param w[4] = [0.5, -1.5, 2.0, 1.0]
param b[4] = [0, 0, 0, 0]
u = z * w + b
output relu_ = relu(u)
output sigmoid_ = sigmoid(u)
output tanh_ = tanh(u)
output leaky = leaky_relu(u) + leaky_relu(u, alpha=0.2) + leaky_relu(u, 0.3)
output elu_ = elu(u) + elu(u, alpha=0.5) + elu(u, 2.0)
output steps = step(u) * 3 + sign(u)
output kinks = abs(u) + step(u) * u + sign(u) * u
output explog = exp(u) + log(p * w ^ 2) + sqrt(p * w ^ 2)
output minmax = max(u, p - 1) + min(u, 0.5) * 2 + max(0.25, u) * 3
output arith = (u - p) ^ 3 / (p + w ^ 2) - -u ^ 2 + p ^ w + u / 3
loss sum(relu_ * p) + sum(sigmoid_ * p) + sum(tanh_ * p) + sum(leaky * p) + sum(elu_ * p) + sum(steps * p) + sum(kinks * p) + sum(explog * p) + sum(minmax * p) + sum(arith * p)
"""


def elementwise_oracle(i, P):
    z, p = i["z"], i["p"]
    u = z * P["w"] + P["b"]
    out = {
        "relu_": F.relu(u),
        "sigmoid_": torch.sigmoid(u),
        "tanh_": torch.tanh(u),
        "leaky": F.leaky_relu(u, 0.01) + F.leaky_relu(u, 0.2) + F.leaky_relu(u, 0.3),
        "elu_": F.elu(u) + F.elu(u, 0.5) + F.elu(u, 2.0),
        "steps": (u > 0).double() * 3 + torch.sign(u),
        "kinks": torch.abs(u) + (u > 0).double() * u + torch.sign(u) * u,
        "explog": torch.exp(u) + torch.log(p * P["w"] ** 2) + torch.sqrt(p * P["w"] ** 2),
        # max(a, b) sends a tie's gradient to a (docs/language.md); torch.maximum would
        # split it. The inputs make u == p - 1 nowhere, but u == 0.25 and u == 0.5 where z = 0
        "minmax": (torch.where(u >= p - 1, u, p - 1) + torch.where(u <= 0.5, u, 0.5 + 0 * u) * 2
                   + torch.where(0.25 >= u, 0.25 + 0 * u, u) * 3),
        "arith": (u - p) ** 3 / (p + P["w"] ** 2) + u ** 2 + p ** P["w"] + u / 3,
    }
    out["loss"] = sum((out[name] * p).sum() for name in list(out))
    return out


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_elementwise_functions_and_their_derivatives_at_kinks(dtype):
    """relu, sigmoid, tanh, leaky_relu (alpha 0.01 by default), elu (alpha 1), step and
    sign, exp/log/sqrt, max/min, arithmetic and precedence (-u ^ 2 is -(u ^ 2)): values
    and derivatives as torch's. Column 0 of z is 0, so u = b = 0 there: every kink is
    hit and its derivative must be torch's too (relu'(0) = 0, leaky_relu'(0) = alpha,
    elu'(0) = alpha, abs'(0) = 0, step(0) = 0, sign(0) = 0). Then u = 0.25 and 0.5:
    max/min ties, whose gradient goes to the first argument (documented)."""
    program = program_of(ELEMENTWISE, "elementwise", dtype)
    inputs = rng_inputs(0, z=(5, 4))
    inputs["p"] = np.random.default_rng(1).uniform(0.5, 2.0, size=(5, 4))
    inputs["z"][:, 0] = 0.0
    compare(program, inputs, elementwise_oracle, dtype)
    program.set_params({"b": [0.25, 0.5, 0.25, 0.5]})
    inputs["z"][:] = 0.0
    compare(program, inputs, elementwise_oracle, dtype)


# ---- softmax, reductions, shapes, broadcasting ---------------------------------------
SHAPES = """
input x[N, 3, 4]
input y[N] : i32
param s = 1.5
param c[3, 1] = [[0.5], [-1.0], [2.0]]
param M[4, 2] = [[1, -1], [0.5, 2], [-0.25, 0], [3, 1]]
param v[4] = [0.1, -0.2, 0.3, 0.4]
u = x * s + c
output sm = softmax(u)
output sm1 = softmax(u, axis=1)
output lsm = log_softmax(u)
output lsm0 = log_softmax(u, axis=0)
output sums = sum(u, axis=1) * mean(u) + mean(u, axis=1) + sum(u) / 10
output rows = mean(u, axis=-1) - sum(u, axis=0) @ v
output mats = mean(u, axis=1) @ M
output vecs = sum(u, axis=1) @ v
output vm = v @ M * s
output flat = flatten(u)
output shaped = reshape(u, [-1, 6]) * 2
output swapped = transpose(u) * 3
output hot = onehot(y, 4) * 5
loss sum(sm * x) + sum(sm1 * x) + sum(lsm * x) + sum(lsm0 * x) + sum(sums ^ 2) + sum(rows ^ 3) + mean(mats ^ 3) + sum(vecs ^ 2) + sum(vm ^ 3) + sum(flat * flat) + sum(shaped ^ 3) + sum(swapped * transpose(x)) + sum(onehot(y, 4) * v * mean(u, axis=1))
"""


def shapes_oracle(i, P):
    x, y = i["x"], i["y"]
    u = x * P["s"] + P["c"]
    out = {
        "sm": F.softmax(u, -1), "sm1": F.softmax(u, 1),
        "lsm": F.log_softmax(u, -1), "lsm0": F.log_softmax(u, 0),
        "sums": u.sum(1) * u.mean() + u.mean(1) + u.sum() / 10,
        "rows": u.mean(-1) - u.sum(0) @ P["v"],
        "mats": u.mean(1) @ P["M"],
        "vecs": u.sum(1) @ P["v"], "vm": P["v"] @ P["M"] * P["s"],
        "flat": u.flatten(1), "shaped": u.reshape(-1, 6) * 2, "swapped": u.permute(2, 1, 0) * 3,
        "hot": F.one_hot(y, 4) * 5,
    }
    out["loss"] = ((out["sm"] * x).sum() + (out["sm1"] * x).sum() + (out["lsm"] * x).sum()
                   + (out["lsm0"] * x).sum() + (out["sums"] ** 2).sum() + (out["rows"] ** 3).sum() + (out["mats"] ** 3).mean()
                   + (out["vecs"] ** 2).sum() + (out["vm"] ** 3).sum() + (out["flat"] ** 2).sum() + (out["shaped"] ** 3).sum()
                   + (out["swapped"] * x.permute(2, 1, 0)).sum()
                   + (F.one_hot(y, 4) * P["v"] * u.mean(1)).sum())
    return out


@pytest.mark.parametrize("batch, scale", [(4, 1.0), (1, 1.0), (3, 1000.0)])
def test_softmax_reductions_shapes_and_broadcasting(batch, scale):
    """softmax/log_softmax along the last axis by default and along any axis (the batch
    too), sum/mean by axis and whole, @ of [N, i] by [i, j] and by [i], and of [i] by [i, j], flatten and reshape in
    row-major order, transpose reversing every dimension, onehot, broadcasting a
    [3, 1] over [N, 3, 4] (its gradient summed back). Batch 1, and logits of +-1000
    where an unshifted exp overflows."""
    program = program_of(SHAPES, "shapes")
    inputs = rng_inputs(batch, x=(batch, 3, 4))
    inputs["x"] *= scale
    inputs["y"] = np.arange(batch, dtype=np.int32) % 4
    compare(program, inputs, shapes_oracle)


# ---- convolution and pooling ----------------------------------------------------------
CONVOLUTIONS = {
    # name: (symnet expression, stride, padding: int or "same", kernel parameter or None)
    "valid_stride3": ('conv2d(x, filters=2, size=3, stride=3)', 3, 0, None),
    "int_pad_stride2": ('conv2d(x, filters=2, size=3, pad=1, stride=2)', 2, 1, None),
    "same_even_stride2": ('conv2d(x, filters=3, size=2, pad="same", stride=2)', 2, "same", None),
    "same_stride1": ('conv2d(x, filters=2, size=3, pad="same")', 1, "same", None),
    "kernel_4d_same": ('conv2d(x, K, pad="same", stride=3)', 3, "same", "K"),
    "no_bias": ('conv2d(x, filters=2, size=1, pad=2, bias=false, stride=2)', 2, 2, None),
}
POOLS = {
    # name: (symnet expression, torch function, size, stride)
    "max2": ("maxpool(x, 2)", F.max_pool2d, 2, 2),
    "max3_stride1": ("maxpool(x, 3, stride=1)", F.max_pool2d, 3, 1),
    "max3_stride2": ("maxpool(x, 3, stride=2)", F.max_pool2d, 3, 2),
    "max2_stride3": ("maxpool(x, 2, stride=3)", F.max_pool2d, 2, 3),
    "avg2": ("avgpool(x, 2)", F.avg_pool2d, 2, 2),
    "avg3_stride2": ("avgpool(x, 3, stride=2)", F.avg_pool2d, 3, 2),
    "avg2_stride1": ("avgpool(x, 2, stride=1)", F.avg_pool2d, 2, 1),
}
IMAGES = ("input x[N, 2, 7, 6]\nparam K[3, 2, 2, 3] ~ normal(0, 1)\n"
          "const edge[2, 3] = [[1, 0, -1], [2, 0, -2]]\n")


def image_model():
    lines = [IMAGES]
    for name, (expr, *_) in {**CONVOLUTIONS, **POOLS}.items():
        lines.append(f"output {name} = {expr}\n")
    lines.append("output depthwise = conv2d(x, edge, pad=1, stride=2)\n")
    names = list(CONVOLUTIONS) + list(POOLS) + ["depthwise"]
    lines.append("loss " + " + ".join(f"sum({n} ^ 2) * {k + 1}" for k, n in enumerate(names)) + "\n")
    return "".join(lines), names


def image_oracle(i, P):
    x, out = i["x"], {}
    for name, (_, stride, pad, kernel) in CONVOLUTIONS.items():
        weight = P[kernel or f"{name}.W"]
        padded = same_padding(x, weight.shape[2:], stride) if pad == "same" else F.pad(x, [pad] * 4)
        out[name] = F.conv2d(padded, weight, P.get(f"{name}.b"), stride=stride)
    for name, (_, pool, size, stride) in POOLS.items():
        out[name] = pool(x, size, stride)
    edge = torch.tensor([[1.0, 0, -1], [2, 0, -2]], dtype=torch.float64).expand(2, 1, 2, 3)
    out["depthwise"] = F.conv2d(x, edge, padding=1, stride=2, groups=2)
    out["loss"] = sum((out[n] ** 2).sum() * (k + 1) for k, n in enumerate(list(out)))
    return out


def test_convolution_and_pooling_windows():
    """conv2d is cross-correlation with torch's weight layout [Cout, Cin, kh, kw]; an
    integer pad pads every side; "same" pads as TensorFlow (the smaller half on top and
    left, so even and rectangular kernels pad after the image); strides that do not
    divide the padded side drop the last partial window; a [kh, kw] kernel is applied
    to each channel (torch's groups=C). maxpool and avgpool on 7x6 images drop the
    edge that no whole window covers (torch's floor mode), with overlapping (stride 1)
    and gapped (stride 3) windows. The images hold small integers, so maxpool's windows
    tie; its gradient goes to the first maximum, as torch's does."""
    source, names = image_model()
    program = program_of(source, "images")
    rng = np.random.default_rng(7)
    for batch in (3, 1):
        inputs = {"x": rng.integers(-2, 3, size=(batch, 2, 7, 6)).astype(np.float64)}
        compare(program, inputs, image_oracle)
        inputs = {"x": rng.normal(size=(batch, 2, 7, 6))}
        compare(program, inputs, image_oracle)
    assert set(program.forward(inputs)) == set(names)


# ---- layers and their parameters ------------------------------------------------------
LAYERS = """
input img[N, 2, 5, 5]
input x[N, 3]
c = relu(conv2d(img, filters=3, size=3, stride=2))
d = tanh(dense(flatten(c), 4))
m = maxout(x, 2, pieces=3)
e = dense(m, 3, bias=false)
output o = dense(d, 2) + e @ transpose(e.W)
loss sum(o ^ 2)
"""


def layers_oracle(i, P):
    # conv2d(filters=3, size=3): W[3, 2, 3, 3] and b[3], as torch.nn.Conv2d(2, 3, 3)
    assert P["c.W"].shape == torch.nn.Conv2d(2, 3, 3).weight.shape
    c = F.relu(F.conv2d(i["img"], P["c.W"], P["c.b"], stride=2))
    # dense: W[in, units], the transpose of torch.nn.Linear's weight
    assert P["d.W"].T.shape == torch.nn.Linear(12, 4).weight.shape
    d = torch.tanh(F.linear(c.flatten(1), P["d.W"].T, P["d.b"]))
    # maxout: W[in, units, pieces], b[units, pieces]
    m = (torch.einsum("ni,ijp->njp", i["x"], P["m.W"]) + P["m.b"]).amax(-1)
    e = m @ P["e.W"]
    o = F.linear(d, P["o.W"].T, P["o.b"]) + e @ P["e.W"].T
    return {"o": o, "loss": (o ** 2).sum()}


def test_layer_parameters_have_the_documented_layout():
    """dense(x, units) makes W[in, units] and b[units]: torch.nn.Linear's weight
    transposed; conv2d(filters=C) makes W[C, Cin, K, K] and b[C], torch.nn.Conv2d's
    layout; maxout(x, units, pieces) makes W[in, units, pieces] and b[units, pieces];
    flatten feeds dense in NCHW row-major order; bias=false makes no b."""
    program = program_of(LAYERS, "layers")
    assert "e.b" not in program.get_params()
    inputs = rng_inputs(3, img=(4, 2, 5, 5), x=(4, 3))
    compare(program, inputs, layers_oracle)


# ---- losses ---------------------------------------------------------------------------
LOSSES = """
input x[N, 3]
input y[N] : i32
input t[N, 4]
param r[4] = [0.2, 0.9, 0.4, 0.7]
h = dense(x, 4)
output ce = cross_entropy(h, y)
output ce_onehot = cross_entropy(h, onehot(y, 4))
output ce_soft = cross_entropy(h, t * r)
output mse_ = mse(h, t)
output mse_row = mse(h, r)
output mse_number = mse(h, 0.5)
output bce_logits = binary_cross_entropy(sigmoid(h), t)
output bce_probs = binary_cross_entropy(0.1 + 0.8 * sigmoid(h), t * r)
output nonscalar = sum(h, axis=1) * 0
loss ce + ce_onehot * 2 + ce_soft * 3 + mse_ * 4 + mse_row * 5 + mse_number * 6 + bce_logits * 7 + bce_probs * 8 + (h - t) ^ 2 + 0.01 * sum(h.W ^ 2)
"""


def losses_oracle(i, P):
    x, y, t = i["x"], i["y"], i["t"]
    h = x @ P["h.W"] + P["h.b"]
    out = {
        "ce": F.cross_entropy(h, y),
        "ce_onehot": F.cross_entropy(h, F.one_hot(y, 4).double()),
        "ce_soft": F.cross_entropy(h, t * P["r"]),      # rows need not sum to 1
        "mse_": F.mse_loss(h, t),
        "mse_row": F.mse_loss(h, P["r"].expand_as(h)),
        "mse_number": F.mse_loss(h, torch.full_like(h, 0.5)),
        "bce_logits": F.binary_cross_entropy_with_logits(h, t),
        "bce_probs": F.binary_cross_entropy(0.1 + 0.8 * torch.sigmoid(h), t * P["r"]),
        "nonscalar": h.sum(1) * 0,
    }
    out["loss"] = (out["ce"] + out["ce_onehot"] * 2 + out["ce_soft"] * 3 + out["mse_"] * 4
                   + out["mse_row"] * 5 + out["mse_number"] * 6 + out["bce_logits"] * 7
                   + out["bce_probs"] * 8 + ((h - t) ** 2).mean() + 0.01 * (P["h.W"] ** 2).sum())
    return out


@pytest.mark.parametrize("batch", [5, 1])
def test_losses_are_batch_means(batch):
    """cross_entropy of class indices, of one-hot rows and of soft rows that do not sum
    to 1 (-sum t log_softmax, as torch's probability targets), mse over every element
    (a [4] or a number broadcast as the target), binary_cross_entropy of sigmoid(h) (from
    the logits, torch's BCEWithLogits) and of other probabilities (here inside symnet's
    clamp [1e-7, 1 - 1e-7], where it is torch's binary_cross_entropy), and a non-scalar
    loss term averaged over all its elements: values, and the gradients of their sum
    with an L2 penalty on a layer's weights (weight decay, written in the loss).
    The targets t lie in [0, 1], soft."""
    program = program_of(LOSSES, "losses")
    rng = np.random.default_rng(batch)
    inputs = {"x": rng.normal(size=(batch, 3)) * 2, "y": rng.integers(0, 4, batch).astype(np.int32),
              "t": rng.uniform(0, 1, size=(batch, 4))}
    compare(program, inputs, losses_oracle)


# ---- optimizers -----------------------------------------------------------------------
TRAINED = """
input x[N, 3]
input y[N] : i32
h = tanh(dense(x, 5))
output logits = dense(h, 3)
loss cross_entropy(logits, y)
"""
OPTIMIZERS = {
    # name: (train statement, torch optimizer from its parameters and the learning rate)
    "sgd": ("sgd(lr=0.3)", 0.3, lambda ps, lr: torch.optim.SGD(ps, lr=lr)),
    "momentum": ("momentum(lr=0.2, beta=0.7)", 0.2,
                 lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.7)),
    "adam": ("adam(lr=0.05, beta1=0.8, beta2=0.9, eps=0.001)", 0.05,
             lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.8, 0.9), eps=1e-3)),
    "adam_defaults": ("adam()", 1e-3, lambda ps, lr: torch.optim.Adam(ps, lr=lr)),
}


def trained_loss(P, x, y):
    h = torch.tanh(x @ P["h.W"] + P["h.b"])
    return F.cross_entropy(h @ P["logits.W"] + P["logits.b"], y)


@pytest.mark.parametrize("name, dtype", [(name, "f64") for name in OPTIMIZERS] + [("adam", "f32")])
def test_train_steps_match_torch_optim(name, dtype):
    """The file's `train` statement sets the compiled optimizer and its hyperparameters
    (defaults where it names none), and each train_step is torch.optim's step: SGD,
    SGD with momentum (v = beta v + g, no dampening) and Adam (bias-corrected moments,
    eps added to sqrt(v')). Six steps over batches of 4, 1 and 7: a learning rate
    changed by configure after the third (torch: the param group's lr), the optimizer
    state reset by reset_optimizer after the fourth (torch: a new optimizer; Adam's
    bias correction counts from 1 again). In float32 the same steps are compared with
    torch's float64 ones to float32 precision."""
    statement, lr, make = OPTIMIZERS[name]
    program = program_of(TRAINED + f"train {statement}\n", f"trained_{name}", dtype,
                         entries=("train_step",))
    params = as_torch(program.get_params(), grad=True)
    optimizer = make(list(params.values()), lr)
    rng = np.random.default_rng(11)
    rtol = {"f64": 1e-12, "f32": 1e-5}[dtype]
    for step, batch in enumerate((4, 1, 7, 4, 7, 1), 1):
        x = rng.normal(size=(batch, 3)) * 2
        y = rng.integers(0, 3, batch).astype(np.int32)
        if step == 4:
            program.configure(lr=lr / 2)
            for group in optimizer.param_groups:
                group["lr"] = lr / 2
        if step == 5:
            program.reset_optimizer()
            optimizer = make(list(params.values()), lr / 2)
        loss = program.train_step({"x": x.astype(program.dtype), "y": y})
        optimizer.zero_grad()
        expected = trained_loss(params, torch.tensor(x.astype(program.dtype), dtype=torch.float64),
                                torch.tensor(y, dtype=torch.int64))
        expected.backward()
        optimizer.step()
        assert_close(loss, expected.item(), f"loss of step {step}", rtol)
        for param, value in program.get_params().items():
            assert_close(value, params[param].detach().numpy(), f"{param} after step {step}", rtol)


# ---- initial values -------------------------------------------------------------------
def test_initializers_use_torch_fan_convention():
    """glorot is uniform with limit sqrt(6 / (fan_in + fan_out)) and he normal with std
    sqrt(2 / fan_in), the fans counted as torch.nn.init counts them for the same layer:
    dense's W[in, units] is Linear's weight transposed, a conv kernel [Cout, Cin, kh,
    kw] is Conv2d's (fans times the receptive field)."""
    model = parse("input x[N, 3, 8, 8]\n"
                  "c = conv2d(x, filters=40, size=5, init=glorot)\n"
                  "k = conv2d(x, filters=40, size=5)\n"
                  "g = dense(flatten(x), 300, init=glorot)\n"
                  "h = dense(flatten(x), 300)\n", "init.nn", seed=0)
    fans = torch.nn.init._calculate_fan_in_and_fan_out
    for name, torch_layout in [("c.W", (40, 3, 5, 5)), ("g.W", (300, 192))]:
        fan_in, fan_out = fans(torch.empty(torch_layout))
        limit = np.sqrt(6 / (fan_in + fan_out))
        values = model.params[name]
        assert np.abs(values).max() <= limit and np.abs(values).max() > 0.99 * limit, name
    for name, torch_layout in [("k.W", (40, 3, 5, 5)), ("h.W", (300, 192))]:
        fan_in, _ = fans(torch.empty(torch_layout))
        assert model.params[name].std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.03), name
