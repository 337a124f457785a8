"""Convolution and pooling: the worked examples of an introductory course, gradients
against finite differences for every variant, native code against the reference."""
import numpy as np
import pytest

from compiler import compile, gradcheck, load, parse, reference
from compiler.errors import SymnetError
from compiler.printing import derive
from reference_check import assert_matches_reference

BRIGHT_LEFT = np.array([[10, 10, 10, 0, 0, 0]] * 6, dtype=np.float64)
QUARTERED = np.array([[10, 10, 10, 0, 0, 0]] * 3 + [[0, 0, 0, 10, 10, 10]] * 3, dtype=np.float64)


@pytest.fixture(scope="module", params=["reference", "native"])
def run_edges(request):
    model = load("examples/edges.nn")
    if request.param == "reference":
        return lambda image: reference.forward(model, {"x": image[None, None]})
    program = compile(model, dtype="f64", cache=False)
    return lambda image: program.forward({"x": image[None, None]})


def test_vertical_edge_of_bright_left_half(run_edges):
    out = run_edges(BRIGHT_LEFT)["v"][0, 0]
    assert np.array_equal(out, np.array([[0, 30, 30, 0]] * 4))


def test_vertical_edge_of_mirrored_image(run_edges):
    out = run_edges(BRIGHT_LEFT[:, ::-1].copy())["v"][0, 0]
    assert np.array_equal(out, np.array([[0, -30, -30, 0]] * 4))


def test_horizontal_edge_of_quartered_image(run_edges):
    out = run_edges(QUARTERED)["h"][0, 0]
    expected = [[0, 0, 0, 0], [30, 10, -10, -30], [30, 10, -10, -30], [0, 0, 0, 0]]
    assert np.array_equal(out, np.array(expected))


@pytest.fixture(scope="module", params=["reference", "native"])
def run_pooling(request):
    model = load("examples/pooling.nn")
    if request.param == "reference":
        return lambda image: reference.forward(model, {"x": np.asarray(image, float)[None, None]})
    program = compile(model, dtype="f64", cache=False)
    return lambda image: program.forward({"x": np.asarray(image, float)[None, None]})


def test_max_pooling_2x2(run_pooling):
    out = run_pooling([[1, 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])["maxed"][0, 0]
    assert np.array_equal(out, [[9, 2], [6, 3]])


def test_average_pooling_2x2(run_pooling):
    out = run_pooling([[1, 3, 2, 1], [2, 9, 1, 1], [1, 4, 2, 3], [5, 6, 1, 2]])["averaged"][0, 0]
    assert np.array_equal(out, [[3.75, 1.25], [4, 2]])


def test_max_pooling_of_0_to_15(run_pooling):
    out = run_pooling(np.arange(16).reshape(4, 4))
    assert np.array_equal(out["maxed"][0, 0], [[5, 7], [13, 15]])
    assert np.array_equal(out["overlapping"][0, 0], [[10, 11], [14, 15]])


# ---- gradients of every variant -------------------------------------------------------
VARIANTS = [
    "conv2d(x, filters=3, size=3)",
    "conv2d(x, filters=3, size=3, stride=2)",
    'conv2d(x, filters=2, size=3, pad="same")',
    'conv2d(x, filters=2, size=3, pad="same", stride=2)',
    "conv2d(x, filters=4, size=4, pad=1, stride=2)",
    'conv2d(x, filters=2, size=2, pad="same", stride=2)',
    'conv2d(x, K3, pad="same", stride=3)',
    "conv2d(x, filters=1, size=2, bias=false)",
    "conv2d(x, K)",
    "conv2d(x, K2, stride=2, pad=1)",
    "maxpool(x, 2)",
    "maxpool(x, 3, stride=2)",
    "maxpool(x, 3, stride=1)",
    "avgpool(x, 2)",
    "avgpool(x, 3, stride=1)",
    "flatten(maxpool(relu(conv2d(x, filters=2, size=3, pad=\"same\")), 2))",
]


def variant_model(expr):
    return parse(
        "param x[2, 3, 7, 7] ~ normal(0, 1)\n"
        "param K[5, 3, 3, 3] ~ normal(0, 0.3)\n"
        "param K2[2, 2] ~ normal(0, 0.5)\n"
        "param K3[2, 3, 4, 1] ~ normal(0, 0.5)\n"
        f"h = {expr}\n"
        "loss mean(h * h)\n", "variant.nn")


@pytest.mark.parametrize("expr", VARIANTS)
def test_gradients_match_finite_differences(expr):
    model = variant_model(expr)
    checks, _ = gradcheck(model, seed=1, samples=40)
    for check in checks:
        assert check.rel_error < 1e-6, (expr, check)


@pytest.mark.parametrize("expr", VARIANTS)
def test_native_f64_matches_reference(expr):
    model = variant_model(expr)
    program = compile(model, dtype="f64", cache=False)
    loss, grads = program.value_and_grad({})
    ref_loss, ref_grads = reference.value_and_grad(model, {})
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12 * np.abs(g).max())


