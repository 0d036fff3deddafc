"""`python load.py DATASET` (from the repository root, PYTHONPATH=.): the seconds one
`data.load_dataset` of ../shared/tfds takes in this process (load-times.txt)."""

import sys
import time

from alexnet_jax import data

start = time.perf_counter()
dataset = data.load_dataset(sys.argv[1], "../shared/tfds", download=False)
seconds = time.perf_counter() - start
print(
    f"{sys.argv[1]}: {len(dataset.train)} train, {len(dataset.test)} test images in {seconds:.2f} s"
)
