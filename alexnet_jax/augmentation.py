"""A training batch as the model sees it: the augmentations in their order, then the resize.

`Augmentation.from_config` holds what a config sets; `apply` runs under `shard_map`, inside the
jitted step, on this device's slice of the global batch. Each example's draws come from its own
key (`keys.example_keys`) and every operation is exact or per example, so one device and several
compute the same bits (tests/test_train.py).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax import mixing, preprocess
from alexnet_jax.config import Derived
from alexnet_jax.trivial_augment import trivial_augment


@dataclass(frozen=True)
class Augmentation:
    """The step's input pipeline: what the config sets of it, and the dataset's statistics."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: jnp.dtype
    num_classes: int
    crop_padding: int
    flip: bool
    cutout: int
    affine: preprocess.Affine
    trivial: bool
    mix: mixing.Mixing

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, derived: Derived) -> "Augmentation":
        return cls(
            image_size=config.image_size,
            mean=derived.mean,
            std=derived.std,
            dtype=derived.dtype,
            num_classes=derived.num_classes,
            crop_padding=config.crop_padding,
            flip=config.flip,
            cutout=config.cutout,
            affine=preprocess.Affine.from_config(config),
            trivial=config.trivial_augment,
            mix=mixing.Mixing.from_config(config),
        )

    def apply(self, batch, example_keys: jax.Array, first, axis_name: str | None):
        """(the model's input [B, size, size, C] in `dtype`, the targets [B, classes]) of
        `batch` ({'image': uint8, 'label': int}), examples `first` .. `first` + B - 1 of the
        global batch, with `example_keys` theirs; `axis_name` as `mixing.mix_batch` takes it.

        The affine transforms come first, then TrivialAugment (before the padded crop, as in
        AutoAugment's CIFAR set-up), the crop, flip and cutout, then the mixing.
        """
        # Cutout fills with the dataset's mean colour: zero once normalised.
        fill = jnp.round(jnp.asarray(self.mean) * 255).astype(jnp.uint8)
        images = preprocess.random_affine(batch["image"], example_keys, self.affine)
        images = trivial_augment(images, example_keys, self.trivial)
        images = preprocess.augment(
            images, example_keys, self.crop_padding, self.flip, self.cutout, fill
        )
        images, targets = mixing.mix_batch(
            images, batch["label"], example_keys, first, self.mix, self.num_classes, axis_name
        )
        x = preprocess.to_model_input(images, self.image_size, self.mean, self.std, self.dtype)
        return x, targets
