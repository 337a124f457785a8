"""Scalar functions of the model language as sympy Functions.

Each class carries its derivative (`fdiff`) next to its definition, so `sympy.diff`
produces textbook forms: sigmoid' = s (1 - s), relu' = step. Non-smooth functions
use one-sided conventions so that ties route to exactly one operand:
relu'(0) = 0, d max(a, b)/da = [a >= b], d max(a, b)/db = [a < b].

`NUMPY` maps each function to its float64 NumPy implementation (the reference
evaluator uses it); the code generators have their own tables keyed by class name.
"""
import numpy as np
import sympy


class _Fn(sympy.Function):
    """Base: evaluates on numbers (so derivatives simplify), prints as name(args)."""
    is_real = True

    @classmethod
    def eval(cls, *args):
        if all(a.is_Number for a in args):
            value = float(NUMPY[cls](*[float(a) for a in args]))
            return sympy.Integer(int(value)) if value.is_integer() else sympy.Float(value)
        return None

    def _latex(self, printer):
        args = ", ".join(printer._print(a) for a in self.args)
        return rf"\operatorname{{{self.latex_name}}}\left({args}\right)"

    latex_name = ""


class step(_Fn):
    """Heaviside step, the perceptron's activation: 1 where z > 0, else 0."""
    nargs = 1
    latex_name = "step"

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class ge(_Fn):
    """Indicator [a >= b]: the derivative of max(a, b) with respect to a."""
    nargs = 2
    latex_name = "ge"

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class eq(_Fn):
    """Indicator [a == b]: one-hot encodings compare a label with a class index."""
    nargs = 2
    latex_name = "eq"

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class sgn(_Fn):
    """Sign: -1, 0 or 1. Its derivative is 0 almost everywhere."""
    nargs = 1
    latex_name = "sign"

    def fdiff(self, argindex=1):
        return sympy.S.Zero


class absval(_Fn):
    nargs = 1
    latex_name = "abs"

    def fdiff(self, argindex=1):
        return sgn(self.args[0])

    def _latex(self, printer):
        return rf"\left|{printer._print(self.args[0])}\right|"


class relu(_Fn):
    nargs = 1
    latex_name = "relu"

    def fdiff(self, argindex=1):
        return step(self.args[0])


class sigmoid(_Fn):
    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _latex(self, printer):
        return rf"\sigma\left({printer._print(self.args[0])}\right)"


class maximum(_Fn):
    """Elementwise max(a, b); ties route the gradient to a."""
    nargs = 2
    latex_name = "max"

    def fdiff(self, argindex=1):
        a, b = self.args
        return ge(a, b) if argindex == 1 else 1 - ge(a, b)


class minimum(_Fn):
    """Elementwise min(a, b); ties route the gradient to a."""
    nargs = 2
    latex_name = "min"

    def fdiff(self, argindex=1):
        a, b = self.args
        return ge(b, a) if argindex == 1 else 1 - ge(b, a)


class leaky_relu(_Fn):
    """leaky_relu(z, alpha) = z for z > 0, alpha z otherwise."""
    nargs = 2
    latex_name = "leaky\\_relu"

    def fdiff(self, argindex=1):
        z, alpha = self.args
        if argindex == 2:
            return z * (1 - step(z))
        return step(z) + alpha * (1 - step(z))


class elu(_Fn):
    """elu(z, alpha) = z for z > 0, alpha (exp(z) - 1) otherwise."""
    nargs = 2
    latex_name = "elu"

    def fdiff(self, argindex=1):
        # exp(min(z, 0)), not exp(z): the branch (1 - step(z)) discards is still
        # computed, and float32's exp(z) is inf from z = 89 on, which times 0 is NaN.
        z, alpha = self.args
        negative = sympy.exp(minimum(z, 0))
        if argindex == 2:
            return (1 - step(z)) * (negative - 1)
        return step(z) + (1 - step(z)) * alpha * negative


class softplus(_Fn):
    """log(1 + exp(z)), computed stably; softplus' = sigmoid."""
    nargs = 1
    latex_name = "softplus"

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


NUMPY = {
    step: lambda z: (np.asarray(z) > 0).astype(np.float64),
    ge: lambda a, b: (np.asarray(a) >= b).astype(np.float64),
    eq: lambda a, b: (np.asarray(a) == b).astype(np.float64),
    sgn: lambda z: np.sign(z).astype(np.float64),
    absval: np.abs,
    relu: lambda z: np.maximum(z, 0.0),
    sigmoid: _sigmoid,
    maximum: np.maximum,
    minimum: np.minimum,
    leaky_relu: lambda z, a: np.where(np.asarray(z) > 0, z, a * np.asarray(z)),
    elu: lambda z, a: np.where(np.asarray(z) > 0, z, a * np.expm1(np.minimum(z, 0.0))),
    softplus: lambda z: np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))),
}

# What lambdify needs to evaluate bodies with NumPy (names -> implementations).
NUMPY_MODULE = {cls.__name__: impl for cls, impl in NUMPY.items()}
