"""Sweep on MNIST's validation split: random affine transforms, EMA and test-time shifts, each
against the plain recipe.

    python -m alexnet_jax.sweep --config experiments/sweep_mnist.py \
        --out experiments/results/sweep-mnist [--only NAME ...] [--config.num_epochs=N]

Sized for one 9-minute call on one H100, from what one H100 measured on 2026-11-26 (README:
Speed: an MNIST epoch of 59,904 images trained in 1.25 s after 24 s of compilation): each
variant is the recipe's 8 epochs of the 55,000 training images (about 10 s), 8 evaluations of
the 5,000 held out and its compilation (about 25 s), about 40 s; 8 variants and the data read,
about 6 minutes (not run on a GPU yet).
"""

from pathlib import Path

from alexnet_jax.config import load_config

# Plain CNNs reach 99.7% with on-the-fly affine transforms (issue 12): rotation 10 to 20
# degrees, scale 0.9 to 1.1, translation 10 to 20%. The translation replaces the 2-pixel crop.
AFFINE = {
    "affine_rotation": 15.0,
    "affine_scale": 0.1,
    "affine_translation": 0.1,
    "crop_padding": 0,
}


def get_config():
    config = load_config(str(Path(__file__).with_name("mnist.py")))
    config.validation_examples = 5000  # the last 5,000 training images; the test split is unread
    return config


def get_variants():
    return {
        "base": {},
        "affine": AFFINE,
        "affine_small": {**AFFINE, "affine_rotation": 10.0, "affine_translation": 0.08},
        "affine_shear": {**AFFINE, "affine_shear": 10.0},
        "affine_crop": {**AFFINE, "affine_translation": 0.0, "crop_padding": 2},
        "ema": {"ema_decay": 0.998},
        "affine_ema": {**AFFINE, "ema_decay": 0.998},
        # The same training as base (the same seed and recipe): only the evaluation differs.
        "views_shift1": {"eval_shift": 1},
    }
