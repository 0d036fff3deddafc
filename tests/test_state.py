"""The optimiser a config makes (README: Configuration): weight decay on kernels only, the
warm-up + cosine schedule, SGD with (Nesterov) momentum or AdamW, and label smoothing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.data import Dataset, Split, synthetic_dataset
from alexnet_jax.guarded_update import MomentumSGD
from alexnet_jax.run import build
from alexnet_jax.state import decays, make_optimizer
from alexnet_jax.step import cross_entropy

from conftest import new_state, single_steps, tiny_config


@pytest.fixture(scope="module")
def model_params():
    """The AlexNet parameter tree (conv and dense kernels and biases, BatchNorm scale and bias)
    with random values, each parameter cut to at most 3 per axis (its number of axes kept)."""
    shapes = jax.eval_shape(lambda: new_state(tiny_config())).params
    rng = np.random.default_rng(0)
    small = lambda s: rng.normal(size=[min(n, 3) for n in s.shape]).astype(s.dtype)  # noqa: E731
    return jax.tree.map(small, shapes)


def updates_for(config, params, grads_sequence):
    """The updates `config`'s optimiser applies for a sequence of gradients, the parameters
    moving by each update in turn."""
    tx = make_optimizer(config, steps_per_epoch=4)
    opt_state, updates, step = tx.init(params), [], jax.jit(tx.update)
    for grads in grads_sequence:
        update, opt_state = step(grads, opt_state, params)
        params = jax.tree.map(jnp.add, params, update)
        updates.append(jax.device_get(update))
    return updates


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_reaches_the_kernels_only(model_params, optimizer):
    config = tiny_config(
        optimizer=optimizer, schedule="constant", learning_rate=0.1, weight_decay=0.01
    )
    zero = jax.tree.map(np.zeros_like, model_params)
    (update,) = updates_for(config, model_params, [zero])
    # With zero gradients all that moves a parameter is its decay: lr * wd * p (SGD's Nesterov
    # momentum adds its own (1 + momentum) on the first step; AdamW decays outside its moments).
    factor = -0.1 * 0.01 * ((1 + config.momentum) if optimizer == "sgd" else 1)
    names = set()
    for path, value in jax.tree_util.tree_leaves_with_path(update):
        layer, name = (key.key for key in path)
        names.add(name)
        param = model_params[layer][name]
        if name == "kernel":
            np.testing.assert_allclose(value, factor * param, rtol=1e-6, err_msg=layer)
            assert np.abs(value).max() > 0, layer
        else:  # biases, and BatchNorm's scale and offset
            np.testing.assert_array_equal(value, 0, err_msg=f"{layer}/{name}")
    assert names == {"kernel", "bias", "scale"}  # every kind of parameter was looked at


def test_warmup_then_cosine_reaches_the_peak_at_the_stated_step(cpu_devices):
    # 80 images in batches of 16: 5 steps per epoch; 1.4 epochs of warm-up: the peak at step 7
    # of 15. The optimiser is the one the run makes for its own steps per epoch.
    peak, warmup, total = 0.3, 7, 15
    config = tiny_config(
        learning_rate=peak, warmup_epochs=1.4, num_epochs=3, momentum=0.0, weight_decay=0.0
    )
    run = build(config, synthetic_dataset("mnist", 80, 32), cpu_devices[:2])
    assert run.steps_per_epoch == 5
    tx = run.abstract_state().tx
    params, rates = {"w": jnp.zeros(())}, []
    opt_state = tx.init(params)
    for _ in range(total):
        update, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
        rates.append(-float(update["w"]))  # plain SGD of a unit gradient: minus the rate
    expected = [peak * step / warmup for step in range(warmup)] + [
        peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
        for step in range(warmup, total)
    ]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)
    assert rates[warmup] == pytest.approx(peak, rel=1e-6)
    assert int(np.argmax(rates)) == warmup


def momentum_updates(gradients, lr, momentum, nesterov):
    """SGD with (Nesterov) momentum, written out."""
    trace, updates = 0.0, []
    for g in gradients:
        trace = momentum * trace + g
        updates.append(-lr * (g + momentum * trace if nesterov else trace))
    return updates


def adamw_updates(params, gradients, lr, weight_decay, decayed, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW (decoupled weight decay, scaled by the rate, on `decayed` parameters), written out
    with optax's default moments."""
    m = v = 0.0
    updates = []
    for t, g in enumerate(gradients, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        update = -lr * (step + (weight_decay * params if decayed else 0.0))
        updates.append(update)
        params = params + update
    return updates


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_momentum_is_nesterov_when_the_config_says_so(nesterov):
    config = tiny_config(
        schedule="constant", learning_rate=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.0
    )
    gradients = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    params = {"bias": np.zeros(3, np.float32)}
    updates = updates_for(config, params, [{"bias": g} for g in gradients])
    got = np.stack([u["bias"] for u in updates])
    np.testing.assert_allclose(got, momentum_updates(gradients, 0.1, 0.9, nesterov), rtol=1e-5)
    other = momentum_updates(gradients, 0.1, 0.9, not nesterov)
    assert not np.allclose(got, other, rtol=1e-3)  # the two differ: the flag is not ignored


def test_adamw_is_adam_with_decoupled_weight_decay_on_kernels():
    config = tiny_config(
        optimizer="adamw", schedule="constant", learning_rate=0.01, weight_decay=0.1
    )
    rng = np.random.default_rng(1)
    params = {
        "kernel": rng.normal(size=(3, 2)).astype(np.float32),
        "bias": rng.normal(size=(2,)).astype(np.float32),
    }
    gradients = [
        {name: rng.normal(size=p.shape).astype(np.float32) for name, p in params.items()}
        for _ in range(4)
    ]
    updates = updates_for(config, params, gradients)
    for name in params:
        expected = adamw_updates(
            params[name], [g[name] for g in gradients], 0.01, 0.1, decayed=name == "kernel"
        )
        np.testing.assert_allclose(
            np.stack([u[name] for u in updates]), expected, rtol=1e-4, atol=1e-8
        )
    # Not SGD: with SGD the same config moves the parameters by another amount.
    sgd = updates_for(tiny_config(**{**config.to_dict(), "optimizer": "sgd"}), params, gradients)
    assert not np.allclose(sgd[-1]["kernel"], updates[-1]["kernel"], rtol=1e-2)


def smoothed_cross_entropy(logits, labels, smoothing):
    """Cross-entropy against (1 - smoothing) * one-hot + smoothing / classes, written out."""
    classes = logits.shape[-1]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.full(logits.shape, smoothing / classes)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    return float(-(targets * log_p).sum(-1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_mixed_with_the_uniform_distribution(smoothing):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10)).astype(np.float64) * 3
    labels = rng.integers(0, 10, 6)
    targets = jax.nn.one_hot(jnp.asarray(labels), 10)
    loss = cross_entropy(jnp.asarray(logits, jnp.float32), targets, smoothing)
    assert float(loss) == pytest.approx(smoothed_cross_entropy(logits, labels, smoothing), 1e-5)


def test_the_training_loss_is_smoothed_as_the_config_says(cpu_devices):
    # A model whose logits are its last bias whatever the image (zero last kernel), and a batch
    # whose labels are all 3: the step's loss is known exactly.
    config = tiny_config(label_smoothing=0.2)
    state = new_state(config)
    bias = np.linspace(-2, 2, 10).astype(np.float32)
    params = {**state.params, "dense_2": {"kernel": jnp.zeros((4096, 10)), "bias": bias}}
    synthetic = synthetic_dataset("mnist", 64, 32)
    threes = Split(synthetic.train.images, np.full(64, 3, np.int32))
    dataset = Dataset("mnist", threes, synthetic.test, synthetic.class_names)
    _, (metrics,) = single_steps(
        config, dataset, cpu_devices[:1], 1, state=state.replace(params=params)
    )
    loss = float(metrics["loss_sum"] / metrics["count"])
    logits, labels = np.tile(bias.astype(np.float64), (16, 1)), np.full(16, 3)
    assert loss == pytest.approx(smoothed_cross_entropy(logits, labels, 0.2), rel=1e-5)
    assert loss != pytest.approx(smoothed_cross_entropy(logits, labels, 0.0), rel=1e-2)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [5e-4, 0.0])
