"""Sweep on CIFAR-10's validation split: the recipe levers, each against the plain recipe.

    python -m alexnet_jax.sweep --config experiments/sweep_cifar10.py \
        --out experiments/results/sweep-cifar10 [--only NAME ...] [--config.num_epochs=N]

Sized for one 9-minute call on one H100. Measured there on 2026-11-26 (README: Tuning sweeps;
experiments/results/sweep-cifar10/): at the file's 10 epochs, the first variant took 42 s with
its compilation and each later one 20 to 26 s, so all of them fit in about 5 minutes; at 50
epochs (`--config.num_epochs=50`), 83 s and then about 60 s each, so about 7 variants per call
(`--only`). Short schedules favour weak regularisation: at 10 epochs every regulariser was
behind the plain recipe, at 50 cutout 16 px was ahead; compare levers at full length.
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
        # Cutout led at 50 epochs (2026-11-26): with the levers it may combine with.
        "cutout16_ema": {"cutout": 16, "ema_decay": 0.998},
        "cutout16_mixup": {"cutout": 16, "mixup_alpha": 0.2, "mixup_probability": 0.5},
        # A strong augmentation (2026-12-04, not yet run on a GPU); it may need a longer schedule.
        "trivial": {"trivial_augment": True},
        "cutout16_trivial": {"cutout": 16, "trivial_augment": True},
        # The same training as base (the same seed and recipe): only the evaluation differs.
        "views_flip_shift1": {"eval_shift": 1},
    }
