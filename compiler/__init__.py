"""symnet's compiler: .nn text (or Python) -> graph -> sympy gradients -> native code.

    model = compiler.load("examples/mlp.nn")       # or compiler.parse(text, filename=...)
    compiler.gradients(model)                      # derived formulas, printable by sympy
    program = compiler.compile(model)              # native forward / train_step
"""
from .errors import SymnetError
from .pipeline import load, parse

__all__ = ["SymnetError", "load", "parse"]
