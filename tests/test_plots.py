"""The run's figures: each writes a PNG of its size, and the sample grid puts every image in
its cell."""

import io

import numpy as np
from PIL import Image

from alexnet_jax import plots

NAMES = [str(i) for i in range(10)]


def png_size(buffer: io.BytesIO) -> tuple[int, int]:
    buffer.seek(0)
    return Image.open(buffer).size


def test_mosaic_puts_each_image_in_its_cell_with_white_gaps():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (11, 5, 4, 3), dtype=np.uint8)  # 3 rows of 4, one short
    canvas = plots.mosaic(images, columns=4, gap=2)
    assert canvas.shape == (3 * 7, 4 * 6, 3) and canvas.dtype == np.uint8
    covered = np.zeros(canvas.shape[:2], bool)
    for k, image in enumerate(images):
        top, left = (k // 4) * 7 + 2, (k % 4) * 6 + 1
        np.testing.assert_array_equal(canvas[top : top + 5, left : left + 4], image)
        covered[top : top + 5, left : left + 4] = True
    assert (canvas[~covered] == 255).all()  # gaps and the empty last cell: white


def test_each_figure_writes_a_png_of_its_size():
    history = [
        dict(epoch=e, train_loss=1 / e, test_loss=1.1 / e, train_accuracy=0.5, test_accuracy=0.4)
        for e in (1, 2, 3)
    ]
    rng = np.random.default_rng(0)
    curves, confusion, mnist, cifar = (io.BytesIO() for _ in range(4))
    plots.plot_curves(history, curves, "mnist")
    plots.plot_confusion(rng.integers(0, 50, (10, 10)), NAMES, confusion, "mnist")
    labels = np.arange(10)
    grey = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    plots.plot_samples(grey, labels, labels[::-1], NAMES, mnist)
    colour = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    plots.plot_samples(colour, np.arange(16) % 10, np.arange(16) % 10, NAMES, cifar)
    assert png_size(curves) == (1100, 400)
    assert png_size(confusion) == (700, 600)
    assert png_size(mnist) == (8 * 140, round((2 * 1.6 + 0.3) * 100))
    assert png_size(cifar) == (8 * 140, round((2 * 1.6 + 0.3) * 100))
