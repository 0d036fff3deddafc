"""On-device input pipeline: augmentation, resize to the model's size and normalisation.

Everything here is batched array math meant to run inside the jitted step; random choices are
drawn per example from keys derived from the example's position in the global batch
(`keys.example_keys`), so that the result does not depend on how the batch is split over devices.
"""

import jax
import jax.numpy as jnp

from alexnet_jax import keys as run_keys


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
    if padding == 0 and not flip and cutout == 0:
        return images
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, key):
        crop_key, flip_key = run_keys.crop_and_flip_keys(key)
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
        image = jax.lax.dynamic_slice(image, (dy, dx, 0), (height, width, image.shape[-1]))
        if flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
        if cutout:
            cy, cx = jax.random.randint(
                run_keys.cutout_key(key), (2,), 0, jnp.array([height, width])
            )
            rows = jnp.arange(height) - (cy - cutout // 2)  # 0 .. cutout - 1 inside
            cols = jnp.arange(width) - (cx - cutout // 2)
            inside = ((rows >= 0) & (rows < cutout))[:, None] & ((cols >= 0) & (cols < cutout))
            image = jnp.where(inside[..., None], jnp.asarray(fill, image.dtype), image)
        return image

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
