"""symnet: compile neural-network definitions to native code.

    import symnet
    model = symnet.load("examples/linreg.nn")     # or symnet.parse(text, filename=...)
    symnet.gradients(model)                       # {"a": dJ/da, "b": dJ/db} as sympy

The command line is `symnet` (symnet/cli.py); the compiler itself lives in `compiler`.
The names load on first use, so that the command starts without sympy and LLVM and
can catch a Ctrl-C while they load (symnet/__main__.py).
"""
__all__ = ["SymnetError", "gradients", "load", "parse"]


def __getattr__(name):
    if name == "gradients":
        from compiler.printing import gradient_formulas
        return gradient_formulas
    if name in __all__:
        import compiler
        return getattr(compiler, name)
    raise AttributeError(f"module 'symnet' has no attribute '{name}'")
