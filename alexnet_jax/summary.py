"""Keras-style layer table of the model: `python -m alexnet_jax.summary --dataset cifar10`."""

import argparse
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import DATASETS
from alexnet_jax.errors import UserError, cli
from alexnet_jax.model import LAYER_OUTPUTS, LAYERS, MIN_IMAGE_SIZE, AlexNet

KERAS_TYPES = {
    "conv": "Conv2D",
    "norm": "BatchNormalization",
    "pool": "MaxPooling2D",
    "flatten": "Flatten",
    "dense": "Dense",
    "dropout": "Dropout",
    "logits": "Dense",
}


@dataclass(frozen=True)
class LayerRow:
    name: str
    keras_type: str
    output_shape: tuple  # (None, ...) as Keras prints it
    params: int


@dataclass(frozen=True)
class Summary:
    rows: tuple[LayerRow, ...]
    trainable: int
    non_trainable: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


def summarize(model: AlexNet, image_shape: tuple[int, int, int]) -> Summary:
    """Shapes and parameter counts per layer, computed abstractly (no weights are materialised)."""
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)  # no image is made either
    _, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False, mutable=True), images
    )
    outputs = variables[LAYER_OUTPUTS]["outputs"]

    def count(collection, name):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(collection.get(name, {})))

    rows = tuple(
        LayerRow(
            name,
            KERAS_TYPES[kind],
            (None, *output.shape[1:]),
            count(variables["params"], name) + count(variables.get("batch_stats", {}), name),
        )
        for (name, kind, _), output in zip(LAYERS, outputs, strict=True)
    )
    trainable = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    non_trainable = sum(
        int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables.get("batch_stats", {}))
    )
    return Summary(rows, trainable, non_trainable)


def format_summary(summary: Summary) -> str:
    """The table in the layout of Keras' `model.summary()`, as in the seed's README."""
    rule, double = "_" * 65, "=" * 65
    lines = [rule, f"{'Layer (type)':<29}{'Output Shape':<26}Param #", double]
    for i, row in enumerate(summary.rows):
        shape = "(" + ", ".join(str(d) for d in row.output_shape) + ")"
        # Keras cuts the "name (type)" column at 28 characters: "batch_normalization (BatchNo".
        label = f"{row.name} ({row.keras_type})"[:28]
        lines.append(f"{label:<29}{shape:<26}{row.params}")
        lines.append(double if i == len(summary.rows) - 1 else rule)
    lines += [
        f"Total params: {summary.total:,}",
        f"Trainable params: {summary.trainable:,}",
        f"Non-trainable params: {summary.non_trainable:,}",
        rule,
    ]
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--image-size", type=int, default=224, help="side of the square input")
    args = parser.parse_args(argv)
    if args.image_size < MIN_IMAGE_SIZE:
        raise UserError(
            f"--image-size {args.image_size} is too small: AlexNet needs at least {MIN_IMAGE_SIZE}"
        )
    channels = DATASETS[args.dataset].image_shape[-1]
    print(format_summary(summarize(AlexNet(), (args.image_size, args.image_size, channels))))


if __name__ == "__main__":
    main()
