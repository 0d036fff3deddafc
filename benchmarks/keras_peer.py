"""Baseline, not part of alexnet_jax: the seed AlexNet in Keras 3 on the JAX backend, against ours.

    python benchmarks/keras_peer.py [--image-size 224] [--batch-size 512]
        [--policies float32,mixed_bfloat16] [--ours conv11-k1,s2d-k1] [--out peers.json]

The peer is what a Keras user would write: the seed's `Sequential` (its layers from
`alexnet_jax.keras_model`, the parameter counts checked at start against alexnet_jax's model)
behind `Resizing` and `Rescaling(1/255)` layers on uint8 input, compiled with SGD and sparse
categorical cross-entropy, trained by `model.fit` on in-memory uint8 arrays. In the same process
and on the same device, `alexnet_jax.bench.measure` times our `make train-cifar10` step at the
same batch, image size and precision (`float32`, or bfloat16 for `mixed_bfloat16`). Ours does
more per image (random crop and flip, per-channel normalisation); the peer has no augmentation.
(Keras' Resizing rounds resized uint8 images to integers; that does not change the timing.)

Both train on synthetic uint8 images of CIFAR-10's shape for one warm-up epoch (compilation)
and `--epochs` timed epochs of `--steps` steps, in turn: each of our epochs follows one of Keras',
so that the load of a shared machine falls on both alike (measured one after the other, the
ratio moved by a quarter between runs minutes apart). Throughput is images over the median timed
epoch; each of ours is compared with the Keras epochs that ran just before its timed ones.
"""

import argparse
import contextlib
import statistics
import sys
import time

import jax

from alexnet_jax import bench, keras_model, outputs  # keras_model starts Keras on JAX
from alexnet_jax.config import load_config
from alexnet_jax.data import spec, synthetic_dataset
from alexnet_jax.errors import UserError, cli
from alexnet_jax.model import AlexNet
from alexnet_jax.summary import summarize

keras = keras_model.keras

DTYPES = {"float32": "f32", "mixed_bfloat16": "bf16"}
DEFAULTS = {
    "cpu": dict(image_size=67, batch_size=16, steps=2, epochs=1, policies="float32"),
    "accelerator": dict(
        image_size=224, batch_size=512, steps=48, epochs=3, policies="float32,mixed_bfloat16"
    ),
}


def seed_model(image_size: int, source_shape=(32, 32, 3), num_classes: int = 10):
    """The seed's Keras model, with the resize to `image_size` and the scaling to [0, 1] first."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(source_shape, dtype="uint8"),
            layers.Resizing(image_size, image_size),
            layers.Rescaling(1 / 255),
            *keras_model.seed_layers(num_classes),
            # Keras' mixed-precision advice: the softmax in float32.
            layers.Activation("softmax", dtype="float32"),
        ]
    )


def check_parameters(model, image_size: int, source_shape) -> int:
    """The peer must have exactly our model's parameters (the seed's: 46,793,482 at 224)."""
    ours = summarize(AlexNet(), (image_size, image_size, source_shape[-1])).total
    if model.count_params() != ours:
        raise AssertionError(f"Keras peer has {model.count_params():,} parameters, ours {ours:,}")
    return ours


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch, ended by waiting for the model's variables."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        jax.block_until_ready([v.value for v in self.model.variables])
        self.seconds.append(time.perf_counter() - self.start)


class KerasPeer:
    """The peer compiled and warmed up (one epoch); `epoch()` trains and times one more.

    `model.fit` runs one epoch per call, so that our epochs can run between its epochs; the
    compiled train function is kept between calls, and the timer times each epoch alone.
    """

    def __init__(self, policy: str, image_size: int, batch_size: int, steps: int):
        self.policy, self.batch_size = policy, batch_size
        keras.utils.set_random_seed(0)
        dataset = synthetic_dataset("cifar10", train_size=batch_size * steps, test_size=1)
        self.x, self.y = dataset.train.images, dataset.train.labels
        with self.dtype_policy():
            self.model = seed_model(image_size, self.x.shape[1:])
            self.parameters = check_parameters(self.model, image_size, self.x.shape[1:])
            self.model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        self.timer, self.losses = EpochTimer(), []
        self.epoch()  # the warm-up epoch: compilation

    @contextlib.contextmanager
    def dtype_policy(self):
        keras.mixed_precision.set_global_policy(self.policy)
        try:
            yield
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def epoch(self) -> None:
        with self.dtype_policy():
            history = self.model.fit(
                self.x,
                self.y,
                batch_size=self.batch_size,
                epochs=1,
                shuffle=True,
                verbose=0,
                callbacks=[self.timer],
            )
        self.losses.append(history.history["loss"][-1])

    def result(self, timed: list[float]) -> dict:
        """images/s over the median of the `timed` epochs' seconds."""
        images = len(self.x)
        return {
            "policy": self.policy,
            "parameters": self.parameters,
            "images_per_second": round(images / statistics.median(timed), 1),
            "epoch_seconds": [round(s, 4) for s in self.timer.seconds],
            "images_per_epoch": images,
            "final_loss": round(float(self.losses[-1]), 4),
        }


