"""The max-pooling's gradients from masks and from indices (pooling.py) against JAX's
select-and-scatter: the same bits on the CPU, ties included, alone and through the whole model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import AlexNet
from alexnet_jax.pooling import max_pool_indices, max_pool_masks


def reference_pool(x):
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


def pool_and_gradient(pool, x, cotangent):
    y, vjp = jax.vjp(pool, x)
    return jax.device_get((y, vjp(cotangent)[0]))


@pytest.mark.parametrize(
    "shape, values, dtype",
    [
        ((2, 15, 15, 3), "ties", jnp.float32),  # small integers: most windows tie
        ((2, 16, 17, 4), "normal", jnp.float32),  # even sides: the last row and column unused
        ((3, 7, 9, 5), "ties", jnp.bfloat16),
        ((2, 31, 31, 8), "normal", jnp.bfloat16),
    ],
)
@pytest.mark.parametrize("pool", [max_pool_masks, max_pool_indices], ids=["masks", "indices"])
def test_custom_gradients_give_select_and_scatters_bits(shape, values, dtype, pool):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, shape) if values == "ties" else rng.normal(size=shape)
    x = jnp.asarray(x, dtype)
    out_shape = (shape[0], (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1, shape[3])
    cotangent = jnp.asarray(rng.normal(size=out_shape), dtype)
    expected = jax.jit(pool_and_gradient, static_argnums=0)(reference_pool, x, cotangent)
    custom = jax.jit(pool_and_gradient, static_argnums=0)(pool, x, cotangent)
    for a, b in zip(expected, custom, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    if values == "ties":  # each window's gradient went to one input only, its first maximum
        assert np.count_nonzero(np.asarray(custom[1], np.float32)) <= cotangent.size


@pytest.mark.parametrize("pool_backward", ["masks", "indices"])
def test_the_model_trains_with_the_same_gradients_either_way(pool_backward):
    x = jax.random.normal(jax.random.key(1), (4, 67, 67, 1))
    labels = jnp.arange(4)

    def gradients(pool_backward):
        model = AlexNet(dropout_rate=0.0, stem="conv11", pool_backward=pool_backward)
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        return jax.device_get(jax.jit(jax.grad(loss))(variables["params"]))

    reference, custom = gradients("select_and_scatter"), gradients(pool_backward)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(custom), strict=True):
        assert a.tobytes() == b.tobytes()


def test_an_unknown_backward_is_refused():
    with pytest.raises(ValueError, match="unknown pool backward 'avg'"):
        AlexNet(pool_backward="avg").init(jax.random.key(0), jnp.zeros((1, 67, 67, 1)))
