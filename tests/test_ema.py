"""The moving average of the weights (config.ema_decay) and cutout, as a training step sees them."""

import jax
import numpy as np
import pytest

from alexnet_jax import evaluation
from alexnet_jax.data import spec
from alexnet_jax.state import ema_decay_at, inference_variables

from conftest import single_steps, tiny_config


def run_steps(config, dataset, steps: int):
    """The state after each of `steps` train steps (host copies), the first one included."""
    return single_steps(config, dataset, jax.devices()[:1], steps)[0]


def test_the_average_follows_the_trained_weights_by_its_decay(tiny_dataset):
    config = tiny_config(ema_decay=0.9)
    states = run_steps(config, tiny_dataset, 3)
    live = lambda s: {"params": s.params, "batch_stats": s.batch_stats}  # noqa: E731
    expected = live(states[0])
    for state in states[1:]:
        rate = float(ema_decay_at(config.ema_decay, state.step))
        expected = jax.tree.map(lambda a, n, r=rate: r * a + (1 - r) * n, expected, live(state))
        for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # It lags: after three steps it is neither the initial weights nor the trained ones.
    kernel = lambda s: s["params"]["conv2d"]["kernel"]  # noqa: E731
    assert not np.allclose(kernel(states[-1].ema), kernel(live(states[-1])))
    assert not np.allclose(kernel(states[-1].ema), kernel(live(states[0])))


def test_the_average_does_not_change_training(tiny_dataset):
    plain = run_steps(tiny_config(), tiny_dataset, 2)[-1]
    averaged = run_steps(tiny_config(ema_decay=0.9), tiny_dataset, 2)[-1]
    assert plain.ema is None
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(averaged.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_decay_warms_up_then_holds():
    rates = [float(ema_decay_at(0.999, np.int32(step))) for step in (0, 10, 1000, 10**6)]
    assert rates[0] == pytest.approx(0.1)
    assert rates == sorted(rates)
    assert rates[-1] == pytest.approx(0.999)


def test_evaluation_uses_the_average(tiny_dataset):
    state = run_steps(tiny_config(ema_decay=0.9), tiny_dataset, 2)[-1]
    assert inference_variables(state) is state.ema
    as_trained = state.replace(
        params=state.ema["params"], batch_stats=state.ema["batch_stats"], ema=None
    )
    dataset = spec("mnist")
    options = dict(image_size=67, mean=dataset.mean, std=dataset.std, dtype=np.float32, flip=False)
    images = tiny_dataset.test.images[:8]
    with_average = evaluation.class_probabilities(state, images, **options)
    np.testing.assert_array_equal(
        with_average, evaluation.class_probabilities(as_trained, images, **options)
    )
    trained = evaluation.class_probabilities(state.replace(ema=None), images, **options)
    assert not np.allclose(with_average, trained)


def test_cutout_changes_the_step(tiny_dataset):
    plain = run_steps(tiny_config(), tiny_dataset, 1)[-1]
    cut = run_steps(tiny_config(cutout=10), tiny_dataset, 1)[-1]
    assert not np.allclose(plain.params["conv2d"]["kernel"], cut.params["conv2d"]["kernel"])
