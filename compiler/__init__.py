"""symnet's compiler: .nn text (or Python) -> graph -> sympy gradients -> native code.

    model = compiler.load("examples/mlp.nn")       # or compiler.parse(text, filename=...)
    compiler.gradients(model)                      # derived formulas, printable by sympy
    program = compiler.compile(model)              # native forward / train_step
"""
from .errors import SymnetError
from .gradcheck import gradcheck
from .native import compile
from .pipeline import load, parse
from .printing import gradient_formulas as gradients

__all__ = ["SymnetError", "compile", "gradcheck", "gradients", "load", "parse"]
