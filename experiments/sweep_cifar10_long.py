"""Sweep on CIFAR-10's validation split at a long schedule, toward issue 12's 94%.

    python -m alexnet_jax.sweep --config experiments/sweep_cifar10_long.py \
        --out experiments/results/sweep-cifar10 [--only NAME ...]

The plain recipe reached 92.2% on the test split after 100 epochs on one H100 (issue 12), and
strong augmentation usually pays off only over long schedules. 120 epochs of the three variants
below, at the 1.2 s an epoch that the 50-epoch sweep took on one H100 (2026-11-26,
experiments/results/sweep-cifar10/), are about 8 minutes: one 9-minute call (not run yet).
"""

from pathlib import Path

from alexnet_jax.config import load_config


def get_config():
    config = load_config(str(Path(__file__).with_name("sweep_cifar10.py")))
    config.num_epochs = 120
    return config


def get_variants():
    return {
        "base": {},
        "cutout16": {"cutout": 16},
        "cutout16_trivial": {"cutout": 16, "trivial_augment": True},
    }
