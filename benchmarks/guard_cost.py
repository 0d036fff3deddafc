"""What the non-finite guard costs: our step with it and without it (`--no-guard`).

    python benchmarks/guard_cost.py [--no-guard] [--image-size 67] [--batch-size 32] [--out f.json]

A measurement aid, not part of alexnet_jax. Times `alexnet_jax.bench.measure` for the plain
step (conv11, float32, one step per call) of experiments/cifar10.py without augmentation,
weight decay or label smoothing; `--no-guard` replaces the finiteness check
(`step.step_is_finite`) with a constant True, which XLA folds away with the choice of old or new
state.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from alexnet_jax import bench, step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-guard", action="store_true")
    parser.add_argument("--image-size", type=int, default=67)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.no_guard:
        step.step_is_finite = lambda *args: jnp.asarray(True)
    plain = ["crop_padding=0", "flip=false", "weight_decay=0.0", "label_smoothing=0.0"]
    config = bench.base_config("experiments/cifar10.py", args.image_size, 64, plain)
    config.batch_size = args.batch_size
    config.update(bench.configuration("conv11-f32-k1"))
    result = bench.measure(
        config, jax.devices()[:1], steps=args.steps, epochs=args.epochs, eval_batches=1
    )
    document = {**bench.environment(), "guard": not args.no_guard, **result}
    print(
        f"guard {'off' if args.no_guard else 'on'}: "
        f"{result['train']['images_per_second']:,.1f} training images/s "
        f"({args.image_size}x{args.image_size}, batch {args.batch_size}, {document['device_kind']})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
