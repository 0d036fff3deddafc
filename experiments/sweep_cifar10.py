"""Sweep on CIFAR-10's validation split: the recipe levers, each against the plain recipe.

    python -m alexnet_jax.sweep --config experiments/sweep_cifar10.py \
        --out experiments/results/sweep-cifar10 [--only NAME ...] [--config.num_epochs=N]

Sized for one 9-minute call on one H100, from issue 12's figure (the plain recipe's 100 epochs
in about 200 s, 2 s an epoch; not measured here, there is no GPU in this session): each variant
is 10 epochs of the 45,000 training images (about 18 s), 10 evaluations of the 5,000 held out
(well under a second each, 10 views included) and its compilation (not measured on a GPU yet;
30 s allowed), about 50 s; 8 variants and the data read, about 7 minutes. Short schedules favour
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
