"""The guarded update: a step's new training state where the step is finite, else the old one.

`apply_if_finite` is what `train_step` does with its gradients once the guard
(`step.step_is_finite`) has decided. For SGD with momentum, the trainer's optimiser, it runs
`MomentumSGD`: optax's chain of `state.make_optimizer` written out, with the same bits (tests),
so that the new parameters are computed from the momentum as kept. That lets XLA update both in
place, in the donated buffers of the old state. Through optax's chain, the parameters' update
recomputes the new momentum from the old one while the momentum's update reads the old
parameters (weight decay), so XLA either wrote the new state to fresh buffers or copied the old
one first: on a CPU at batch 16, 118.0 (not donated) or 133.8 ms (donated) a step against the
written-out update's 107.1 (README: Speed; benchmarks/results/cpu/in-place/).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from alexnet_jax.state import (
    TrainState,
    decays,
    learning_rate_schedule,
    update_ema,
)


@dataclasses.dataclass(frozen=True)
class MomentumSGD:
    """`optax.chain(add_decayed_weights, sgd(momentum, nesterov))` of `make_optimizer`, whose
    state it reads and writes, as one guarded update."""

    learning_rate: Callable  # the schedule, of optax's update count
    momentum: float
    nesterov: bool
    weight_decay: float

    @staticmethod
    def applies_to(config: ml_collections.ConfigDict) -> bool:
        return config.optimizer == "sgd" and bool(config.momentum)

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, steps_per_epoch: int
    ) -> "MomentumSGD | None":
        """The config's optimiser written out, or None where it is not SGD with momentum."""
        if not cls.applies_to(config):
            return None
        schedule = learning_rate_schedule(config, steps_per_epoch)
        return cls(schedule, config.momentum, config.nesterov, config.weight_decay)

    def update_if_finite(self, grads, opt_state, params, finite):
        """(params, opt_state) after the update where `finite`, else as they were, and the
        gradients with the weight decay added, as the update read them."""
        decay_state, (trace_state, schedule_state) = opt_state
        if self.weight_decay:  # (optax's add_decayed_weights leaves a zero decay out too)
            grads = jax.tree.map(
                lambda g, p: g + self.weight_decay * p if decays(p) else g, grads, params
            )
        trace = keep_if(
            finite,
            jax.tree.map(lambda g, t: g + self.momentum * t, grads, trace_state.trace),
            trace_state.trace,
        )
        # The new momentum as kept: where the step is not finite, the parameters are kept anyway.
        direction = (
            jax.tree.map(lambda g, t: g + self.momentum * t, grads, trace)
            if self.nesterov
            else trace
        )
        count = schedule_state.count
        step_size = jnp.asarray(-self.learning_rate(count), jnp.float32)
        params = keep_if(
            finite,
            jax.tree.map(lambda p, d: (p + step_size * d).astype(p.dtype), params, direction),
            params,
        )
        opt_state = (
            decay_state,
            (
                trace_state._replace(trace=trace),
                schedule_state._replace(
                    count=jnp.where(finite, optax.safe_increment(count), count)
                ),
            ),
        )
        return params, opt_state, grads


def apply_if_finite(
    state: TrainState,
    grads,
    batch_stats,
    finite: jax.Array,
    ema_decay: float,
    sgd: MomentumSGD | None,
) -> tuple[TrainState, Any]:
    """The state after the step's update (gradients, BatchNorm statistics, moving average) where
    `finite`, else as it was; the step count moves on either way. `sgd` is the optimiser written
    out (`MomentumSGD.from_config`), or None for optax's update of `state.tx`.

    Also returns the gradients as the update read them (with the weight decay added, for
    `sgd`): the compiled step may keep them in buffers of their own (`step.keeps_gradients`)."""
    if sgd is None:
        updated = state.apply_gradients(grads=grads)
        params = keep_if(finite, updated.params, state.params)
        opt_state = keep_if(finite, updated.opt_state, state.opt_state)
    else:
        params, opt_state, grads = sgd.update_if_finite(
            grads, state.opt_state, state.params, finite
        )
    updated = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        batch_stats=keep_if(finite, batch_stats, state.batch_stats),
    )
    if updated.ema is not None:
        updated = updated.replace(
            ema=keep_if(finite, update_ema(updated, ema_decay).ema, state.ema)
        )
    return updated, grads


def keep_if(finite: jax.Array, new, old):
    """`new` where `finite`, else `old`, leaf by leaf."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
