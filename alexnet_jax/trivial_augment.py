"""TrivialAugment (Müller & Hutter, 2021) with its wide ranges, on the source images, on device.

Each example gets one operation, drawn uniformly from `OPERATIONS`, at a strength drawn
uniformly from 31 levels (0 to 1), with a random sign where the operation has a direction;
no policy and nothing to tune. The ranges are those of the paper's "wide" space (torchvision's
`TrivialAugmentWide`): shears up to a factor 0.99, translations up to 32 pixels, rotations up to
135 degrees, brightness, colour, contrast and sharpness factors 0.01 to 1.99, posterize to 8 down
to 2 bits, solarize from a threshold of 255 down to 0. As in AutoAugment's CIFAR set-up, it
runs before the padded crop, the flip and cutout. Unlike torchvision the geometric operations
interpolate bilinearly (`preprocess.warp`, zero fill) and results are rounded, not truncated.
"""

import math

import jax
import jax.numpy as jnp

from alexnet_jax import keys as run_keys
from alexnet_jax.preprocess import warp

OPERATIONS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
INDEX = {name: i for i, name in enumerate(OPERATIONS)}
LEVELS = 31  # strengths 0, 1/30, ..., 1
MAX_SHEAR = 0.99  # shear factor (tan of the angle)
MAX_TRANSLATION = 32.0  # pixels
MAX_ROTATION = 135.0  # degrees
MAX_FACTOR_CHANGE = 0.99  # brightness, colour, contrast, sharpness: factors 1 -+ this


def draws(keys: jax.Array) -> dict:
    """Per example [B]: the operation's index in OPERATIONS, its strength in [0, 1], and a sign."""

    def one(key):
        op_key, level_key, sign_key = jax.random.split(run_keys.trivial_augment_key(key), 3)
        return {
            "operation": jax.random.randint(op_key, (), 0, len(OPERATIONS)),
            "strength": jax.random.randint(level_key, (), 0, LEVELS) / (LEVELS - 1),
            "sign": jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0),
        }

    return jax.vmap(one)(keys)


def trivial_augment(images: jax.Array, keys: jax.Array, on: bool) -> jax.Array:
    """Each uint8 image [B, H, W, C] under its own drawn operation (unchanged when off)."""
    if not on:
        return images
    d = draws(keys)
    return jax.vmap(apply)(images, d["operation"], d["strength"], d["sign"])


def apply(image: jax.Array, operation, strength, sign) -> jax.Array:
    """One uint8 image [H, W, C] under OPERATIONS[operation] at `strength` (0 to 1), `sign` +-1.

    Every operation is computed and the drawn one is picked: on a 32x32 source image that is
    far less work than the model's, and it keeps the program free of data-dependent branches."""
    image = jnp.asarray(image)
    signed = sign * strength

    def chosen(name, value):
        return jnp.where(operation == INDEX[name], value, 0.0)

    # One warp for the rotation, the shear along x and the translations (each zero unless it
    # is the one drawn), one on the transposed image for the shear along y.
    shift = jnp.round(
        jnp.stack([chosen("translate_y", signed), chosen("translate_x", signed)]) * MAX_TRANSLATION
    )
    moved = warp(
        image,
        chosen("rotate", signed) * math.radians(MAX_ROTATION),
        1.0,
        shift,
        jnp.arctan(chosen("shear_x", signed) * MAX_SHEAR),
    )
    shear_y = jnp.arctan(chosen("shear_y", signed) * MAX_SHEAR)
    sheared_y = warp(image.transpose(1, 0, 2), 0.0, 1.0, jnp.zeros(2), shear_y).transpose(1, 0, 2)

    x = image.astype(jnp.float32)
    factor = 1 + signed * MAX_FACTOR_CHANGE
    gray = grayscale(x)
    results = {
        "identity": image,
        "shear_x": moved,
        "shear_y": sheared_y,
        "translate_x": moved,
        "translate_y": moved,
        "rotate": moved,
        "brightness": blend(x, jnp.zeros_like(x), factor),
        "color": blend(x, gray, factor),
        "contrast": blend(x, jnp.mean(gray), factor),
        "sharpness": blend(x, smoothed(x), factor),
        "posterize": posterize(image, 8 - jnp.round(strength * 6).astype(jnp.int32)),
        "solarize": solarize(image, 255 * (1 - strength)),
        "autocontrast": autocontrast(x),
        "equalize": jax.vmap(equalize, in_axes=2, out_axes=2)(image),
    }
    stacked = jnp.stack([to_uint8(results[name]) for name in OPERATIONS])
    return stacked[operation]


def to_uint8(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.uint8:
        return x
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def grayscale(x: jax.Array) -> jax.Array:
    """[H, W, 1]: ITU-R 601 luma of RGB (PIL's "L"), or the image itself with one channel."""
    if x.shape[-1] == 1:
        return x
    return x @ jnp.array([[0.299], [0.587], [0.114]], jnp.float32)


def blend(x: jax.Array, base, factor) -> jax.Array:
    """PIL's ImageEnhance: `base` at factor 0, the image at 1, beyond it extrapolated; 0 to 255."""
    return jnp.clip(base + factor * (x - base), 0, 255)


def smoothed(x: jax.Array) -> jax.Array:
    """PIL's SMOOTH filter (3x3, centre weight 5, the others 1, over 13) inside the border; the
    border pixels as they were, as ImageEnhance.Sharpness leaves them."""
    height, width = x.shape[:2]
    window = sum(x[dy : dy + height - 2, dx : dx + width - 2] for dy in range(3) for dx in range(3))
    inner = (window + 4 * x[1:-1, 1:-1]) / 13
    return x.at[1:-1, 1:-1].set(inner)


def posterize(image: jax.Array, bits) -> jax.Array:
    """Each uint8 value with only its `bits` highest bits kept."""
    mask = (0xFF << (8 - bits)) & 0xFF
    return image & mask.astype(jnp.uint8)


def solarize(image: jax.Array, threshold) -> jax.Array:
    """Values at or above `threshold` inverted."""
    return jnp.where(image >= threshold, 255 - image, image)


def autocontrast(x: jax.Array) -> jax.Array:
    """Each channel stretched to 0..255 from its own minimum and maximum (flat ones unchanged)."""
    low = jnp.min(x, axis=(0, 1))
    high = jnp.max(x, axis=(0, 1))
    stretched = (x - low) * (255 / jnp.where(high > low, high - low, 1.0))
    return jnp.where(high > low, stretched, x)


def equalize(plane: jax.Array) -> jax.Array:
    """One uint8 channel [H, W] histogram-equalised as PIL's ImageOps.equalize does it: the
    look-up table from the cumulative histogram, in steps of (pixels but those of the top
    value) / 255; unchanged when that step is 0."""
    values = plane.astype(jnp.int32)
    histogram = jnp.bincount(values.ravel(), length=256)
    top = jnp.sum(values == jnp.max(values))
    step = (values.size - top) // 255
    safe = jnp.maximum(step, 1)
    table = (jnp.cumsum(histogram) + safe // 2) // safe
    table = jnp.clip(jnp.concatenate([jnp.zeros(1, table.dtype), table[:-1]]), 0, 255)
    return jnp.where(step == 0, plane, table[values].astype(jnp.uint8))
