"""Seconds to draw each of the run's figures (alexnet_jax.plots), CIFAR-10-sized.

    PYTHONPATH=. python benchmarks/plot_time.py [--repeats 5]

A measurement aid: the curves of a 50-epoch history, the confusion matrix of 10 classes and the
grid of 32 sample images, each drawn to a PNG in memory `--repeats` times after one warm-up;
prints the median seconds of each.
"""

import argparse
import io
import statistics
import time

import matplotlib
import numpy as np

from alexnet_jax import plots
from alexnet_jax.environment import environment

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def figures():
    rng = np.random.default_rng(0)
    history = [
        dict(
            epoch=e,
            train_loss=1 / e,
            test_loss=1.2 / e,
            train_accuracy=1 - 1 / e,
            test_accuracy=1 - 1.1 / e,
        )
        for e in range(1, 51)
    ]
    matrix = rng.integers(0, 1000, (10, 10))
    images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(32) % 10
    return {
        "curves": lambda out: plots.plot_curves(history, out, "cifar10"),
        "confusion": lambda out: plots.plot_confusion(matrix, CLASSES, out, "cifar10"),
        "samples": lambda out: plots.plot_samples(images, labels, labels[::-1], CLASSES, out),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = environment()
    print(
        f"{env['date']} {env['processor']} ({env['host_cpus']} cores), matplotlib "
        f"{matplotlib.__version__}, commit {env['git_commit'][:7]}{' (dirty)' * env['git_dirty']}"
    )
    for name, draw in figures().items():
        draw(io.BytesIO())
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            draw(io.BytesIO())
            seconds.append(time.perf_counter() - start)
        print(f"{name:<10} {statistics.median(seconds):.3f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
