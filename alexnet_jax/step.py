"""The training step: its math (`train_step`), and the compiled calls that run it on the devices.

`train_step(state, batch, rng) -> (state, metrics, gradients)` is pure per-device code in the
pmap style: it sees its slice of the global batch, and `jax.shard_map` maps it over the mesh's
batch axis (README: How the training step is parallel). `TrainCalls` compiles it, one step or
several per call to the devices.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec

from alexnet_jax import keys
from alexnet_jax.augmentation import Augmentation
from alexnet_jax.config import Derived
from alexnet_jax.guarded_update import MomentumSGD, apply_if_finite
from alexnet_jax.parallel import DATA_AXIS
from alexnet_jax.pipeline import TrainPartitions, device_batch
from alexnet_jax.state import TrainState, make_model


def cross_entropy(logits, targets, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy against (optionally smoothed) target distributions [B, classes]
    (one-hot labels, or mixed ones)."""
    targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(
    state: TrainState,
    batch,
    rng,
    *,
    augmentation: Augmentation,
    label_smoothing: float,
    ema_decay: float = 0.0,
    apply_fn,
    axis_name: str | None,
    sgd: MomentumSGD | None,
):
    """One optimiser step on this device's slice of the global batch, gradients averaged over all.

    Runs under `shard_map` over DATA_AXIS: `batch` ({'image': uint8, 'label': int}) is the
    local slice, `state` and `rng` (the step's key, `keys.step_key`) are the same on every
    device. BatchNorm averages its batch statistics over DATA_AXIS too, so the step equals one
    on the whole batch on one device. Returns the new state, metrics summed over the global
    batch with the global norm of the averaged gradients, and the gradients as the update read
    them (`guarded_update.apply_if_finite`; `make_train_steps` may keep them).

    `apply_fn` is the model's, with BatchNorm's `axis_name` the same as the step's (`step_body`).
    `axis_name` None is one device alone (`device_axis`): the means and sums over devices are left
    out, not computed over one. `sgd` is SGD with momentum written out, or None for `state.tx`
    (AdamW, or SGD without momentum: `config.optimizer`; `guarded_update.apply_if_finite`).
    """
    local = batch["label"].shape[0]
    device = jax.lax.axis_index(DATA_AXIS)
    augment_rng, dropout_rng = keys.augment_and_dropout_keys(rng)
    example_keys = keys.example_keys(augment_rng, device * local, local)
    x, targets = augmentation.apply(batch, example_keys, device * local, axis_name)

    def loss_fn(params):
        logits, updates = apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": keys.dropout_key(dropout_rng, device)},
            mutable=["batch_stats"],
        )
        loss = cross_entropy(logits, targets, label_smoothing)
        return loss, (logits, updates["batch_stats"])

    # Marking the replicated parameters as device-varying makes each device differentiate its own
    # loss (without it, shard_map would sum the gradients over devices); pmean then averages them.
    params = (
        state.params if axis_name is None else jax.lax.pcast(state.params, axis_name, to="varying")
    )
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = _over_devices(jax.lax.pmean, grads, axis_name)
    grads_squared_norm = optax.tree.norm(grads, squared=True)
    global_loss = _over_devices(jax.lax.pmean, loss, axis_name)
    finite = step_is_finite(global_loss, grads_squared_norm, batch_stats)
    state, gradients = apply_if_finite(state, grads, batch_stats, finite, ema_decay, sgd)
    metrics = _over_devices(
        jax.lax.psum,
        {
            "loss_sum": loss * local,
            "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
            "count": jnp.asarray(local, jnp.int32),
        },
        axis_name,
    )
    # For the step log (metric_log.py), from what the step computed anyway. (The parameters' norm
    # is taken once per log row instead, `run.parameter_norm`: a pass over them a step.)
    norms = {"grad_norm": jnp.sqrt(grads_squared_norm)}
    nonfinite = jnp.logical_not(finite).astype(jnp.int32)
    return state, {**metrics, **norms, "nonfinite": nonfinite}, gradients


def _over_devices(collective, tree, axis_name: str | None):
    """`collective(tree, axis_name)`, or `tree` as it is on one device alone (axis_name None)."""
    return tree if axis_name is None else collective(tree, axis_name)


