"""Mixup and CutMix: each training example mixed with another of the global batch, and its
target in proportion.

Mixup (Zhang et al., 2018) blends the two images, lam * own + (1 - lam) * partner; CutMix (Yun
et al., 2019) pastes a box of the partner covering about 1 - lam of the image, lam then being
the share of the image that stays its own. The target is lam * own one-hot + (1 - lam) *
partner's, before label smoothing.

The pairing must not depend on how the batch is split over devices: each device gathers the
global batch's uint8 source images (small: 512 CIFAR-10 images are 1.5 MB) and pairs the example
at global position g with the one at B - 1 - g, its mirror in the batch (timm's pairing; the
batch's order is already random). Each example's choice (CutMix, mixup or neither) and its lam
come from its own key (`keys.mixing_key`).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from alexnet_jax import keys as run_keys

NEITHER, MIXUP, CUTMIX = 0, 1, 2


@dataclass(frozen=True)
class Mixing:
    """The config's `mixup_*` and `cutmix_*` fields; an alpha of 0 turns that one off."""

    mixup_alpha: float = 0.0
    mixup_probability: float = 1.0
    cutmix_alpha: float = 0.0
    cutmix_probability: float = 1.0

    @classmethod
    def from_config(cls, config) -> "Mixing":
        return cls(
            config.mixup_alpha,
            config.mixup_probability,
            config.cutmix_alpha,
            config.cutmix_probability,
        )

    @property
    def on(self) -> bool:
        return bool(self.mixup_alpha or self.cutmix_alpha)


NO_MIXING = Mixing()


def draws(keys: jax.Array, mixing: Mixing) -> dict:
    """Per example: `kind` (NEITHER, MIXUP or CUTMIX), `lam` (its Beta draw; 1 for NEITHER) and
    `centre` (of the CutMix box, uniform in [0, 1) of the height and width)."""

    def one(key):
        key = run_keys.mixing_key(key)
        u = jax.random.uniform(jax.random.fold_in(key, 0))
        cutmix = mixing.cutmix_probability if mixing.cutmix_alpha else 0.0
        mixup = mixing.mixup_probability if mixing.mixup_alpha else 0.0
        kind = jnp.where(u < cutmix, CUTMIX, jnp.where(u < cutmix + mixup, MIXUP, NEITHER))
        lam = jnp.float32(1)
        if mixing.mixup_alpha:
            alpha = mixing.mixup_alpha
            lam = jnp.where(
                kind == MIXUP, jax.random.beta(jax.random.fold_in(key, 1), alpha, alpha), lam
            )
        if mixing.cutmix_alpha:
            alpha = mixing.cutmix_alpha
            lam = jnp.where(
                kind == CUTMIX, jax.random.beta(jax.random.fold_in(key, 2), alpha, alpha), lam
            )
        centre = jax.random.uniform(jax.random.fold_in(key, 3), (2,))
        return {"kind": kind.astype(jnp.int32), "lam": lam, "centre": centre}

    return jax.vmap(one)(keys)


def cutmix_box(lam, centre, height: int, width: int) -> jax.Array:
    """bool [H, W]: the box of side sqrt(1 - lam) of the image's, around `centre` (fractions),
    clipped at the edges."""
    side = jnp.sqrt(1 - lam)
    box_height = jnp.round(side * height).astype(jnp.int32)
    box_width = jnp.round(side * width).astype(jnp.int32)
    top = jnp.floor(centre[0] * height).astype(jnp.int32) - box_height // 2
    left = jnp.floor(centre[1] * width).astype(jnp.int32) - box_width // 2
    rows, cols = jnp.arange(height), jnp.arange(width)
    inside_rows = (rows >= top) & (rows < top + box_height)
    inside_cols = (cols >= left) & (cols < left + box_width)
    return inside_rows[:, None] & inside_cols[None, :]


# Mixup's lam rounded to steps of 2^-15: then lam * x and (1 - lam) * y for pixel values x, y in
# 0..255, and their sum, are exact in float32 (8 + 15 bits of its 24), so the blend has the same
# bits however XLA fuses it or contracts it into fused multiply-adds, in every program.
BLEND_STEPS = 2**15


def exact_blend_weight(lam):
    """`lam` rounded to the nearest multiple of 1 / BLEND_STEPS."""
    return jnp.round(lam * BLEND_STEPS) / BLEND_STEPS


def mix_pairs(images, labels, partner_images, partner_labels, keys, mixing: Mixing, num_classes):
    """Mix each example with its partner: (float32 images [B, H, W, C] in 0..255, targets
    [B, classes]). `images` are uint8 [B, H, W, C], `keys` one per example."""
    height, width = images.shape[1:3]
    d = draws(keys, mixing)
    own, partner = images.astype(jnp.float32), partner_images.astype(jnp.float32)
    boxes = jax.vmap(cutmix_box, in_axes=(0, 0, None, None))(d["lam"], d["centre"], height, width)
    cut = d["kind"] == CUTMIX
    # For CutMix, lam becomes the share of the image that stayed the example's own.
    kept = 1 - boxes.mean(axis=(1, 2), dtype=jnp.float32)
    lam = jnp.where(cut, kept, exact_blend_weight(d["lam"]))
    blended = lam[:, None, None, None] * own + (1 - lam[:, None, None, None]) * partner
    pasted = jnp.where(boxes[..., None], partner, own)
    mixed = jnp.where(cut[:, None, None, None], pasted, blended)
    targets = lam[:, None] * jax.nn.one_hot(labels, num_classes) + (1 - lam[:, None]) * (
        jax.nn.one_hot(partner_labels, num_classes)
    )
    return mixed, targets


def mix_batch(images, labels, keys, first, mixing: Mixing, num_classes: int, axis_name: str | None):
    """This device's slice of the global batch (examples first .. first + B - 1), mixed under
    `shard_map` over `axis_name` (None: one device, whose slice is the whole batch): (images,
    targets). Off: the images as they were and one-hot targets."""
    if not mixing.on:
        return images, jax.nn.one_hot(labels, num_classes)
    if axis_name is None:
        every_image, every_label = images, labels
    else:
        every_image = jax.lax.all_gather(images, axis_name, tiled=True)
        every_label = jax.lax.all_gather(labels, axis_name, tiled=True)
    partners = every_label.shape[0] - 1 - (first + jnp.arange(labels.shape[0]))
    return mix_pairs(
        images, labels, every_image[partners], every_label[partners], keys, mixing, num_classes
    )
