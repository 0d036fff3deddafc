"""The model's 3x3/2 max-pooling, with a choice of how its gradient is computed.

The forward pass is always XLA's `reduce_window` max (what `flax.linen.max_pool` runs). Its
gradient, by JAX's rule, is XLA's select-and-scatter: on one H100 that kernel took 11% of the
training step (benchmarks/results/h100-2026-11-26/call1/profile-kernels.txt), and the step ran
9% faster with the masks below (README: Speed). `POOL_BACKWARDS`, the model's choices
(`AlexNet.pool_backward`):

- "select_and_scatter": JAX's rule (the model calls `flax.linen.max_pool`).
- "masks" (`max_pool_masks`, the default): the same gradient from nine shifted comparisons,
  elementwise work that XLA fuses: each window's gradient goes to the first of its maxima in
  row-major order, as select-and-scatter chooses, and each input sums what its windows send it
  in row-major window order. On a CPU the two give the same bits (tests/test_pooling.py); on a
  GPU, whose select-and-scatter adds with atomics, the sums may round apart.
- "indices" (`max_pool_indices`): the same choice and sums, the masks' gradient in other steps:
  each window's index of its first maximum is computed once and kept (a byte per window), and
  each input's gradient compares it. With "masks", XLA fuses the chain of nine comparisons into
  the gradient of every input it reaches, and on the H100 that fusion of the first pooling
  (55x55x96) took 14% of the step (README: Speed); this choice is there to be measured against
  it (`make gpu-suite`'s bench-pool). The same bits as the other two on the CPU.
"""

import jax
import jax.numpy as jnp
from jax import lax

POOL_BACKWARDS = ("select_and_scatter", "masks", "indices")
WINDOW, STRIDE = 3, 2
OFFSETS = [(dy, dx) for dy in range(WINDOW) for dx in range(WINDOW)]  # a window's, row-major


def _reduce_window_max(x):
    window, strides = (1, WINDOW, WINDOW, 1), (1, STRIDE, STRIDE, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, "VALID")


def _window_slice(x, dy: int, dx: int, out_h: int, out_w: int):
    """x[:, dy + 2i, dx + 2j, :] for every output position (i, j): the windows' (dy, dx) element."""
    n, _, _, c = x.shape
    limit = (n, dy + STRIDE * (out_h - 1) + 1, dx + STRIDE * (out_w - 1) + 1, c)
    return lax.slice(x, (0, dy, dx, 0), limit, (1, STRIDE, STRIDE, 1))


@jax.custom_vjp
def max_pool_masks(x: jax.Array) -> jax.Array:
    """3x3/2 VALID max-pooling of NHWC `x` (as `flax.linen.max_pool`), its gradient from masks."""
    return _reduce_window_max(x)


def _forward(x):
    y = _reduce_window_max(x)
    return y, (x, y)


def _masks_backward(residuals, g):
    x, y = residuals
    out_h, out_w = y.shape[1:3]
    # Each window's first maximum in row-major order gets its gradient; the rest get none.
    taken = jnp.zeros(y.shape, bool)
    sent = {}
    for dy, dx in OFFSETS:
        first = (_window_slice(x, dy, dx, out_h, out_w) == y) & ~taken
        taken = taken | first
        sent[dy, dx] = jnp.where(first, g, jnp.zeros_like(g))
    return (_to_inputs(sent, x.shape),)


def _indices_backward(residuals, g):
    x, y = residuals
    out_h, out_w = y.shape[1:3]
    # The offset of each window's first maximum (9 where none equals it: a NaN window), from the
    # last offset to the first so that the first wins; the barrier keeps XLA from fusing this
    # into each input's gradient, where it would be computed again for every input.
    index = jnp.full(y.shape, len(OFFSETS), jnp.int8)
    for k in reversed(range(len(OFFSETS))):
        dy, dx = OFFSETS[k]
        index = jnp.where(_window_slice(x, dy, dx, out_h, out_w) == y, jnp.int8(k), index)
    index = lax.optimization_barrier(index)
    sent = {offset: jnp.where(index == k, g, jnp.zeros_like(g)) for k, offset in enumerate(OFFSETS)}
    return (_to_inputs(sent, x.shape),)


def _to_inputs(sent, shape):
    """What each window sends from each offset (`sent[dy, dx]`, the output's shape), summed back
    at the input's positions (a strided scatter is a pad with interior zeros), the larger
    offsets first: for any one input that is its windows in row-major order, as
    select-and-scatter adds them."""
    _, height, width, _ = shape
    _, out_h, out_w, _ = sent[0, 0].shape
    zero = jnp.zeros((), sent[0, 0].dtype)
    grad = jnp.zeros(shape, sent[0, 0].dtype)
    for dy, dx in reversed(OFFSETS):
        high_y = height - dy - STRIDE * (out_h - 1) - 1
        high_x = width - dx - STRIDE * (out_w - 1) - 1
        padding = ((0, 0, 0), (dy, high_y, STRIDE - 1), (dx, high_x, STRIDE - 1), (0, 0, 0))
        grad = grad + lax.pad(sent[dy, dx], zero, padding)
    return grad


max_pool_masks.defvjp(_forward, _masks_backward)


@jax.custom_vjp
def max_pool_indices(x: jax.Array) -> jax.Array:
    """3x3/2 VALID max-pooling of NHWC `x`, its gradient from each window's first maximum."""
    return _reduce_window_max(x)


max_pool_indices.defvjp(_forward, _indices_backward)
