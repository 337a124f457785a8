"""symnet's compiler: .nn text (or Python) -> graph -> sympy gradients -> native code.

    model = compiler.load("examples/mlp.nn")       # or compiler.parse(text, filename=...)
    compiler.gradients(model)                      # derived formulas, printable by sympy
    program = compiler.compile(model)              # native forward / train_step
"""
__all__ = ["SymnetError", "compile", "gradcheck", "gradients", "load", "parse"]

from .errors import SymnetError
# Bound here, not on first use: the function shares its name with its module, and a
# lazy binding would lose to the module once `from compiler.gradcheck import ...` ran.
# The module imports sympy only when it runs.
from .gradcheck import gradcheck

# The other names load on first use (PEP 562), so that importing a light submodule
# (compiler.errors, compiler.version) does not load sympy, networkx and LLVM: `symnet
# --help` and `--version` answer at once.
_SOURCES = {"compile": ("native", "compile"), "gradients": ("printing", "gradient_formulas"),
            "load": ("pipeline", "load"), "parse": ("pipeline", "parse")}


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module 'compiler' has no attribute '{name}'")
    import importlib
    module, attribute = _SOURCES[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value