def step_is_finite(loss, grads_squared_norm, batch_stats) -> jax.Array:
    """The guard: whether a step's loss, gradients and BatchNorm statistics are all finite.

    A step that is not leaves the state as it was (but for the step count), so neither a skipped
    step nor the state kept when stopping holds NaNs. The check comes before the update, so that
    XLA fuses the choice of old or new parameters and optimiser state into the update itself;
    checking the new parameters as well cost a fifth of the step on a CPU at 67x67 (README:
    Speed). Finite gradients give finite parameters unless an update overflows float32.

    The gradients are checked by their squared norm, which the step log needs anyway: a sum of
    squares is NaN or infinite when any element is, and also when the norm passes about 1.8e19,
    the square root of float32's largest number; such a gradient, logged as an infinite
    `grad_norm`, is no more usable than an infinite one. A pass of its own over the gradients
    (`all_finite`) made a CPU step about a tenth slower (benchmarks/results/cpu/guard-norm/).
    (The statistics are a few thousand numbers; checking them keeps their rounding that of a
    single step when several steps run in one call.)
    """
    return jnp.isfinite(loss) & jnp.isfinite(grads_squared_norm) & all_finite(batch_stats)


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating-point leaf is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    # x * 0 is 0 where x is finite and NaN where it is not, so the sum is finite exactly when
    # every element is: one fused reduction per leaf. (XLA simplifies x * 0 to 0 for integers
    # only, so the NaNs stay. jnp.all(jnp.isfinite(x)) made XLA:CPU write a boolean array as
    # large as the leaf and reduce it in a second pass.)
    return jnp.all(jnp.stack([jnp.isfinite(jnp.sum(x * 0)) for x in leaves]))


def step_body(
    config: ml_collections.ConfigDict, derived: Derived, devices: int, steps_per_epoch: int
):
    """`train_step` with the config's options bound, for a mesh of `devices`:
    (state, batch, rng) -> (state, metrics, gradients)."""
    axis_name = device_axis(devices)
    return functools.partial(
        train_step,
        augmentation=Augmentation.from_config(config, derived),
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay,
        apply_fn=make_model(config, derived, axis_name).apply,
        axis_name=axis_name,
        sgd=MomentumSGD.from_config(config, steps_per_epoch),
    )


def device_axis(devices: int) -> str | None:
    """The axis the step averages and sums over: DATA_AXIS, or None on one device, where the step
    has no collectives at all. XLA:CPU kept each mean over the one device as a copy, and the
    collectives took about 50 of 190 ms a step at batch 16 (README: Speed). (The same function
    to float32 rounding, not the same bits: XLA fuses the program without them otherwise.)"""
    return None if devices == 1 else DATA_AXIS


@dataclass(frozen=True)
class CompiledSteps:
    """`make_train_steps`'s train steps: run them, or lower their program ahead of time."""

    # (state, gradients, orders, first, count) -> (state, metrics a row per step, gradients)
    run: Callable
    # (state, gradients, orders, count) -> the program of `count` steps, lowered
    lower: Callable


def make_train_steps(
    config: ml_collections.ConfigDict,
    derived: Derived,
    mesh: Mesh,
    partitions: TrainPartitions,
    keep_gradients: bool,
) -> CompiledSteps:
    """Train steps compiled and data-parallel over `mesh`, to run or to lower (`CompiledSteps`).

    `run` trains steps `first` .. `first + count - 1` of the epoch whose `orders` are given (each
    device's order of its training partition, `TrainPartitions.epoch_orders`): each device
    gathers its slice of every batch from its partition, and each step draws its randomness
    from the carried state by `keys.step_key`.

    The steps are unrolled, with an optimisation barrier between them: the program is `count`
    copies of the one-step program in a row. They run the same steps as `count` calls of one
    step (the same batches and randomness), with the same bits for the parameters and
    BatchNorm statistics in the tests; XLA fuses the updates of the small one-dimensional
    leaves across the copies, so the momentum and the moving average of biases and BatchNorm
    scales can round a few ulp apart (tested to that bound). (As a rolled loop on the device,
    XLA:CPU ran the step 6x slower; as an unrolled lax.scan, it kept the backward convolutions
    off YNNPACK and rounded differently.) Compilation grows with
    `count`, and `count` is static: one program per distinct count (the configured one, and
    the remainder at the end of an epoch when it does not divide the steps per epoch).

    With `keep_gradients` (`keeps_gradients`), `gradients` are buffers shaped as the
    parameters, donated to the call, which the call's last step writes its gradients to and
    returns: what they hold is never read. Without, `gradients` is None both ways.
    """
    devices = mesh.devices.size
    body = step_body(config, derived, devices, partitions.steps_per_epoch)
    size = partitions.per_device_batch

    def per_device(state, gradients, images, labels, orders, first, *, count):
        def one(state, i):
            state = jax.lax.optimization_barrier(state)
            batch = device_batch(images, labels, orders, first + i, size=size)
            state, metrics, gradients = body(state, batch, keys.step_key(state.rng, state.step))
            return jax.lax.optimization_barrier((state, metrics)), gradients

        # Unrolled in Python, not by an unrolled lax.scan: in a scan's body XLA:CPU runs the
        # backward convolutions on its generic (Eigen) convolution instead of YNNPACK, several
        # times slower (benchmarks/results/cpu/step-breakdown/).
        rows = []
        for i in range(count):
            (state, metrics), gradients = one(state, jnp.int32(i))
            rows.append(metrics)
        metrics = jax.tree.map(lambda *row: jnp.stack(row), *rows)
        return state, metrics, gradients if keep_gradients else None

    @functools.cache
    def compiled(count: int):
        sharded = jax.shard_map(
            functools.partial(per_device, count=count),
            mesh=mesh,
            in_specs=(PartitionSpec(),) * 2 + (PartitionSpec(DATA_AXIS),) * 3 + (PartitionSpec(),),
            out_specs=(PartitionSpec(),) * 3,
            # On one device nothing is varying over the mesh (device_axis): nothing to check.
            check_vma=device_axis(devices) is not None,
        )
        donated = (0, 1) if donates_state(mesh, config) else (1,)
        # keep_unused: the gradients' buffers are never read, and must stay arguments to be
        # donated.
        return jax.jit(sharded, donate_argnums=donated, keep_unused=True)

    def arguments(state, gradients, orders, first):
        images, labels = partitions.images, partitions.labels
        return state, gradients, images, labels, orders, jnp.asarray(first, jnp.int32)

    def run(state, gradients, orders, first: int, count: int):
        return compiled(count)(*arguments(state, gradients, orders, first))

    def lower(state, gradients, orders, count: int):
        return compiled(count).lower(*arguments(state, gradients, orders, 0))

    return CompiledSteps(run, lower)


