"""One run's set-up and its epoch driver, shared by `train`, `tta`, `sweep` and `bench`.

    run = build(config)                  # mesh, data on the devices, compiled calls, evaluator
    state = run.fresh_state()
    state, row, result = run_epoch(run, state, epoch, stop)   # train one epoch, evaluate

`train` adds resuming, checkpoints and the run directory around this; `tta` a target accuracy;
`sweep` a table of recipe variants on the validation split; `bench` times `train_epoch` and
`evaluate` apart.
"""

import collections
import time
from dataclasses import dataclass

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from alexnet_jax.config import Derived, derive, validate
from alexnet_jax.data import Dataset, TrainingData, load_training_data, training_data_from
from alexnet_jax.distributed import is_primary
from alexnet_jax.errors import UserError
from alexnet_jax.evaluation import DeviceSplit, EvalResult, evaluate, make_evaluator
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.parallel import check_divisible, make_mesh, replicated
from alexnet_jax.pipeline import TrainPartitions
from alexnet_jax.state import TrainState, create_train_state
from alexnet_jax.step import TrainCalls, per_step

# Calls to the devices that may be queued or running at once. The host dispatches call n + 1
# only once call n - 1 has finished: the devices never wait for the host, and a stop request
# takes effect after at most the call in progress (README: Failure and recovery).
CALLS_IN_FLIGHT = 2


# The fields of an epoch's row that are timings: they differ between runs of the same bits.
# An epoch's seconds split into training, evaluation, the blocking part of checkpointing and the
# rest (writing the metrics and curves, logging): epoch = train + eval + checkpoint + other.
TIMING_FIELDS = frozenset(
    {
        "train_seconds",
        "eval_seconds",
        "checkpoint_seconds",
        "other_seconds",
        "epoch_seconds",
        "train_images_per_second",
    }
)


