import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import MIN_IMAGE_SIZE, AlexNet, feature_size


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
