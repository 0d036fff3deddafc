import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import (
    KERNEL_INIT,
    MIN_IMAGE_SIZE,
    STEMS,
    AlexNet,
    SpaceToDepthConv,
    feature_size,
    space_to_depth,
)


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def abstract_variables(image_size, channels, **model_args):
    dummy = jnp.zeros((1, image_size, image_size, channels))
    return jax.eval_shape(lambda: AlexNet(**model_args).init(jax.random.key(0), dummy))


@pytest.mark.parametrize(
    "channels, total, trainable, non_trainable",
    [(3, 46_793_482, 46_790_730, 2_752), (1, 46_770_250, 46_767_498, 2_752)],
    ids=["cifar10", "mnist"],
)
def test_parameter_counts_equal_the_seed(channels, total, trainable, non_trainable):
    variables = abstract_variables(224, channels)
    assert count(variables["params"]) == trainable
    assert count(variables["batch_stats"]) == non_trainable
    assert count(variables) == total


def test_feature_size_matches_the_model():
    for size in (67, 99, 224):
        variables = abstract_variables(size, 1)
        flat = variables["params"]["dense"]["kernel"].shape[0]
        assert flat == feature_size(size) ** 2 * 256
    assert feature_size(224) == 5


def test_smallest_input_is_67():
    assert feature_size(MIN_IMAGE_SIZE) == 1
    with pytest.raises(ValueError, match="at least 67"):
        abstract_variables(MIN_IMAGE_SIZE - 1, 1)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    model = AlexNet(dtype=jnp.bfloat16)
    x = jnp.ones((2, 67, 67, 3))
    variables = model.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = model.apply(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)


def test_dropout_is_active_only_in_training():
    model = AlexNet(dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 67, 67, 1))
    variables = model.init(jax.random.key(0), x)

    def run(train, seed):
        out = model.apply(
            variables, x, train=train, rngs={"dropout": jax.random.key(seed)}, mutable=True
        )
        return out[0]

    np.testing.assert_array_equal(run(False, 1), run(False, 2))
    assert not np.allclose(run(True, 1), run(True, 2))


def test_batchnorm_running_mean_moves_one_percent_towards_the_batch_as_keras():
    model = AlexNet()
    x = jax.random.normal(jax.random.key(1), (4, 67, 67, 1)) + 3.0
    variables = model.init(jax.random.key(0), x)
    _, updated = model.apply(
        variables,
        x,
        train=True,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats", "intermediates"],
    )
    conv_output = updated["intermediates"]["outputs"][0]  # conv2d + ReLU, the BN's input
    batch_mean = conv_output.mean(axis=(0, 1, 2))
    running_mean = updated["batch_stats"]["batch_normalization"]["mean"]
    # Keras BatchNormalization(momentum=0.99) from a zero start: 0.99 * 0 + 0.01 * batch mean.
    np.testing.assert_allclose(running_mean, 0.01 * batch_mean, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(batch_mean).max()) > 0


# The space-to-depth stem sums the same products as the 11x11/4 convolution in another order:
# in float32 the two differ by rounding only. Tolerance: 1e-5 of the largest output (or
# gradient) magnitude; the largest difference seen on this CPU is about 1.3e-6 of it.
STEM_TOLERANCE = 1e-5


def assert_close_to_scale(actual, expected, tolerance=STEM_TOLERANCE):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("size", [67, 99, 224])
@pytest.mark.parametrize("channels", [1, 3])
def test_space_to_depth_stem_computes_the_plain_11x11_stride_4_convolution(size, channels):
    plain = nn.Conv(96, (11, 11), 4, "VALID", kernel_init=KERNEL_INIT)
    stem = SpaceToDepthConv(96, 11, 4)
    # Non-square (size x size+1) to check rows and columns separately.
    x = jax.random.uniform(jax.random.key(size), (2, size, size + 1, channels), minval=-2, maxval=2)
    params = plain.init(jax.random.key(0), x)
    # Same names, shapes and initial values: the parameters are interchangeable.
    stem_params = stem.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, stem_params) == jax.tree.map(np.shape, params)
    for a, b in zip(jax.tree.leaves(stem_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    params = jax.tree.map(lambda p: p + 0.01, params)  # a nonzero bias as well

    weights = jax.random.normal(
        jax.random.key(1), (2, (size - 11) // 4 + 1, (size - 10) // 4 + 1, 96)
    )

    @jax.jit
    def outputs_and_grads(params, x):
        # Gradients of a loss that weighs every output differently: kernel, bias and input.
        def run(module):
            loss = lambda p, x: jnp.sum(jnp.tanh(module.apply(p, x)) * weights)  # noqa: E731
            return module.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)

        return run(stem), run(plain)

    fast, expected = outputs_and_grads(params, x)
    assert expected[0].shape == weights.shape
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(expected), strict=True):
        assert_close_to_scale(a, b)


def test_space_to_depth_cuts_the_input_into_blocks_in_kernel_order():
    x = jnp.arange(2 * 8 * 4 * 3).reshape(2, 8, 4, 3)
    blocks = space_to_depth(x, 4)
    assert blocks.shape == (2, 2, 1, 48)
    # Block (1, 0) of image 1, element (dy=2, dx=3, c=1) is pixel (4 + 2, 3), channel 1.
    assert blocks[1, 1, 0, (2 * 4 + 3) * 3 + 1] == x[1, 6, 3, 1]


@pytest.mark.parametrize("channels, total", [(3, 46_793_482), (1, 46_770_250)])
def test_both_stems_have_the_seed_parameters(channels, total):
    shapes = [
        jax.tree.map(np.shape, abstract_variables(224, channels, stem=stem)) for stem in STEMS
    ]
    assert shapes[0] == shapes[1]
    assert count(abstract_variables(224, channels, stem="conv11")) == total


def test_the_stems_share_parameters_and_compute_the_same_model():
    x = jax.random.normal(jax.random.key(2), (4, 67, 67, 3))
    plain, fast = AlexNet(stem="conv11"), AlexNet(stem="space_to_depth")
    variables = plain.init(jax.random.key(0), x)
    for a, b in zip(
        jax.tree.leaves(fast.init(jax.random.key(0), x)), jax.tree.leaves(variables), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    @jax.jit
    def run(variables):
        # Parameters made for one stem (here: initialised) run in the other, in both modes.
        def outputs(model):
            rngs = {"dropout": jax.random.key(3)}
            trained = model.apply(variables, x, train=True, rngs=rngs, mutable="batch_stats")
            return model.apply(variables, x), trained

        return outputs(fast), outputs(plain)

    fast_outputs, plain_outputs = run(variables)
    for a, b in zip(jax.tree.leaves(fast_outputs), jax.tree.leaves(plain_outputs), strict=True):
        assert_close_to_scale(a, b)


def test_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="unknown stem 'conv7'"):
        abstract_variables(67, 1, stem="conv7")
