"""Classify image files: `python -m alexnet_jax.predict --ckpt runs/mnist digit.png photos/`.

Each image, of any size and mode, is turned into what the dataset holds (grayscale 28x28 for
MNIST, RGB 32x32 for CIFAR-10), and every conversion is said in the output; then it goes through
evaluation's own on-device preprocessing and model. A file that cannot be read is reported and
the others still run. Exit status: 0 when every file was classified, 1 when any failed, 2 on a
usage error (a bad option or checkpoint).
"""

import argparse
import contextlib
import errno
import functools
import glob
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from PIL import ExifTags, Image, ImageOps

from alexnet_jax import checkpoint, compilation_cache, outputs
from alexnet_jax.errors import UserError, cli, first_line
from alexnet_jax.evaluation import class_probabilities, inference_options
from alexnet_jax.parallel import make_mesh

# What a directory is searched for; a file named explicitly or by a pattern is tried whatever
# its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Unsigned 16-bit pixels: as an image's mode, or as the raw mode a file is decoded from where
# Pillow opens such data as mode "I" (32-bit).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass
class Prediction:
    """The outcome for one file: its conversions and top classes, or why it failed."""

    file: str
    conversions: list[str] = field(default_factory=list)
    top: list[tuple[int, float]] = field(default_factory=list)  # (class, probability), best first
    error: str | None = None


class ImageError(Exception):
    """A file that cannot be used as an image; the message says why, for that file's line."""


def expand_inputs(inputs: Sequence[str]) -> list[Prediction]:
    """One entry per file named, found in a directory or matched by a glob pattern, in order.

    Entries for inputs that name nothing carry their error already.
    """
    entries = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if _is_file(p) and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                entries.append(Prediction(text, error="no image files in this directory"))
            entries += [Prediction(str(f)) for f in files]
        elif path.exists() or not any(c in text for c in "*?["):
            entries.append(Prediction(text))  # a missing file fails when it is read
        else:
            matches = sorted(m for m in glob.glob(text, recursive=True) if _is_file(Path(m)))
            if not matches:
                entries.append(Prediction(text, error="no file matches this pattern"))
            entries += [Prediction(m) for m in matches]
    return entries


def _is_file(path: Path) -> bool:
    """A file, or a broken symbolic link: that fails when it is read, with its own line."""
    return path.is_file() or (path.is_symlink() and not path.exists())


@contextlib.contextmanager
def open_quietly(path: str | Path):
    """`Image.open`, without Pillow's warning on the terminal for an image over
    `Image.MAX_IMAGE_PIXELS` (one over twice that is refused, below): the note "resized WxH to
    ..." gives its size with the results."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


def load_image(path: str | Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Decode a file into uint8 [H, W, C] of `shape` (the run's source images'), and say what
    was converted.

    Transparency is flattened onto black (MNIST's background); colours are never inverted, so an
    MNIST input should be a light digit on a dark ground, like the dataset.
    """
    height, width, channels = shape
    try:
        with open_quietly(path) as image:
            conversions = []
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                conversions.append(f"first of {frames} frames")
            if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                image = ImageOps.exif_transpose(image)
                conversions.append("turned upright as its EXIF orientation says")
            size, mode, sixteen_bit = image.size, image.mode, _is_sixteen_bit(image)
            # JPEG only: decode at a reduced scale that still covers the target, which makes
            # huge photos cheap. Other formats ignore it.
            image.draft("L" if channels == 1 else "RGB", (width, height))
            image.load()
            image, converted = _to_mode(image, channels, mode, sixteen_bit)
            conversions += converted
            if size != (width, height):
                note = f"resized {size[0]}x{size[1]} to {width}x{height}"
                if abs(size[0] * height - size[1] * width) > 0.02 * size[1] * width:
                    note += " (aspect ratio not kept)"
                conversions.append(note)
                image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
            array = np.asarray(image, np.uint8).reshape(height, width, channels)
    except FileNotFoundError:
        if Path(path).is_symlink():
            raise ImageError(f"broken symbolic link (to {os.readlink(path)})") from None
        raise ImageError("no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image file that Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as too large ({e})") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symbolic links in a loop") from None
        raise ImageError(f"cannot decode it ({first_line(e)})") from None
    except (ValueError, SyntaxError) as e:  # truncated or malformed data
        raise ImageError(f"cannot decode it ({first_line(e)})") from None
    return array, conversions


