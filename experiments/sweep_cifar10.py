"""Sweep on CIFAR-10's validation split: the recipe levers, each against the plain recipe.

    python -m alexnet_jax.sweep --config experiments/sweep_cifar10.py \
        --out experiments/results/sweep-cifar10 [--only NAME ...] [--config.num_epochs=N]

Sized for one 9-minute call on one H100, from what one H100 measured on 2026-11-26 (README:
Speed): an epoch of the plain recipe's 49,664 images trained in 1.13 s and evaluated 10,000
images (with their mirrors) in 0.09 s, after 24 s of compilation. So each variant is 10
epochs of the 45,000 training images (about 10 s), 10 evaluations of the 5,000 held out (well
under a second each, 10 views included) and its compilation (about 25 s), about 40 s; 8
variants and the data read (12 s), about 6 minutes (not run on a GPU yet). Short schedules favour
weak regularisation: read the table as a ranking of levers to try at full length, not as their
final effect.
"""

from pathlib import Path

from alexnet_jax.config import load_config


def get_config():
    config = load_config(str(Path(__file__).with_name("cifar10.py")))
    config.validation_examples = 5000  # the last 5,000 training images; the test split is unread
    config.num_epochs = 10
    return config


def get_variants():
    return {
        "base": {},
        "cutout8": {"cutout": 8},
        "cutout16": {"cutout": 16},
        "mixup": {"mixup_alpha": 0.2},
        "cutmix": {"cutmix_alpha": 1.0, "cutmix_probability": 0.5},
        "mixup_cutmix": {
            "mixup_alpha": 0.2,
            "mixup_probability": 0.5,
            "cutmix_alpha": 1.0,
            "cutmix_probability": 0.5,
        },
        "ema": {"ema_decay": 0.998},
        # The same training as base (the same seed and recipe): only the evaluation differs.
        "views_flip_shift1": {"eval_shift": 1},
    }
