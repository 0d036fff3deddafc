"""Decoded splits kept on disk, so that a machine's later runs read arrays instead of PNGs.

TFDS stores MNIST and CIFAR-10 as PNG records, and decoding them one by one is most of reading
a dataset (README: Data). `data` keeps the uint8 arrays of each range of a split it decodes in
`~/.cache/alexnet_jax/data/` (`$XDG_CACHE_HOME` instead of `~/.cache` when set), one `.npz` per
range, named by a hash of the dataset, the range and the contents of the split's record files:
a dataset prepared anew, copied elsewhere with other bytes or damaged since gets a name of its
own and is decoded afresh. Each file also holds a checksum of its arrays; one that does not match
(a damaged or cut-short file) is decoded again and replaced. Files are written to a temporary
name and renamed into place, so a run stopped while writing leaves no half-written one.
`ALEXNET_JAX_DATA_CACHE=DIR` puts them elsewhere and `ALEXNET_JAX_DATA_CACHE=` (empty) turns the
cache off; the folder may be deleted at any time.
"""

import hashlib
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

VARIABLE = "ALEXNET_JAX_DATA_CACHE"
# Read in pieces of this size to hash the record files.
_PIECE = 1 << 24


def folder() -> Path | None:
    """Where the decoded splits go, or None when the cache is off."""
    if VARIABLE in os.environ:
        return Path(os.environ[VARIABLE]).expanduser() if os.environ[VARIABLE] else None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "alexnet_jax" / "data"


def entry(record_files: list[Path], name: str, split: str, start: int, stop: int) -> Path | None:
    """The file that holds examples [start, stop) of `split` read from `record_files`."""
    where = folder()
    if where is None:
        return None
    digest = hashlib.sha256(f"{name}\0{split}\0{start}\0{stop}".encode())
    try:
        for path in sorted(record_files):
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                while piece := f.read(_PIECE):
                    digest.update(piece)
    except OSError:
        return None  # unreadable: decoding says what is wrong
    return where / f"{name}-{split}-{start}-{stop}-{digest.hexdigest()[:24]}.npz"


def checksum(images: np.ndarray, labels: np.ndarray) -> int:
    return zlib.crc32(labels.tobytes(), zlib.crc32(images.tobytes()))


def load(path: Path | None, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The `count` (images, labels) kept in `path`, or None when there are none or they do not
    check out."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as kept:
            images, labels, crc = kept["images"], kept["labels"], int(kept["crc32"])
    except Exception:  # cut short or damaged: NumPy and zipfile raise various types
        return None
    if images.dtype != np.uint8 or labels.dtype != np.int32:
        return None
    if len(images) != count or len(labels) != count or checksum(images, labels) != crc:
        return None
    return images, labels


def save(path: Path | None, images: np.ndarray, labels: np.ndarray) -> None:
    """Keep the arrays in `path`; a folder that cannot be written (read-only, full) keeps
    nothing, and the run goes on as without a cache."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, images=images, labels=labels, crc32=checksum(images, labels))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError:
        pass
