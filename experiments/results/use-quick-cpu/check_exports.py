"""Accuracy of an export's two formats on the MNIST test split, and where they disagree.

python experiments/results/use-quick-cpu/check_exports.py exports/mnist ../shared/tfds
"""

import sys
import time

import numpy as np
import onnxruntime

from alexnet_jax import exported
from alexnet_jax.data import load_dataset


def main(export_dir, data_dir):
    test = load_dataset("mnist", data_dir, download=False).test
    batches = [test.images[i : i + 500] for i in range(0, len(test), 500)]
    model = exported.load(export_dir)
    start = time.perf_counter()
    jax_predictions = np.concatenate([model(batch).argmax(1) for batch in batches])
    jax_seconds = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        f"{export_dir}/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    start = time.perf_counter()
    onnx_predictions = np.concatenate(
        [session.run(None, {"images": batch})[0].argmax(1) for batch in batches]
    )
    onnx_seconds = time.perf_counter() - start
    print(f"jax.export: {np.mean(jax_predictions == test.labels):.2%} in {jax_seconds:.1f} s")
    print(f"onnx:       {np.mean(onnx_predictions == test.labels):.2%} in {onnx_seconds:.1f} s")
    print(f"predictions that differ: {int((jax_predictions != onnx_predictions).sum())}")


if __name__ == "__main__":
    main(*sys.argv[1:])
