"""symnet's compiler: .nn text (or Python) -> graph -> sympy gradients -> native code.

    model = compiler.load("examples/mlp.nn")       # or compiler.parse(text, filename=...)
    compiler.gradients(model)                      # derived formulas, printable by sympy
    program = compiler.compile(model)              # native forward / train_step
"""
__all__ = ["SymnetError", "compile", "gradcheck", "gradients", "load", "parse"]

# The names load on first use (PEP 562), so that importing a light submodule
# (compiler.errors, compiler.version) does not load sympy, networkx and LLVM: `symnet
# --help` and `--version` answer at once. The function gradcheck shares its name with
# its module: import it as `from compiler import gradcheck` (importing the module
# compiler.gradcheck by name first would make `compiler.gradcheck` the module).
_SOURCES = {"SymnetError": ("errors", "SymnetError"), "compile": ("native", "compile"),
            "gradcheck": ("gradcheck", "gradcheck"), "gradients": ("printing", "gradient_formulas"),
            "load": ("pipeline", "load"), "parse": ("pipeline", "parse")}


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module 'compiler' has no attribute '{name}'")
    import importlib
    module, attribute = _SOURCES[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value        # after the import, which set compiler.gradcheck to the module
    return value
