"""The seed project's AlexNet as a Flax linen module, layer for layer."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.pooling import POOL_BACKWARDS, max_pool_indices, max_pool_masks

# Keras defaults, which the seed model uses: glorot-uniform kernels, zero biases, and
# BatchNormalization(momentum=0.99, epsilon=1e-3).
KERNEL_INIT = nn.initializers.glorot_uniform()
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

# Smallest square input for which the three 3x3/2 poolings still leave one pixel.
MIN_IMAGE_SIZE = 67

# The seed's Keras Sequential, row by row: (Keras layer name, kind, arguments). ReLU sits inside
# each convolution and hidden dense layer, before the BatchNorm, as in the seed's
# `Conv2D(..., activation='relu')` followed by `BatchNormalization()`.
LAYERS = (
    ("conv2d", "conv", dict(features=96, kernel=11, strides=4, padding="VALID")),
    ("batch_normalization", "norm", {}),
    ("max_pooling2d", "pool", {}),
    ("conv2d_1", "conv", dict(features=256, kernel=5)),
    ("batch_normalization_1", "norm", {}),
    ("max_pooling2d_1", "pool", {}),
    ("conv2d_2", "conv", dict(features=384, kernel=3)),
    ("batch_normalization_2", "norm", {}),
    ("conv2d_3", "conv", dict(features=384, kernel=3)),
    ("batch_normalization_3", "norm", {}),
    ("conv2d_4", "conv", dict(features=256, kernel=3)),
    ("batch_normalization_4", "norm", {}),
    ("max_pooling2d_2", "pool", {}),
    ("flatten", "flatten", {}),
    ("dense", "dense", dict(features=4096)),
    ("dropout", "dropout", {}),
    ("dense_1", "dense", dict(features=4096)),
    ("dropout_1", "dropout", {}),
    ("dense_2", "logits", {}),
)

# How the first convolution (11x11, stride 4) is computed. Both give the same function of the
# same parameters (tested); "space_to_depth" is the faster one on accelerators.
STEMS = ("space_to_depth", "conv11")

# Every layer's output is sown here, in `LAYERS` order, for the summary. Flax's `init` and
# `apply` leave the "intermediates" collection out unless asked, so training never pays for it.
LAYER_OUTPUTS = "intermediates"


def feature_size(image_size: int) -> int:
    """Side of the last pooled feature map for a square input of `image_size` pixels."""
    size = (image_size - 11) // 4 + 1  # conv 11x11 / 4, valid
    for _ in range(3):  # max-pool 3x3 / 2, valid; the convolutions between keep the size
        size = (size - 3) // 2 + 1
    return size


class AlexNet(nn.Module):
    """The seed's AlexNet: 5 conv + BN, 3 overlapping max-pools, 2 x 4096 dense, 10 outputs.

    Parameters carry the seed's Keras layer names (conv2d, batch_normalization, ..., dense_2).

    Attributes:
      num_classes: outputs of the last dense layer.
      dropout_rate: dropout after each 4096-unit layer.
      dtype: compute dtype (bfloat16 for mixed precision); parameters stay `param_dtype`.
      axis_name: mapped axis over which BatchNorm statistics are averaged (data parallelism).
      stem: how the 11x11/4 first convolution is computed (`STEMS`): "conv11" as it is written,
        "space_to_depth" as a 3x3/1 convolution over 4x4 blocks of the input, with the same
        parameters. Parameters and checkpoints are the same for both.
      pool_backward: how the max-poolings' gradient is computed (`pooling.POOL_BACKWARDS`);
        the same gradient either way, the forward pass is the same.
    """

    num_classes: int = 10
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    stem: str = "space_to_depth"
    pool_backward: str = "masks"

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1] < MIN_IMAGE_SIZE or x.shape[2] < MIN_IMAGE_SIZE:
            raise ValueError(
                f"input {x.shape[1]}x{x.shape[2]} is too small for AlexNet: "
                f"use an image size of at least {MIN_IMAGE_SIZE}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}: use one of {', '.join(STEMS)}")
        if self.pool_backward not in POOL_BACKWARDS:
            raise ValueError(
                f"unknown pool backward {self.pool_backward!r}: "
                f"use one of {', '.join(POOL_BACKWARDS)}"
            )
        x = x.astype(self.dtype)
        for name, kind, args in LAYERS:
            x = self._layer(name, kind, train, **args)(x)
            self.sow(LAYER_OUTPUTS, "outputs", x)
        return x

    def _layer(self, name, kind, train, features=None, kernel=None, strides=1, padding="SAME"):
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        if kind == "conv" and strides > 1 and padding == "VALID" and self.stem == "space_to_depth":
            conv = SpaceToDepthConv(features, kernel, strides, KERNEL_INIT, **precision)
            return lambda y: nn.relu(conv(y))
        if kind == "conv":
            conv = nn.Conv(
                features, (kernel, kernel), strides, padding, kernel_init=KERNEL_INIT, **precision
            )
            return lambda y: nn.relu(conv(y))
        if kind == "norm":
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                axis_name=self.axis_name if train else None,
                **precision,
            )
        if kind == "pool" and self.pool_backward != "select_and_scatter" and train:
            # Training only: inference has no gradient to shape, and the ONNX export (jax2onnx)
            # converts flax's max_pool but not the custom-gradient functions' pooling.
            return {"masks": max_pool_masks, "indices": max_pool_indices}[self.pool_backward]
        if kind == "pool":
            # window_shape by keyword: jax2onnx (the ONNX export) replaces nn.max_pool while it
            # traces with a function that takes no other positional argument than the input.
            return lambda y: nn.max_pool(y, window_shape=(3, 3), strides=(2, 2), padding="VALID")
        if kind == "flatten":
            return lambda y: y.reshape((y.shape[0], -1))
        if kind == "dense":
            dense = nn.Dense(features, kernel_init=KERNEL_INIT, **precision)
            return lambda y: nn.relu(dense(y))
        if kind == "dropout":
            return nn.Dropout(self.dropout_rate, deterministic=not train, name=name)
        if kind == "logits":
            dense = nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, **precision)
            # Logits leave in float32 so softmax and loss keep full precision under bf16 compute.
            return lambda y: dense(y).astype(jnp.float32)
        raise ValueError(f"unknown layer kind {kind!r}")


class SpaceToDepthConv(nn.Module):
    """A VALID k x k / s convolution with `nn.Conv`'s parameters, computed as a stride-1 one.

    The parameters are those of `nn.Conv(features, (k, k), s, "VALID")`: `kernel` [k, k, C, F]
    and `bias` [F], with the same names, shapes and initialisation, so checkpoints and parameter
    counts do not change. At apply time the kernel is zero-padded to a multiple of s and
    reshaped to [ceil(k/s), ceil(k/s), s*s*C, F], and the input is cut into s x s blocks
    (`space_to_depth`): one convolution with s*s times the input channels and no stride, which
    accelerators run far better than 3 input channels at stride 4.
    """

    features: int
    kernel_size: int
    strides: int
    kernel_init: Any = KERNEL_INIT
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_as_space_to_depth(x, kernel, self.strides) + bias


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/block, W/block, block*block*C], blocks flattened as (dy, dx, c)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def conv_as_space_to_depth(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`lax.conv` of x [B, H, W, C] with kernel [k, k, C, F], stride `stride`, VALID padding.

    Output (H-k)//stride+1 per side, as the plain convolution. Output pixel o reads input rows
    stride*o .. stride*o + k - 1, which lie in blocks o .. o + taps - 1 (taps = ceil(k/stride));
    the kernel rows beyond k are zero. So the input needs (out + taps - 1) * stride rows: rows
    beyond that are never read and are cut, and the few missing ones (meeting only zero kernel
    rows) are zero-padded.
    """
    k, stride = kernel.shape[0], int(stride)
    taps = -(-k // stride)

    def fit(size):
        out = (size - k) // stride + 1
        need = (out + taps - 1) * stride
        return need, max(need - size, 0)

    (rows, pad_rows), (cols, pad_cols) = fit(x.shape[1]), fit(x.shape[2])
    x = jnp.pad(x[:, :rows, :cols], ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)))
    grown = taps * stride - k
    kernel = jnp.pad(kernel, ((0, grown), (0, grown), (0, 0), (0, 0)))
    channels, features = kernel.shape[2:]
    kernel = kernel.reshape(taps, stride, taps, stride, channels, features)
    kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(taps, taps, stride * stride * channels, -1)
    return jax.lax.conv_general_dilated(
        space_to_depth(x, stride),
        kernel,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