class NonFiniteLoss(UserError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class Run:
    """Everything one training run needs on the devices, built once by `build`."""

    config: ml_collections.ConfigDict
    derived: Derived
    mesh: Mesh
    data: TrainingData  # this process's training shard and the evaluation split
    partitions: TrainPartitions  # the training images on the devices
    evaluation: DeviceSplit  # the evaluation split on the devices
    calls: TrainCalls
    evaluator: object  # from `make_evaluator`

    @property
    def steps_per_epoch(self) -> int:
        """The global steps of one epoch (`TrainPartitions.steps_per_epoch`)."""
        return self.partitions.steps_per_epoch

    def fresh_state(self) -> TrainState:
        """The config's initial state, replicated on the mesh."""
        state = create_train_state(self.config, self.derived, self.steps_per_epoch)
        return jax.device_put(state, replicated(self.mesh))

    def abstract_state(self) -> TrainState:
        """The shapes and dtypes of `fresh_state`, without computing it (to restore into)."""
        return jax.eval_shape(
            lambda: create_train_state(self.config, self.derived, self.steps_per_epoch)
        )

    def lower(self, state: TrainState) -> tuple[list, object]:
        """The training programs an epoch runs and the evaluation program, lowered (ahead of
        time: `.compile()` fills the jitted calls' caches)."""
        training = self.calls.lower(state, self.partitions.epoch_orders(state.rng, 0))
        return training, self.evaluator.lower(state, self.evaluation.batches)

    def compile_ahead(self, state: TrainState) -> None:
        """Compile the training programs an epoch runs and the evaluation program now, into the
        jitted calls' caches, so that the first epoch runs without compiling."""
        training, evaluation = self.lower(state)
        for lowered in [*training, evaluation]:
            lowered.compile()

    def evaluate(self, state: TrainState) -> EvalResult:
        """`state`'s loss, accuracy and predictions on the evaluation split."""
        return evaluate(state, self.evaluation, self.evaluator, self.derived.num_classes)


def build(config: ml_collections.ConfigDict, dataset: Dataset | None = None, devices=None) -> Run:
    """Set up a run of `config` on `devices` (default: all): read this process's share of the
    data (from TFDS, or from `dataset` for tests and synthetic benchmarks) and place it."""
    validate(config)
    derived = derive(config)
    mesh = make_mesh(devices)
    # Before any data is read; TrainPartitions and DeviceSplit check again for their own callers.
    check_divisible(config.batch_size, mesh)
    check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    process, processes = jax.process_index(), jax.process_count()
    if dataset is None:
        data = load_training_data(config, process, processes)
    else:
        data = training_data_from(dataset, config, process, processes)
    partitions = TrainPartitions(data, mesh, config.batch_size)
    return Run(
        config=config,
        derived=derived,
        mesh=mesh,
        data=data,
        partitions=partitions,
        evaluation=DeviceSplit(data.evaluation, config.eval_batch_size, mesh),
        calls=TrainCalls(config, derived, mesh, partitions),
        evaluator=make_evaluator(config, derived, mesh),
    )


def build_placed(
    config: ml_collections.ConfigDict,
    dataset: Dataset | None = None,
    devices=None,
    seconds: dict | None = None,
) -> tuple[Run, TrainState]:
    """`build` and a fresh state, waited for until the data and the state are on the devices
    (so that timing it times their placement too).

    `seconds`, when given, receives how long each part took: `backend` (JAX's start on its
    devices, when it had not started yet: on a GPU, CUDA and its libraries), `data` (reading the
    dataset and placing it) and `state` (the fresh state, its initialisation compiled).
    """
    began = time.perf_counter()
    jax.devices()
    started = time.perf_counter()
    run = build(config, dataset, devices)
    jax.block_until_ready((run.partitions.images, run.evaluation.batches))
    placed = time.perf_counter()
    state = jax.block_until_ready(run.fresh_state())
    if seconds is not None:
        seconds.update(
            backend=started - began, data=placed - started, state=time.perf_counter() - placed
        )
    return run, state


@dataclass
class EpochProgress:
    """How far an epoch's training went: where a stopped epoch goes on, bit for bit.

    The epoch's batches are a pure function of the state's rng and the epoch, and its calls can
    start at any step, so the state after `steps_done` steps and the summed metrics of those
    steps are all it takes. A partial checkpoint records it (`to_json`).
    """

    epoch: int  # 0-based
    steps_done: int = 0
    totals: dict | None = None  # `drive`'s summed metrics of those steps
    train_seconds: float = 0.0  # spent on them

    def to_json(self, steps_per_epoch: int) -> dict:
        """The progress as a partial checkpoint records it (`from_json` reads it back)."""
        # Each sum keeps its type (a NumPy float32 sums on in float32), so that the epoch's
        # metrics come out with the bits of an uninterrupted epoch.
        totals = {
            key: [value.item(), value.dtype.name] if isinstance(value, np.generic) else value
            for key, value in (self.totals or {}).items()
        }
        return {
            "epoch": self.epoch + 1,
            "steps_done": self.steps_done,
            "steps_per_epoch": steps_per_epoch,
            "totals": totals,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_json(cls, saved: dict) -> "EpochProgress":
        """The progress that `to_json` recorded, each sum with its own type again."""
        totals = {
            key: np.dtype(value[1]).type(value[0]) if isinstance(value, list) else value
            for key, value in saved["totals"].items()
        }
        return cls(saved["epoch"] - 1, saved["steps_done"], totals, saved["train_seconds"])


def run_epoch(
    run: Run,
    state: TrainState,
    epoch: int,
    stop: StopRequests,
    progress: EpochProgress | None = None,
    on_log=None,
    timer=None,
    evaluate: bool = True,
):
    """Train epoch `epoch` (0-based), then evaluate: (state, the epoch's row, the evaluation).

    The row and the evaluation are None when a stop was requested: the epoch is then incomplete
    and not evaluated. With `evaluate` False the evaluation is None and the row has no
    evaluation fields (`add_evaluation` adds them later). `progress`, when given, is where the
    epoch goes on from (a stopped one) and is brought up to where it stopped. `on_log` and
    `timer`: see `drive`.
    """
    progress = progress or EpochProgress(epoch)
    start = time.perf_counter()
    state, totals = train_epoch(run, state, epoch, stop, progress, on_log, timer)
    jax.block_until_ready(state)
    trained = time.perf_counter()
    progress.totals = totals
    progress.steps_done = int(state.step) - epoch * run.steps_per_epoch
    progress.train_seconds += trained - start
    if stop.stopped:
        return state, None, None
    row = {
        "epoch": epoch + 1,
        "step": int(state.step),
        "train_loss": float(totals["loss_sum"] / totals["count"]),
        "train_accuracy": float(totals["correct"] / totals["count"]),
        "skipped_steps": totals["skipped"],
        "train_seconds": progress.train_seconds,
        "eval_seconds": 0.0,
        "train_images_per_second": float(totals["count"]) / progress.train_seconds,
    }
    result = add_evaluation(run, state, row) if evaluate else None
    return state, row, result


def add_evaluation(run: Run, state: TrainState, row: dict) -> EvalResult:
    """Evaluate `state` and put the figures and their time into its epoch's `row`."""
    start = time.perf_counter()
    result = run.evaluate(state)
    row["test_loss"], row["test_accuracy"] = result.loss, result.accuracy
    row["eval_split"] = run.data.eval_name
    row["eval_seconds"] += time.perf_counter() - start
    return result


def train_epoch(
    run: Run,
    state: TrainState,
    epoch: int,
    stop: StopRequests,
    progress: EpochProgress | None = None,
    on_log=None,
    timer=None,
):
    """Train one epoch (from `progress`, if given); returns the state and the summed metrics of
    its finite steps.

    Stops early (without error) when a stop was requested; raises NonFiniteLoss at the first
    non-finite step unless the config skips them.
    """
    config = run.config
    start = progress.steps_done if progress else 0
    orders = run.partitions.epoch_orders(state.rng, epoch)
    calls = run.calls.epoch(orders, start)
    steps = run.steps_per_epoch - start
    totals = progress.totals if progress else None
    return drive(
        state, calls, steps, run.calls.dispatch, epoch, config, stop, totals, on_log, timer
    )


def drive(
    state,
    calls,
    steps: int,
    dispatch,
    epoch: int,
    config,
    stop: StopRequests,
    totals=None,
    on_log=None,
    timer=None,
):
    """Run an epoch's `calls` by `dispatch(state, call) -> (state, metrics)`, with the progress
    bar; returns the state and the summed metrics of the finite steps (added to `totals`, the
    sums of the steps before, when an epoch goes on after a stop).

    A call runs one step or several; its metrics are stacked, a row per step. They are fetched
    every `config.log_every` steps, which is when the progress bar moves and `on_log(steps,
    seconds)` gets the finite steps fetched, as (1-based global step, metrics) pairs (the last
    with `param_norm`, the parameters' norm after it), and the seconds since the previous fetch.
    `timer` (a `cost.FirstCallsTimer`) is told of each call until it has timed one after
    compilation.
    """
    totals = dict(totals or {"loss_sum": 0.0, "correct": 0, "count": 0, "skipped": 0})
    first_step = int(state.step)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=not is_primary(),
    )
    pending, pending_steps = [], 0
    in_flight = collections.deque()
    interval_start = time.perf_counter()

    def drain():
        nonlocal pending, pending_steps, interval_start
        # Fetching the metrics waits for the device; doing it every few steps keeps the
        # device busy in between.
        images, logged = 0, []
        for offset, metrics in enumerate(per_step(jax.device_get(pending))):
            step = first_step + bar.n + offset + 1
            if metrics["nonfinite"]:
                if config.nonfinite == "stop":
                    raise NonFiniteLoss(
                        f"the loss or gradients became non-finite at step {step} (epoch "
                        f"{epoch + 1}); the run stopped without saving it, so the last "
                        "checkpoint is intact: lower learning_rate, or set "
                        "--config.nonfinite=skip to skip such steps"
                    )
                totals["skipped"] += 1
                say(f"warning: skipped step {step}: non-finite loss or gradients")
                continue
            for key in ("loss_sum", "correct", "count"):
                totals[key] += metrics[key]
            images += int(metrics["count"])
            logged.append((step, metrics))
        bar.update(pending_steps)
        pending, pending_steps = [], 0
        now = time.perf_counter()
        if images:
            bar.set_postfix(
                loss=f"{totals['loss_sum'] / totals['count']:.4f}",
                acc=f"{totals['correct'] / totals['count']:.4f}",
                img_s=f"{images / (now - interval_start):.0f}",
            )
            if on_log is not None:
                # The state now is that after the last step fetched, and after the last finite
                # one too (a step that is not finite keeps the parameters).
                step, metrics = logged[-1]
                logged[-1] = (step, {**metrics, "param_norm": parameter_norm(state.params)})
                on_log(logged, now - interval_start)
        interval_start = now

    for call in calls:
        if timer is not None:
            timer.dispatching()
        state, metrics = dispatch(state, call)
        if timer is not None:
            timer.dispatched(metrics, len(metrics["nonfinite"]))
        pending.append(metrics)
        pending_steps += len(metrics["nonfinite"])
        in_flight.append(metrics)
        if len(in_flight) >= CALLS_IN_FLIGHT:
            jax.block_until_ready(in_flight.popleft())
        synchronise = pending_steps >= config.log_every
        if synchronise:
            drain()
        if stop.should_stop(synchronise):
            break
    drain()
    bar.close()
    stop.should_stop(synchronise=True)  # the epoch's end: every process decides here too
    if not stop.stopped and totals["count"] == 0:
        raise NonFiniteLoss(
            f"every step of epoch {epoch + 1} was non-finite and skipped: lower learning_rate"
        )
    return state, totals


@jax.jit
def parameter_norm(params) -> jax.Array:
    """The global L2 norm of the parameters, for the step log's rows (`param_norm`)."""
    return optax.tree.norm(params)


def say(message: str) -> None:
    """A line between progress bars, from process 0 only."""
    if is_primary():
        tqdm.write(message)
