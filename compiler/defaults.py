"""Training defaults shared by the compiler (checking `train` statements) and the CLI.

An optimizer takes its own keys (below) and batch, epochs and seed."""
OPTIMIZERS = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "beta": 0.9},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
DEFAULT_BATCH = 64
DEFAULT_EPOCHS = 5
