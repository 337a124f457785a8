"""Training defaults shared by the compiler (checking `train` statements) and the CLI."""
OPTIMIZERS = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "beta": 0.9},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
TRAIN_KEYS = {"lr", "batch", "epochs", "beta", "beta1", "beta2", "eps", "seed"}
DEFAULT_BATCH = 64
DEFAULT_EPOCHS = 5