def donates_state(mesh: Mesh, config: ml_collections.ConfigDict) -> bool:
    """Whether a step reuses the old state's buffers for the new one: on accelerators, and on the
    CPU where the optimiser is written out (`MomentumSGD`), whose update runs in place there too:
    107.1 against 115.4 ms a step undonated (README: Speed). Through optax's chain (AdamW, SGD
    without momentum), the guard's choice between the old and the new state made XLA:CPU copy
    the old one first instead, and the step ran about a tenth faster without. The same bits
    either way (tests/test_train.py)."""
    return mesh.devices.flat[0].platform != "cpu" or MomentumSGD.applies_to(config)


def keeps_gradients(mesh: Mesh) -> bool:
    """Whether the step writes its gradients to buffers kept from call to call (on the CPU).

    XLA:CPU allocates a call's temporaries anew for every call, and glibc maps an allocation
    over 32 MB from the kernel afresh, page by page: with the gradients among them (87 MB at
    67x67, 67 MB of it the 4096x4096 kernel's) a step at batch 16 faulted in about 26,000
    pages, and that kernel's gradient took 14 ms to write (2.2 ms once kept). In buffers of their
    own, donated to each call, they stay mapped: the temporaries are 20 MB, the faults 2,
    and the step 77 ms instead of 114 (README: Speed; benchmarks/results/cpu/kept-gradients/).
    The same bits (tests). On accelerators XLA's allocator keeps its memory, so the buffers
    would only take memory.
    """
    return mesh.devices.flat[0].platform == "cpu"


class TrainCalls:
    """The calls to the devices that train an epoch, `steps_per_dispatch` steps each.

    `epoch(orders)` yields the work of each call, (orders, first step, step count): the last
    call of an epoch runs what is left. `dispatch(state, work) -> (state, metrics)` runs one.
    A single step is a call of one step: training has this one path. Where the step keeps its
    gradients in buffers of their own (`keeps_gradients`), they are held here between calls.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        derived: Derived,
        mesh: Mesh,
        partitions: TrainPartitions,
    ):
        self.per_call = config.steps_per_dispatch
        self.partitions = partitions
        self.keep_gradients = keeps_gradients(mesh)
        self._steps = make_train_steps(config, derived, mesh, partitions, self.keep_gradients)
        self._gradients = None

    def epoch(self, orders, start: int = 0):
        """The calls of an epoch from its step `start` on (a stopped epoch goes on from there)."""
        steps = self.partitions.steps_per_epoch
        return (
            (orders, first, min(self.per_call, steps - first))
            for first in range(start, steps, self.per_call)
        )

    def dispatch(self, state, work):
        """Run one call of `epoch`: (the state after its steps, their metrics a row per step)."""
        gradients = self.gradient_buffers(state)
        state, metrics, self._gradients = self._steps.run(state, gradients, *work)
        return state, metrics

    def lower(self, state, orders) -> list:
        """Every distinct program an epoch runs, lowered (`.compile()` fills jit's cache)."""
        counts = sorted({count for _, _, count in self.epoch(orders)})
        gradients = self.gradient_buffers(state)
        return [self._steps.lower(state, gradients, orders, count) for count in counts]

    def gradient_buffers(self, state):
        """The buffers for the next call's gradients: the last call's, or new ones shaped and
        placed as the parameters (also where a failed call has taken the last ones)."""
        if not self.keep_gradients:
            return None
        if self._gradients is None or any(g.is_deleted() for g in jax.tree.leaves(self._gradients)):
            self._gradients = jax.tree.map(jnp.zeros_like, state.params)
        return self._gradients


def per_step(metrics_list):
    """The stacked metrics of several calls, as one dict per step, in order."""
    for metrics in metrics_list:
        for i in range(len(metrics["nonfinite"])):
            yield {key: value[i] for key, value in metrics.items()}
