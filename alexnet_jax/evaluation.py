"""Evaluation: a split placed on the devices, the compiled evaluator, and its results.

Training (each epoch), `eval`, `seeds`, `report` and `predict` all evaluate through here, so a
model is judged the same way everywhere.
"""

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexnet_jax import preprocess
from alexnet_jax.config import Derived
from alexnet_jax.data import Split
from alexnet_jax.distributed import gather
from alexnet_jax.parallel import DATA_AXIS, check_divisible
from alexnet_jax.state import TrainState, inference_variables


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    predictions: np.ndarray  # int32 [N], the predicted class of every example
    labels: np.ndarray  # int32 [N]
    num_classes: int

    @property
    def confusion(self) -> np.ndarray:
        """[true class, predicted class] -> count."""
        matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        np.add.at(matrix, (self.labels, self.predictions), 1)
        return matrix

    @property
    def per_class_accuracy(self) -> np.ndarray:
        matrix = self.confusion
        return np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)


def inference_options(config, derived: Derived) -> dict:
    """The keyword arguments of `class_probabilities` that a config sets."""
    return dict(
        image_size=config.image_size,
        mean=derived.mean,
        std=derived.std,
        dtype=derived.dtype,
        flip=config.eval_flip,
        shift=config.eval_shift,
    )


def view_shifts(shift: int) -> tuple[tuple[int, int], ...]:
    """The (down, right) shifts in source pixels of the test-time views: none, and with `shift`
    the four moves by that many pixels up, down, left and right."""
    if not shift:
        return ((0, 0),)
    return ((0, 0), (-shift, 0), (shift, 0), (0, -shift), (0, shift))


def views(flip: bool, shift: int) -> list[dict]:
    """The test-time views, in the order they are computed: each shift, then its mirror."""
    return [
        {"shift": [dy, dx], "flip": mirrored}
        for dy, dx in view_shifts(shift)
        for mirrored in ((False, True) if flip else (False,))
    ]


def view_logits(apply_fn, variables, images, *, image_size, mean, std, dtype, flip, shift=0):
    """The model's logits [views, B, classes] for each test-time view (`views`) of uint8
    images [B, h, w, C]. A shift moves the source image, zero-filled; the mirror is taken
    after the resize."""
    outputs = []
    for dy, dx in view_shifts(shift):
        moved = preprocess.shifted(images, dy, dx)
        x = preprocess.to_model_input(moved, image_size, mean, std, dtype)
        outputs.append(apply_fn(variables, x, train=False))
        if flip:
            outputs.append(apply_fn(variables, x[:, :, ::-1], train=False))
    return jnp.stack(outputs)


def class_probabilities(state: TrainState, images, **options):
    """Softmax outputs [B, classes] of uint8 images [B, h, w, C], as evaluation sees them: the
    mean of the test-time views' probabilities. `options` are those of `inference_options`."""
    logits = view_logits(state.apply_fn, inference_variables(state), images, **options)
    return jnp.mean(jax.nn.softmax(logits), axis=0)


def combined_logits(logits):
    """One set of logits [B, classes] from the views' [views, B, classes] whose softmax is the
    mean of theirs (`class_probabilities`): a single view's own logits, else the log of the
    mean probability."""
    if logits.shape[0] == 1:
        return logits[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0) - jnp.log(logits.shape[0])


