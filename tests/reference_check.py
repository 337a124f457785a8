"""One comparison many tests make: a compiled program against compiler.reference."""
import numpy as np
import pytest

from compiler import reference


def assert_matches_reference(program, model, batches, rtol):
    """Forward outputs, the loss and every gradient of `program` equal the reference's
    on random inputs of each batch size, to rtol of each tensor's largest entry."""
    for batch in batches:
        inputs = reference.random_inputs(model, batch=batch, seed=batch)
        got = program.forward(inputs)
        for name, value in reference.forward(model, inputs).items():
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=rtol * np.abs(value).max())
        loss, grads = program.value_and_grad(inputs)
        ref_loss, ref_grads = reference.value_and_grad(model, inputs)
        assert loss == pytest.approx(ref_loss, rel=rtol)
        for name, g in ref_grads.items():
            np.testing.assert_allclose(grads[name], g, rtol=rtol, atol=rtol * np.abs(g).max())