def test_max_pooling_routes_ties_to_the_first_maximum():
    model = parse("param x[1, 1, 2, 2] = [[[[1, 1], [1, 1]]]]\nh = maxpool(x, 2)\nloss sum(h)\n", "t.nn")
    _, grads = reference.value_and_grad(model, {})
    assert np.array_equal(grads["x"][0, 0], [[1, 0], [0, 0]])
    _, native = compile(model, dtype="f64", cache=False).value_and_grad({})
    assert np.array_equal(native["x"][0, 0], [[1, 0], [0, 0]])


def test_lenet_gradient_of_first_kernel_is_an_index_formula():
    model = load("examples/lenet5.nn")
    derivation = derive(model, wrt=["c1.W"])
    text = derivation.gradients["c1.W"].render("text")
    # A sum over batch and output positions of the delta times the shifted input.
    assert "δc1[n, o," in text and "x[n, c," in text
    assert "(n, 0, N - 1)" in text
    deltas = [d.render("text") for d in derivation.deltas]
    # Deltas through pooling (argmax routing) and ReLU (step) are listed.
    assert any(d.startswith("δc1") and "argmax" in d for d in deltas)
    assert any("step(" in d for d in deltas)


@pytest.mark.parametrize("source, message", [
    ("input x[N, 1, 4, 4]\nh = conv2d(x, filters=2, size=5)\n",
     "window 5x5 does not fit input [N, 1, 4, 4]"),
    ("input x[N, 1, 28, 28]\nh = dense(conv2d(x, filters=16, size=5), 10)\n",
     "dense expects [N, 9216], got [N, 16, 24, 24]; use flatten(...)"),
    # Found by the fuzz tests: a symbolic channel count reached the parameter's size check.
    ("input x[N, C, 28, 28]\nh = conv2d(x, filters=6, size=5)\n",
     "conv2d needs a fixed number of input channels, got [N, C, 28, 28]"),
    ("input x[N, M]\nh = dense(x, 4)\n", "dense needs a fixed number of input features, got [N, M]"),
])
def test_shape_errors_are_located_and_name_both_shapes(source, message):
    with pytest.raises(SymnetError) as err:
        parse(source, "bad.nn")
    assert message in err.value.message
    assert err.value.format().startswith("bad.nn:2:")


