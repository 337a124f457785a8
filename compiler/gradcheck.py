"""Derived gradients against central finite differences, in float64.

The error of a parameter is max |symbolic - numeric| / max(|symbolic|, |numeric|) over
the checked entries (the infinity norms, so tiny entries do not drown in rounding).
Large parameters are checked on a random sample of entries.
"""
from dataclasses import dataclass

import numpy as np

from .errors import SymnetError


@dataclass
class ParamCheck:
    name: str
    shape: tuple
    checked: int
    max_abs_grad: float
    rel_error: float


# Random inputs may leave the domain of sqrt or log: _check_finite says so in one line,
# instead of NumPy warnings and a NaN error blamed on the gradient.
@np.errstate(all="ignore")
def gradcheck(model, seed=0, batch=3, samples=24, eps=1e-6, simplify=True):
    """Check every parameter; returns [ParamCheck] and the inputs used. A SymnetError
    when the loss is not finite at the random point or next to it."""
    for what, value in (("batch", batch), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{what} must be a whole number of at least 1, got {value!r}")
    rng = np.random.default_rng(seed)
    from . import reference     # sympy: loaded on use, so `import compiler` stays light
    inputs = reference.random_inputs(model, batch=batch, seed=seed)
    # Move away from the initial values so that zero-initialised biases and weights
    # do not sit on kinks (relu at 0) or symmetric points.
    params = {k: v + rng.normal(0.0, 0.1, v.shape) for k, v in model.params.items()}
    loss, grads = reference.value_and_grad(model, inputs, params, simplify=simplify)
    _check_finite(loss, seed)
    results = []
    for name, grad in grads.items():
        count = min(samples, grad.size)
        flat = rng.choice(grad.size, size=count, replace=False) if grad.size else []
        positions = [np.unravel_index(int(i), grad.shape) for i in flat]
        numeric = reference.finite_difference(model, inputs, params, name, positions, eps)
        _check_finite(numeric, seed)
        symbolic = np.array([grad[p] for p in positions])
        scale = max(np.max(np.abs(numeric), initial=0.0), np.max(np.abs(symbolic), initial=0.0))
        # Floor the scale: finite differences carry ~1e-10 absolute noise, which must not
        # read as a relative error on a parameter whose sampled gradients are all tiny.
        error = float(np.max(np.abs(numeric - symbolic), initial=0.0) / max(scale, 1e-3))
        results.append(ParamCheck(name, grad.shape, count, scale, error))
    return results, inputs


def _check_finite(values, seed):
    """The loss (or its finite differences) must be a number to compare gradients with."""
    if not np.isfinite(values).all():
        raise SymnetError(f"the loss is not finite at the random point of seed {seed} (inputs "
                          "outside the domain of sqrt or log?); try another seed (--seed N)")
