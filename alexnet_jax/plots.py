"""The run's figures: loss/accuracy curves, sample predictions and the confusion matrix.

Each function writes a PNG to `path`, a file name or a binary file object.

The figures are drawn often (the curves and the confusion matrix with every checkpoint, into the
run dir and TensorBoard), so they are built to draw fast: matplotlib's object API (no pyplot
state), fixed margins instead of `tight_layout` (which draws each figure an extra time to
measure it), and the sample grid as one image with its titles, not an axes per image.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API draws with Agg; no display needed


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Train and test loss and accuracy per epoch, side by side (like the seed's *_loss.png);
    the test curve has the evaluated epochs' points (`eval_every`)."""
    epochs = [row["epoch"] for row in history]
    tested = [row for row in history if "test_accuracy" in row]
    fig = Figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.subplots(
        1, 2, gridspec_kw=dict(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    )
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label="train")
        ax.plot(
            [row["epoch"] for row in tested],
            [row[f"test_{metric}"] for row in tested],
            "o-",
            label="test",
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_title(f"{title}: loss")
    acc_ax.set_title(f"{title}: accuracy")
    fig.savefig(path, dpi=100)


def mosaic(images: np.ndarray, columns: int, gap: int) -> np.ndarray:
    """`images` [N, H, W, C] tiled row by row into one [rows*(H+gap), columns*(W+gap), C] image:
    each in a white cell, with `gap` pixels above it (room for its title) and half that on
    either side; cells without an image stay white."""
    n, height, width, channels = images.shape
    rows = -(-n // columns)
    cell_h, cell_w = height + gap, width + gap
    canvas = np.full((rows * cell_h, columns * cell_w, channels), 255, np.uint8)
    for k, image in enumerate(images):
        top, left = (k // columns) * cell_h + gap, (k % columns) * cell_w + gap // 2
        canvas[top : top + height, left : left + width] = image
    return canvas


def plot_samples(
    images, labels, predictions, class_names, path: Path, columns: int = 8, title="true / predicted"
) -> None:
    """A grid of images titled `true / predicted`, mistakes in red (like the seed's cifar10.png)."""
    images = np.asarray(images)
    height, width = images.shape[1:3]
    gap = max(height, width) // 3
    canvas = mosaic(images, columns, gap)
    rows = canvas.shape[0] // (height + gap)
    fig = Figure(figsize=(columns * 1.4, rows * 1.6 + 0.3))
    ax = fig.add_axes((0.005, 0.005, 0.99, 1 - 0.3 / (rows * 1.6 + 0.3)))
    ax.imshow(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas, cmap="gray")
    ax.set_aspect("auto")
    ax.axis("off")
    for k, (label, predicted) in enumerate(zip(labels, predictions, strict=True)):
        ax.text(
            (k % columns) * (width + gap) + gap // 2 + width / 2,
            (k // columns) * (height + gap) + gap * 0.9,
            f"{class_names[label]} / {class_names[predicted]}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="black" if label == predicted else "red",
        )
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    fig.savefig(path, dpi=100)


def plot_confusion(matrix: np.ndarray, class_names, path: Path, title: str) -> None:
    """Counts of [true, predicted] as a heat map with the numbers written in."""
    fig = Figure(figsize=(7, 6))
    ax = fig.add_axes((0.17, 0.17, 0.8, 0.76))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: confusion matrix")
    threshold = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    fig.savefig(path, dpi=100)
