"""symnet: compile neural-network definitions to native code.

    import symnet
    model = symnet.load("examples/linreg.nn")     # or symnet.parse(text, filename=...)
    symnet.gradients(model)                       # {"a": dJ/da, "b": dJ/db} as sympy

The command line is `symnet` (symnet/cli.py); the compiler itself lives in `compiler`.
"""
from compiler import SymnetError, load, parse
from compiler.printing import gradient_formulas as gradients

__all__ = ["SymnetError", "gradients", "load", "parse"]