def eval_step(state: TrainState, batch, **options):
    """Evaluate one batch on one device: summed loss and hits, and the predicted classes.

    `batch` has uint8 `image`, int `label` and a 0/1 `mask` that marks padding examples;
    `options` are those of `inference_options`.
    """
    probs = class_probabilities(state, batch["image"], **options)
    label_probs = jnp.take_along_axis(probs, batch["label"][:, None], axis=1)[:, 0]
    losses = -jnp.log(jnp.maximum(label_probs, 1e-12))
    predictions = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    mask = batch["mask"]
    sums = {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum((predictions == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    return sums, predictions


def make_evaluator(config, derived: Derived, mesh: Mesh):
    """A compiled function that evaluates a whole `DeviceSplit` in one dispatch.

    Each device scans over its slices of all the batches, so the host waits once per split and
    no two evaluation programs with collectives are ever in flight at the same time.
    """
    step = functools.partial(eval_step, **inference_options(config, derived))

    def per_device(state, batches):
        def body(totals, batch):
            sums, predictions = step(state, batch)
            return jax.tree.map(jnp.add, totals, sums), predictions

        # A zero taken from this device's data, so the carry varies over devices like the sums.
        zero = jnp.zeros_like(batches["mask"][0, 0])
        zeros = {"loss_sum": zero, "correct": zero, "count": zero}
        totals, predictions = jax.lax.scan(body, zeros, batches)
        return jax.lax.psum(totals, DATA_AXIS), predictions

    return jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(None, DATA_AXIS)),
            out_specs=(PartitionSpec(), PartitionSpec(None, DATA_AXIS)),
        )
    )


class DeviceSplit:
    """A split placed once on the devices as [batches, batch, ...], padded with a 0/1 mask.

    Each device holds its slice of every batch. With several processes, each passes the whole
    split, so that every example is evaluated exactly once over all devices.
    """

    def __init__(self, split: Split, batch_size: int, mesh: Mesh):
        check_divisible(batch_size, mesh, "eval_batch_size")
        self.size = len(split)
        padded = -(-self.size // batch_size) * batch_size
        pad = padded - self.size

        sharding = NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))

        def put(array):
            array = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
            batches = array.reshape(padded // batch_size, batch_size, *array.shape[1:])
            # Each process places the slices its own devices hold (all of them on one process).
            return jax.make_array_from_callback(batches.shape, sharding, lambda i: batches[i])

        self.batches = {
            "image": put(split.images),
            "label": put(split.labels),
            "mask": put(np.ones(self.size, np.float32)),
        }
        self.labels = np.asarray(split.labels)


def evaluate(state: TrainState, split: DeviceSplit, evaluator, num_classes: int) -> EvalResult:
    """Run `evaluator` (from `make_evaluator`) over the whole split."""
    totals, predictions = evaluator(state, split.batches)
    wait_for((totals, predictions))
    totals = jax.device_get(totals)  # summed over all devices, the same on every process
    return EvalResult(
        loss=float(totals["loss_sum"] / totals["count"]),
        accuracy=float(totals["correct"] / totals["count"]),
        predictions=gather(predictions).reshape(-1)[: split.size],
        labels=split.labels,
        num_classes=num_classes,
    )


def wait_for(arrays) -> None:
    """Wait for `arrays` in short sleeps, not in one call into the runtime: Python raises a
    Ctrl-C's KeyboardInterrupt only between its own steps, and the whole split is one call."""
    for array in jax.tree.leaves(arrays):
        while not array.is_ready():
            time.sleep(0.002)


def format_result(result: EvalResult, class_names) -> str:
    width = max(len(name) for name in class_names)
    lines = [
        f"test loss {result.loss:.4f}   top-1 accuracy {result.accuracy:.2%}   "
        f"({len(result.labels)} images)",
        "",
        "per-class accuracy:",
    ]
    for name, accuracy in zip(class_names, result.per_class_accuracy, strict=True):
        lines.append(f"  {name:<{width}}  {accuracy:.2%}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    matrix = result.confusion
    cell = max(5, len(str(matrix.max())) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(class_names))))
    numbered = list(class_names) != [str(i) for i in range(len(class_names))]
    for i, (name, row) in enumerate(zip(class_names, matrix, strict=True)):
        label = f"{name:<{width}}{i:>2}" if numbered else f"{name:>{width + 2}}"
        lines.append(label + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def result_json(result: EvalResult, class_names, **extra) -> dict:
    return {
        **extra,
        "loss": result.loss,
        "accuracy": result.accuracy,
        "num_examples": int(len(result.labels)),
        "class_names": list(class_names),
        "per_class_accuracy": {
            name: float(a) for name, a in zip(class_names, result.per_class_accuracy, strict=True)
        },
        "confusion_matrix": result.confusion.tolist(),
    }
