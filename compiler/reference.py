"""The NumPy reference evaluator: runs a model's loop nests in float64.

This is the oracle: native code (CPU or GPU) is tested against it, and it against
finite differences. It is deliberately simple — it interprets the index IR directly.
"""
import numpy as np
import sympy

from .autodiff import differentiate
from .errors import SymnetError
from .functions import eq
from .index_ir import dim_value, interpret
from .schedule import loop_ranges


def bind_sizes(model, inputs):
    """Match input arrays to declarations; returns {size symbol: value}."""
    sizes = {}
    for name, info in model.inputs.items():
        if name not in inputs:
            raise SymnetError(f"missing input '{name}' (expected shape {_fmt(info.shape)})")
        array = np.asarray(inputs[name])
        if array.ndim != len(info.shape):
            raise SymnetError(f"input '{name}' has shape {list(array.shape)}, "
                              f"expected {_fmt(info.shape)}")
        for got, want in zip(array.shape, info.shape):
            want = sympy.sympify(want)
            if want.is_Symbol:
                if sizes.setdefault(want, got) != got:
                    raise SymnetError(f"input '{name}' has {want}={got}, but another input "
                                      f"has {want}={sizes[want]}")
            elif int(want) != got:
                raise SymnetError(f"input '{name}' has shape {list(array.shape)}, "
                                  f"expected {_fmt(info.shape)}")
    return sizes


def _fmt(shape):
    return "[" + ", ".join(map(str, shape)) + "]"


def initial_env(model, inputs, params=None):
    env = {}
    for name, info in model.inputs.items():
        dtype = np.int64 if info.dtype == "i32" else np.float64
        env[name] = np.asarray(inputs[name]).astype(dtype)
    for name, value in {**model.params, **(params or {})}.items():
        env[name] = np.array(value, dtype=np.float64)
    for name, value in model.consts.items():
        env[name] = np.array(value, dtype=np.float64)
    return env


def run_forward(model, inputs, params=None):
    """All tensors of the forward pass, in float64: name -> ndarray."""
    sizes = bind_sizes(model, inputs)
    env = initial_env(model, inputs, params)
    interpret(model.forward, env, sizes, tensors=model.tensors)
    return env


def forward(model, inputs, params=None):
    env = run_forward(model, inputs, params)
    return {name: env[name] for name in model.outputs}


def value_and_grad(model, inputs, params=None, simplify=True, backward=None):
    """(loss, {param: gradient}) in float64."""
    backward = backward or differentiate(model, simplify=simplify)
    sizes = bind_sizes(model, inputs)
    env = initial_env(model, inputs, params)
    interpret(model.forward, env, sizes, tensors=model.tensors)
    interpret(backward.comps, env, sizes, tensors={**model.tensors, **backward.tensors})
    grads = {p: env[backward.grads[p]] for p in model.params if p in backward.grads}
    return float(env[model.loss]), grads


def finite_difference(model, inputs, params, name, positions, eps=1e-6):
    """Central differences of the loss for entries `positions` of parameter `name`."""
    out = []
    for pos in positions:
        values = []
        for sign in (1, -1):
            trial = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
            trial[name][pos] += sign * eps
            env = run_forward(model, inputs, trial)
            values.append(float(env[model.loss]))
        out.append((values[0] - values[1]) / (2 * eps))
    return np.array(out)


def random_inputs(model, batch=3, seed=0):
    """Random inputs for every declared input (class labels for i32 ones)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, info in model.inputs.items():
        shape = tuple(dim_value(d, {s: batch for s in model.size_symbols}) for d in info.shape)
        if info.dtype == "i32":      # class labels, or small counts when not labels
            classes = classes_of(model, name) or 5
            inputs[name] = rng.integers(0, classes, shape).astype(np.int32)
        else:
            inputs[name] = rng.normal(0.0, 1.0, shape)
    return inputs


def classes_of(model, label_input):
    """How many classes an i32 input holds: the range of the class index it is compared
    with, eq(label, k), in cross_entropy or onehot. None for an i32 input used otherwise
    (a count, a factor), whose values are then not range-checked."""
    for c in model.forward:
        labels = {s for s, a in c.accesses.items() if a.tensor == label_input}
        extents = loop_ranges(c, model.tensors)
        for label, k in (compare.args for compare in c.body.atoms(eq)):
            if label in labels and sympy.sympify(extents.get(k)).is_Integer:
                return int(extents[k])
    return None