# ---- pad="same": TensorFlow's rule, per dimension -------------------------------------
def numpy_conv_same(x, K, stride):
    """"same" convolution by np.pad and a loop over output positions, and the gradients
    of sum(out * R) by the same loop: (out, grad_fn(R) -> (dx, dK))."""
    N, C, H, W = x.shape
    kh, kw = K.shape[2:]
    Ho, Wo = -(-H // stride), -(-W // stride)
    th, tw = max((Ho - 1) * stride + kh - H, 0), max((Wo - 1) * stride + kw - W, 0)
    top, left = th // 2, tw // 2
    xp = np.pad(x, ((0, 0), (0, 0), (top, th - top), (left, tw - left)))

    def window(y, z):
        return np.s_[:, :, y * stride:y * stride + kh, z * stride:z * stride + kw]

    out = np.zeros((N, K.shape[0], Ho, Wo))
    for y in range(Ho):
        for z in range(Wo):
            out[:, :, y, z] = np.einsum("ncab,ocab->no", xp[window(y, z)], K)

    def grads(R):
        dxp, dK = np.zeros_like(xp), np.zeros_like(K)
        for y in range(Ho):
            for z in range(Wo):
                dK += np.einsum("no,ncab->ocab", R[:, :, y, z], xp[window(y, z)])
                dxp[window(y, z)] += np.einsum("no,ocab->ncab", R[:, :, y, z], K)
        return dxp[:, :, top:top + H, left:left + W], dK
    return out, grads


@pytest.mark.parametrize("kh, kw", [(2, 2), (3, 3), (4, 4), (3, 1), (1, 3), (2, 3), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_padding_matches_numpy(kh, kw, stride):
    H, W = 6, 7
    Ho, Wo = -(-H // stride), -(-W // stride)
    model = parse(f"param x[2, 2, {H}, {W}] ~ zeros\nparam K[3, 2, {kh}, {kw}] ~ zeros\n"
                  f"param R[2, 3, {Ho}, {Wo}] ~ zeros\n"
                  f'output o = conv2d(x, K, stride={stride}, pad="same")\n'
                  "loss sum(o * R)\n", "same.nn")
    rng = np.random.default_rng(kh * 10 + kw + stride * 100)
    params = {"x": rng.normal(size=(2, 2, H, W)), "K": rng.normal(size=(3, 2, kh, kw)),
              "R": rng.normal(size=(2, 3, Ho, Wo))}
    expected, grads = numpy_conv_same(params["x"], params["K"], stride)
    out = reference.forward(model, {}, params)["o"]
    assert out.shape == (2, 3, Ho, Wo)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    _, got = reference.value_and_grad(model, {}, params)
    dx, dK = grads(params["R"])
    np.testing.assert_allclose(got["x"], dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["K"], dK, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("image, kernel, stride, out", [
    ((5, 5), (2, 2), 1, (5, 5)), ((5, 5), (2, 2), 2, (3, 3)), ((6, 7), (3, 1), 1, (6, 7)),
    ((6, 7), (1, 3), 1, (6, 7)), ((6, 7), (4, 4), 3, (2, 3)), ((2, 2), (5, 5), 1, (2, 2))])
def test_same_output_is_input_size_over_stride_rounded_up(image, kernel, stride, out):
    model = parse(f"input x[N, 1, {image[0]}, {image[1]}]\n"
                  f"param K[1, 1, {kernel[0]}, {kernel[1]}] ~ ones\n"
                  f'output o = conv2d(x, K, stride={stride}, pad="same")\n', "same.nn")
    assert model.tensors["o"].shape[2:] == out


def test_same_with_an_even_kernel_pads_after_the_image_like_tensorflow():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    model = parse('input x[N, 1, 5, 5]\nparam K[1, 1, 2, 2] ~ ones\n'
                  'output o = conv2d(x, K, pad="same")\n', "same.nn")
    out = reference.forward(model, {"x": x})["o"][0, 0]
    padded = np.pad(x[0, 0], ((0, 1), (0, 1)))
    assert np.array_equal(out, padded[:5, :5] + padded[1:, :5] + padded[:5, 1:] + padded[1:, 1:])


@pytest.mark.parametrize("dtype, rtol", [("f64", 1e-9), ("f32", 2e-5)])
@pytest.mark.parametrize("expr", [
    "maxpool(x, 2)", "maxpool(x, 3, stride=2)", "maxpool(x, 3)", "maxpool(x, 4)",
    "conv2d(x, filters=3, size=3, stride=2)", "conv2d(x, filters=2, size=4, stride=4)",
    'conv2d(x, filters=2, size=3, pad="same", stride=3)', "avgpool(x, 2)",
])
def test_strided_rows_in_vector_lanes_match_the_reference(expr, dtype, rtol):
    """Rows of 37 (and 38) pixels: a stride of 2, 3 or 4 reads every s-th element in
    vector lanes (masked loads of s vectors' worth), in two or more chunks with a tail;
    17 images are split across threads. Forward, loss and every gradient."""
    model = parse("input x[N, 2, 5, 37]\n"
                  f"h = {expr}\n"
                  "p = dense(flatten(h), 3)\n"
                  "loss mean(p * p)\n", "strided.nn")
    program = compile(model, dtype=dtype, cache=False)
    assert_matches_reference(program, model, (17, 1), rtol)


@pytest.mark.parametrize("dtype, rtol", [("f64", 1e-9), ("f32", 2e-5)])
def test_a_user_max_over_a_padded_window_in_vector_lanes(dtype, rtol):
    """max(k: ...) in an op runs in vector lanes along i; the reads outside x are 0 and
    take part in the maximum (at the row's ends), as in the reference; and its argmax
    routes the gradient of K. A max over the batch (one index) stays scalar."""
    model = parse("input x[N, 37]\n"
                  "param K[3] = [0.5, 1, 0.25]\n"
                  "op padmax(A, W)[n, i] = max(k: A[n, i + k - 1] * W[k] + 0 * A[n, i])\n"
                  "op colmax(A)[i] = max(n: A[n, i])\n"
                  "output p = padmax(x, K)\n"
                  "output q = colmax(x)\n"
                  "loss sum(p * p)\n", "padmax.nn")
    program = compile(model, dtype=dtype, cache=False)
    for batch in (1, 17):
        x = {"x": -np.abs(np.random.default_rng(batch).normal(size=(batch, 37))) - 0.1}
        got, expected = program.forward(x), reference.forward(model, x)
        assert (expected["p"][:, [0, -1]] == 0).all()       # the padding's 0 wins there
        for name in ("p", "q"):
            np.testing.assert_allclose(got[name], expected[name], rtol=rtol)
        _, grads = program.value_and_grad(x)
        np.testing.assert_allclose(grads["K"], reference.value_and_grad(model, x)[1]["K"], rtol=rtol)
