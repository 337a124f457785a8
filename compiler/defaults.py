"""Choices and defaults shared by the compiler and the CLI, in a module that imports
nothing (the CLI's parser reads them without loading sympy).

An optimizer takes its own keys (below) and batch, epochs and seed."""
OPTIMIZERS = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "beta": 0.9},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
DEFAULT_BATCH = 64
DEFAULT_EPOCHS = 5

# How formulas print (compiler.printing; `symnet grad --format`).
FORMULA_FORMATS = ("text", "unicode", "latex")