def test_the_written_out_sgd_gives_optax_chain_bits_and_keeps_a_non_finite_step(
    model_params, nesterov, weight_decay
):
    # Op by op (not compiled, so that no fusion rounds either side otherwise), over 3 steps of
    # the warm-up, the third not finite: it must leave parameters and optimiser state as they were.
    config = tiny_config(nesterov=nesterov, weight_decay=weight_decay, warmup_epochs=2.0)
    tx = make_optimizer(config, steps_per_epoch=4)
    sgd = MomentumSGD.from_config(config, steps_per_epoch=4)
    kernels_only = lambda params: jax.tree.map(decays, params)  # noqa: E731
    rng = np.random.default_rng(3)
    ours = theirs = (model_params, tx.init(model_params))
    for finite in (True, True, False):
        grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), model_params)
        params, opt_state = theirs
        updates, new_opt_state = tx.update(grads, opt_state, params)
        if finite:
            theirs = (optax.apply_updates(params, updates), new_opt_state)
        *ours, read = sgd.update_if_finite(grads, ours[1], ours[0], jnp.asarray(finite))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_array_equal(a, b)
        # What the update read: the gradients after optax's first link, the weight decay.
        decay = optax.add_decayed_weights(weight_decay, mask=kernels_only)
        decayed, _ = decay.update(grads, decay.init(params), params)
        for a, b in zip(jax.tree.leaves(read), jax.tree.leaves(decayed), strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(ours[1][1][1].count) == 2  # the schedule's count moved for the finite steps only


def test_the_optimiser_is_written_out_for_sgd_with_momentum_only():
    assert MomentumSGD.from_config(tiny_config(), steps_per_epoch=4) is not None
    assert MomentumSGD.from_config(tiny_config(momentum=0.0), steps_per_epoch=4) is None
    assert MomentumSGD.from_config(tiny_config(optimizer="adamw"), steps_per_epoch=4) is None
