"""The training state (parameters, BatchNorm statistics, optimiser, step, rng) and its optimiser."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from alexnet_jax import keys
from alexnet_jax.config import Derived
from alexnet_jax.model import AlexNet
from alexnet_jax.parallel import DATA_AXIS


class TrainState(train_state.TrainState):
    """Flax's TrainState plus what the seed's BatchNorm layers and our rngs need."""

    batch_stats: Any
    rng: jax.Array  # raw uint32 key data, so that a checkpoint holds plain arrays
    # The exponential moving average of {"params", "batch_stats"} when config.ema_decay > 0
    # (evaluation, export and prediction then use it), else None.
    ema: Any = None


def inference_variables(state: TrainState) -> dict:
    """The variables a trained model is evaluated with: the moving average when there is one."""
    if state.ema is not None:
        return state.ema
    return {"params": state.params, "batch_stats": state.batch_stats}


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The decay after `step` updates: min(decay, (1 + step) / (10 + step)), so that the average
    forgets the random initialisation in the first few hundred steps (as TensorFlow's
    ExponentialMovingAverage with num_updates)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1 + step) / (10 + step))


def update_ema(state: TrainState, decay: float) -> TrainState:
    """`state` with its moving average moved towards its (new) parameters and statistics."""
    if state.ema is None:
        return state
    rate = ema_decay_at(decay, state.step)
    live = {"params": state.params, "batch_stats": state.batch_stats}
    return state.replace(
        ema=jax.tree.map(lambda avg, new: rate * avg + (1 - rate) * new, state.ema, live)
    )


def make_model(
    config: ml_collections.ConfigDict, derived: Derived, axis_name: str | None = DATA_AXIS
) -> AlexNet:
    """The config's model; BatchNorm averages its batch statistics over `axis_name` in training."""
    return AlexNet(
        num_classes=derived.num_classes,
        dropout_rate=config.dropout_rate,
        dtype=derived.dtype,
        axis_name=axis_name,
        stem=config.stem,
        pool_backward=config.pool_backward,
    )


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The learning rate by step: constant, or linear warmup then cosine decay to 0 at the end."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    total = config.num_epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total, 0.0)


def decays(param) -> bool:
    """Whether weight decay applies to a parameter: to kernels, not to biases or BatchNorm's."""
    return param.ndim > 1


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The optax optimiser of the config (its state is the training state's; SGD with momentum
    runs as `guarded_update.MomentumSGD`, its bits)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    kernels_only = lambda params: jax.tree.map(decays, params)  # noqa: E731
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=kernels_only)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
    )


def create_train_state(
    config: ml_collections.ConfigDict,
    derived: Derived,
    steps_per_epoch: int,
    variables: dict | None = None,
) -> TrainState:
    """Fresh parameters for the config's dataset and image size, seeded by `config.seed`.

    `variables` ({"params", "batch_stats"} of the model's shapes: a model imported from Keras)
    replace the random initialisation; the optimiser state, step and rng are fresh either way.
    """
    model = make_model(config, derived)
    init_rng, run_rng = keys.seed_keys(config.seed)
    if variables is None:
        dummy = jnp.zeros((1, config.image_size, config.image_size, derived.channels), jnp.float32)
        variables = jax.jit(lambda rng: model.init(rng, dummy, train=False))(init_rng)
    else:
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=make_optimizer(config, steps_per_epoch),
        rng=run_rng,
        # Copies: the state is donated to each step (`step.donates_state`), and a buffer may be
        # donated only once.
        ema=jax.tree.map(jnp.copy, dict(variables)) if config.ema_decay > 0 else None,
    )
    # An array step (not Python's 0) so that checkpoints and donated buffers treat it like the rest.
    return state.replace(step=jnp.zeros((), jnp.int32))
