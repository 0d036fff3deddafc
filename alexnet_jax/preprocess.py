"""On-device input pipeline: augmentation, resize to the model's size and normalisation.

Everything here is batched array math meant to run inside the jitted step; random choices are
drawn per example from keys derived from the example's position in the global batch
(`keys.example_keys`), so that the result does not depend on how the batch is split over devices.
"""

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from alexnet_jax import keys as run_keys


@dataclass(frozen=True)
class Affine:
    """The ranges of the random affine transform (the config's `affine_*` fields)."""

    rotation: float = 0.0  # degrees, either way
    scale: float = 0.0  # relative, either way
    translation: float = 0.0  # fraction of the height and width, either way
    shear: float = 0.0  # degrees, along x, either way

    @classmethod
    def from_config(cls, config) -> "Affine":
        return cls(
            config.affine_rotation,
            config.affine_scale,
            config.affine_translation,
            config.affine_shear,
        )

    @property
    def on(self) -> bool:
        return any((self.rotation, self.scale, self.translation, self.shear))


NO_AFFINE = Affine()


def affine_parameters(keys: jax.Array, ranges: Affine, height: int, width: int) -> dict:
    """Per example, uniform in the ranges: angle and shear (radians), scale, shift (pixels,
    [B, 2] as rows, columns)."""
    # One draw of five numbers per example, whichever ranges are on, so that turning one on
    # leaves the others' draws as they were.
    u = jax.vmap(lambda key: jax.random.uniform(run_keys.affine_key(key), (5,), minval=-1))(keys)
    return {
        "angle": u[:, 0] * math.radians(ranges.rotation),
        "scale": 1 + u[:, 1] * ranges.scale,
        "shift": u[:, 2:4] * ranges.translation * jnp.array([height, width], jnp.float32),
        "shear": u[:, 4] * math.radians(ranges.shear),
    }


def warp(image: jax.Array, angle, scale, shift, shear, fill=0) -> jax.Array:
    """One uint8 image [H, W, C] rotated counter-clockwise (as displayed) by `angle`, sheared
    along x by `shear`, scaled by `scale` about its centre, then shifted by `shift` (rows,
    columns); bilinear, with `fill` where the source lies outside the image."""
    height, width, channels = image.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    target = jnp.stack([rows.ravel(), cols.ravel()]).astype(jnp.float32)  # [2, H*W]
    # The forward map, on (row, column) from the centre, is scale * rotation @ shear with
    # rotation [[cos, -sin], [sin, cos]] (rows grow downwards) and shear [[1, 0], [tan, 1]];
    # each output pixel samples the source at its inverse.
    cos, sin, tan = jnp.cos(angle), jnp.sin(angle), jnp.tan(shear)
    unrotate = jnp.array([[cos, sin], [-sin, cos]])
    unshear = jnp.array([[1.0, 0.0], [-tan, 1.0]])
    inverse = (unshear @ unrotate) / scale
    source = inverse @ (target - (centre + shift)[:, None]) + centre[:, None]

    def channel(plane):
        return map_coordinates(plane, list(source), order=1, mode="constant", cval=fill)

    planes = jax.vmap(channel, in_axes=2, out_axes=1)(image.astype(jnp.float32))
    return jnp.clip(jnp.round(planes), 0, 255).astype(jnp.uint8).reshape(height, width, channels)


def random_affine(images: jax.Array, keys: jax.Array, ranges: Affine, fill=0) -> jax.Array:
    """Each uint8 image [B, H, W, C] under its own random affine transform (identity when off)."""
    if not ranges.on:
        return images
    p = affine_parameters(keys, ranges, *images.shape[1:3])

    def one(image, angle, scale, shift, shear):
        return warp(image, angle, scale, shift, shear, fill)

    return jax.vmap(one)(images, p["angle"], p["scale"], p["shift"], p["shear"])


def shifted(images: jax.Array, dy: int, dx: int) -> jax.Array:
    """uint8 images [B, H, W, C] moved down by `dy` and right by `dx` pixels (negative: up,
    left), zero-filled like training's padded crops."""
    if dy == dx == 0:
        return images
    pad = max(abs(dy), abs(dx))
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return padded[:, pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def augment(
    images: jax.Array,
    keys: jax.Array,
    padding: int,
    flip: bool,
    cutout: int = 0,
    fill=0,
) -> jax.Array:
    """Random crop after zero-padding by `padding` pixels, random horizontal flip, and cutout.

    Args:
      images: uint8 [B, H, W, C] source images.
      keys: [B] PRNG keys, one per image.
      cutout: the side of a square set to `fill` (uint8, per channel) at a uniformly random
        centre, which may lie near an edge so that part of the square falls outside (DeVries &
        Taylor, 2017); 0: off.
    """
    height, width, channels = images.shape[1:]

    def random_crop(image, key):
        crop_key, _ = run_keys.crop_and_flip_keys(key)
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
        return jax.lax.dynamic_slice(image, (dy, dx, 0), (height, width, channels))

    def random_flip(image, key):
        _, flip_key = run_keys.crop_and_flip_keys(key)
        return jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)

    def random_cutout(image, key):
        cy, cx = jax.random.randint(run_keys.cutout_key(key), (2,), 0, jnp.array([height, width]))
        rows = jnp.arange(height) - (cy - cutout // 2)  # 0 .. cutout - 1 inside
        cols = jnp.arange(width) - (cx - cutout // 2)
        inside = ((rows >= 0) & (rows < cutout))[:, None] & ((cols >= 0) & (cols < cutout))
        return jnp.where(inside[..., None], jnp.asarray(fill, image.dtype), image)

    # Only the operations switched on run, in this order (a crop of no padding would keep the
    # image as it is); with none on, the images come back without a pass over them. A new
    # operation goes in this list too.
    switched = ((random_crop, padding), (random_flip, flip), (random_cutout, cutout))
    operations = [operation for operation, on in switched if on]
    if not operations:
        return images

    def one(image, key):
        for operation in operations:
            image = operation(image, key)
        return image

    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return jax.vmap(one)(padded, keys)


def to_model_input(images: jax.Array, image_size: int, mean, std, dtype=jnp.float32) -> jax.Array:
    """uint8 [B, h, w, C] -> normalised `dtype` [B, image_size, image_size, C], bilinear resize."""
    x = images.astype(jnp.float32) * (1 / 255)
    height, width = x.shape[1:3]
    if (height, width) != (image_size, image_size):
        # jax.image.resize(x, shape, "bilinear") runs this same function, and gives the same
        # bits at the sizes of the experiments (tested); called directly, it is traced into
        # plain array ops, which jax2onnx converts for any batch size, where it refuses
        # jax.image.resize on a symbolic batch. (resize computes 1/scale in float64, this in
        # float32: at other sizes an interpolation weight may differ in its last bit.)
        scale = jnp.array([image_size / height, image_size / width], jnp.float32)
        shape = (x.shape[0], image_size, image_size, x.shape[3])
        x = jax.image.scale_and_translate(x, shape, (1, 2), scale, jnp.zeros(2), "linear")
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
