"""How long TFDS's preparation of MNIST or CIFAR-10 takes once the download is done.

    python benchmarks/prepare_timing.py mnist --from ../shared/tfds   (needs the prepare extra)

For timing only, offline. It rebuilds the raw files the dataset is prepared from (MNIST's IDX
files, CIFAR-10's binary batches) out of a prepared copy, plants them in a temporary data dir's
TFDS download cache under the names TFDS gives its downloads, and runs the stock
`download_and_prepare` there: extraction, the builder's own reading, PNG encoding, shuffling
and the ArrayRecord writer. TFDS does not re-hash a cached file, so the rebuilt files (not
byte-identical to the originals: other gzip settings and, for MNIST, another order) pass where
a download would be checked; this is why it is a benchmark and never part of the product or of
the tests. It ends by checking that the prepared images and labels are those of the copy.
"""

import argparse
import gzip
import hashlib
import io
import json
import struct
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.core.download import resource as resource_lib

VERSIONS = {"mnist": "3.0.1", "cifar10": "3.0.2"}
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def read_all(name, data_dir, split):
    source = tfds.data_source(f"{name}:{VERSIONS[name]}", data_dir=data_dir, download=False)
    items = source[split].__getitems__(list(range(len(source[split]))))
    return sorted(items, key=lambda item: item["id"]) if "id" in items[0] else items


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def mnist_raw(data_dir):
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        items = read_all("mnist", data_dir, split)
        images = np.stack([item["image"] for item in items])
        labels = np.array([item["label"] for item in items], np.uint8)
        n = len(items)
        files[f"{prefix}-images-idx3-ubyte.gz"] = gz(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        )
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gz(
            struct.pack(">II", 0x801, n) + labels.tobytes()
        )
    return {MNIST_URL + name: data for name, data in files.items()}


def cifar10_raw(data_dir):
    def rows(split):
        return b"".join(
            bytes([item["label"]]) + item["image"].transpose(2, 0, 1).tobytes()
            for item in read_all("cifar10", data_dir, split)
        )

    train, batch = rows("train"), 10000 * (1 + 32 * 32 * 3)  # 10,000 (label, image) rows a file
    members = {f"data_batch_{i + 1}.bin": train[i * batch : (i + 1) * batch] for i in range(5)}
    members["test_batch.bin"] = rows("test")
    names = tfds.builder("cifar10:3.0.2", data_dir=data_dir).info.features["label"].names
    members["batches.meta.txt"] = ("\n".join(names) + "\n\n").encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo("cifar-10-batches-bin/" + member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {CIFAR10_URL: archive.getvalue()}


def digest(name, data_dir, split):
    """sha256 of the split's (image, label) pairs, in an order that does not depend on files."""
    items = read_all(name, data_dir, split)
    pairs = sorted(item["image"].tobytes() + bytes([item["label"]]) for item in items)
    return hashlib.sha256(b"".join(pairs)).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(VERSIONS))
    parser.add_argument("--from", dest="source", required=True, help="a prepared data dir")
    args = parser.parse_args()
    raw = (mnist_raw if args.dataset == "mnist" else cifar10_raw)(args.source)
    registered = checksums.get_all_url_infos()
    with tempfile.TemporaryDirectory() as data_dir:
        cache = Path(data_dir) / "downloads"
        cache.mkdir()
        for url, data in raw.items():
            path = cache / resource_lib.get_dl_fname(url, registered[url].checksum)
            path.write_bytes(data)
            resource_lib.get_info_path(path).write_text(json.dumps({"urls": [url]}))
        versioned = f"{args.dataset}:{VERSIONS[args.dataset]}"
        builder = tfds.builder(versioned, data_dir=data_dir, file_format="array_record")
        start = time.perf_counter()
        builder.download_and_prepare()
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(builder.data_path).iterdir())
        same = all(
            digest(args.dataset, data_dir, split) == digest(args.dataset, args.source, split)
            for split in ("train", "test")
        )
        print(
            f"{versioned}: prepared from {sum(map(len, raw.values())) / 1e6:.1f} MB of raw files "
            f"in {seconds:.1f} s ({size / 1e6:.0f} MB of ArrayRecord files); images and labels "
            f"equal to {args.source}'s: {same}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