def _is_sixteen_bit(image: Image.Image) -> bool:
    """Whether the file, as opened and not yet loaded, holds unsigned 16-bit pixels.

    Pillow opens some of them as mode "I" (a 16-bit PNG in older versions, a PGM with a maxval
    over 255, which it scales to 0..65535), like 32-bit and signed 16-bit files: the raw mode
    the file is decoded from tells them apart.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return True
    if image.mode != "I":
        return False
    if image.format in ("PNG", "PPM"):  # neither stores 32-bit or signed pixels
        return True
    args = image.tile[0].args if image.tile else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode in SIXTEEN_BIT_MODES


def _to_mode(
    image: Image.Image, channels: int, mode: str, sixteen_bit: bool
) -> tuple[Image.Image, list[str]]:
    """`image` as 8-bit grayscale (channels 1) or RGB (3), and what that changed.

    `mode` is the file's own mode, which a JPEG draft may have converted already; `sixteen_bit`
    says that its pixels are unsigned 16-bit (`_is_sixteen_bit`). Raises ImageError for 32-bit,
    signed and floating-point pixels, which have no one scale to 8 bits.
    """
    target, name = ("L", "grayscale") if channels == 1 else ("RGB", "RGB")
    notes = [] if mode == target else [f"converted {mode} to {name}"]
    if sixteen_bit and image.mode in ("I", *SIXTEEN_BIT_MODES):
        # Always the same scale, whatever the content: 65535 -> 255. Pillow's convert() would
        # clip them to 255 instead.
        values = np.asarray(image, np.float64) / 257
        notes.append("16-bit values scaled to 8 bits (divided by 257)")
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        raise ImageError(
            "floating-point pixels (mode F) have no standard scale to 8 bits:"
            " save it as an 8- or 16-bit image"
        )
    elif image.mode in ("I", *SIXTEEN_BIT_MODES):
        raise ImageError(
            f"32-bit or signed integer pixels (mode {image.mode}) have no standard scale to 8"
            " bits: save it as an 8- or 16-bit image"
        )
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba).convert("RGB")
        notes.append("transparency flattened onto black")
    if image.mode not in (target, "L", "RGB", "1", "P"):  # CMYK, YCbCr, HSV...: through RGB
        image = image.convert("RGB")
    if image.mode != target:
        image = image.convert(target)
    return image, notes


def make_classifier(trained: checkpoint.Trained, max_batch: int):
    """uint8 images [N, H, W, C] -> class probabilities [N, classes], in batches on the device.

    A batch is padded to a power of two (at most `max_batch`), so that few shapes are compiled.
    """
    probabilities = jax.jit(
        functools.partial(class_probabilities, **inference_options(trained.config, trained.derived))
    )

    def classify(images: np.ndarray) -> np.ndarray:
        batch = min(max_batch, 1 << max(len(images) - 1, 0).bit_length())
        outputs = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            padded = np.zeros((batch, *images.shape[1:]), np.uint8)
            padded[: len(chunk)] = chunk
            outputs.append(probabilities(trained.state, padded)[: len(chunk)])
        return np.concatenate(jax.device_get(outputs))

    return classify


def predict_files(
    trained: checkpoint.Trained, inputs: Sequence[str], top_k: int = 3, max_batch: int = 64
) -> list[Prediction]:
    """Classify the image files that `inputs` name; failures are recorded per file."""
    shape = trained.source_shape
    entries = expand_inputs(inputs)
    images = []
    for entry in entries:
        if entry.error is None:
            try:
                image, entry.conversions = load_image(entry.file, shape)
                images.append((entry, image))
            except ImageError as e:
                entry.error = str(e)
    if images:
        probs = make_classifier(trained, max_batch)(np.stack([image for _, image in images]))
        for (entry, _), row in zip(images, probs, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            entry.top = [(int(i), float(row[i])) for i in best]
    return entries


def format_predictions(predictions: list[Prediction], class_names) -> str:
    width = max(len(name) for name in class_names)
    lines = []
    for p in predictions:
        if p.error:
            lines.append(f"{p.file}: error: {p.error}")
            continue
        lines.append(p.file + (f"  [{'; '.join(p.conversions)}]" if p.conversions else ""))
        lines += [f"    {class_names[i]:<{width}}  {prob:7.2%}" for i, prob in p.top]
    return "\n".join(lines)


def predictions_json(predictions: list[Prediction], class_names, **extra) -> dict:
    files = []
    for p in predictions:
        if p.error:
            files.append({"file": p.file, "ok": False, "error": p.error})
            continue
        top = [{"class": class_names[i], "index": i, "probability": prob} for i, prob in p.top]
        files.append({"file": p.file, "ok": True, "conversions": p.conversions, "top_k": top})
    return {**extra, "files": files}


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 all files classified, 1 some failed, 2 usage error.",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns"
    )
    checkpoint.add_arguments(parser)
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image (3)")
    parser.add_argument(
        "--json", metavar="FILE", help="write the results as JSON to FILE, or to stdout with -"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per device call (64)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size} must be at least 1")
    if args.json and Path(args.json).suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"--json {args.json} looks like an image: pass a .json file, or - ")
    outputs.check_file(args.json, "--json")
    compilation_cache.enable()

    # One device is plenty for a few images, and keeps the batch padding simple.
    trained = checkpoint.load_trained(args.ckpt, args.best, make_mesh(jax.devices()[:1]))
    class_names = trained.class_names
    if not 1 <= args.top_k <= len(class_names):
        raise UserError(f"--top-k={args.top_k} must be between 1 and {len(class_names)}")
    predictions = predict_files(trained, args.images, args.top_k, args.batch_size)
    names = outputs.listed(class_names)
    note = checkpoint.in_memory_note(trained, f"its predictions name its classes ({names})")
    if note:
        print(note, file=sys.stderr)

    if args.json != "-":
        print(f"{trained.config.dataset}, {checkpoint.describe(trained, args.best)}")
        print(format_predictions(predictions, class_names))
    if args.json:
        payload = predictions_json(
            predictions,
            class_names,
            dataset=trained.config.dataset,
            checkpoint=str(trained.path),
            epoch=trained.epoch,
            partial=trained.progress,
        )
        outputs.write_json(payload, args.json)
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"{failed} of {len(predictions)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