def run(args) -> dict:
    kind = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if spec(load_config(args.config).dataset).image_shape != (32, 32, 3):
        raise UserError("the Keras peer is CIFAR-10's: pass --config experiments/cifar10.py")
    device = jax.devices()[:1]
    comparisons = []
    for policy in args.policies.split(","):
        if policy not in DTYPES:
            raise UserError(f"policy {policy!r} is not one of {', '.join(DTYPES)}")
        peer = KerasPeer(policy, args.image_size, args.batch_size, args.steps)
        ours, keras_timed = [], []
        for variant in args.ours.split(","):
            stem, _, k = variant.partition("-")
            name = f"{stem}-{DTYPES[policy]}-{k}"
            config = bench.base_config(args.config, args.image_size, args.batch_size, [])
            config.batch_size = args.batch_size
            config.update(bench.configuration(name))
            # A Keras epoch before each of ours: the two in turn, under the same load.
            result = bench.measure(
                config,
                device,
                steps=args.steps,
                epochs=args.epochs,
                eval_batches=1,
                before_epoch=peer.epoch,
            )
            paired = peer.timer.seconds[-args.epochs :]  # those before our timed epochs
            keras_timed += paired
            rate = result["train"]["images_per_second"]
            keras_rate = len(peer.x) / statistics.median(paired)
            ratio = round(rate / keras_rate, 3)
            ours.append(
                {
                    "name": name,
                    "ratio_to_keras": ratio,
                    "keras_images_per_second": round(keras_rate, 1),
                    **result,
                }
            )
        keras_result = peer.result(keras_timed)
        print(f"keras {policy}: {keras_result['images_per_second']:,.0f} img/s", file=sys.stderr)
        comparisons.append({"keras": keras_result, "ours": ours})
    return {
        **bench.environment(),
        "keras": keras.__version__,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "comparisons": comparisons,
    }


def format_table(document: dict) -> str:
    """A row per configuration of ours, beside the Keras epochs timed in turn with it."""
    header = f"{'policy':<16}{'ours':<16}{'img/s':>8}{'keras img/s':>13}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for c in document["comparisons"]:
        for o in c["ours"]:
            lines.append(
                f"{c['keras']['policy']:<16}{o['name']:<16}"
                f"{o['train']['images_per_second']:>8,.0f}{o['keras_images_per_second']:>13,.0f}"
                f"{o['ratio_to_keras']:>7.2f}x"
            )
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="experiments/cifar10.py")
    parser.add_argument("--image-size", type=int, help="model input side (CPU 67, else 224)")
    parser.add_argument("--batch-size", type=int, help="CPU 16, else 512")
    parser.add_argument("--steps", type=int, help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, help="timed epochs after one warm-up epoch")
    parser.add_argument("--policies", help="Keras dtype policies: float32,mixed_bfloat16")
    parser.add_argument(
        "--ours", default="conv11-k1,s2d-k1", help="our configurations, <stem>-k<steps>"
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    document = run(args)
    print(
        f"cifar10 {document['image_size']}x{document['image_size']}, batch "
        f"{document['batch_size']}, on 1 x {document['device_kind']}: jax {document['jax']}, "
        f"keras {document['keras']}, {document['date']}"
    )
    print(format_table(document))
    outputs.write_json(document, args.out)


if __name__ == "__main__":
    main()
