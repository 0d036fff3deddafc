"""Run a model written by `python -m alexnet_jax.export`, with JAX and NumPy alone.

    from alexnet_jax import exported
    model = exported.load("exports/mnist")
    logits = model(images)  # uint8 [B, 28, 28, 1] -> float32 [B, 10]
    model.class_names[logits[0].argmax()]

The folder holds everything: the serialized inference function (StableHLO through `jax.export`,
preprocessing included), its weights and a manifest. This module imports neither the model code
nor the training config (a test checks it), so it can be copied and used on its own.
"""

import json
from pathlib import Path

import jax
import numpy as np

FORMAT = "alexnet_jax.exported"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FUNCTION = "function.jaxexport"
WEIGHTS = "weights.npz"


class Predictor:
    """The exported function with its weights on the default device; call it on uint8 images."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} has no {MANIFEST}: is it an export folder?")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not an {FORMAT} manifest")
        if self.manifest["format_version"] > FORMAT_VERSION:
            raise ValueError(
                f"{directory} has format version {self.manifest['format_version']}; this loader "
                f"reads up to {FORMAT_VERSION}: use a newer alexnet_jax"
            )
        self.class_names = tuple(self.manifest["class_names"])
        self.input_shape = tuple(self.manifest["input"]["shape"][1:])  # (H, W, C)
        function = jax.export.deserialize(bytearray((directory / FUNCTION).read_bytes()))
        with np.load(directory / WEIGHTS, allow_pickle=False) as weights:
            arrays = [weights[name] for name in self.manifest["weight_names"]]
        self._weights = jax.device_put(arrays)
        # jit caches the compiled function per batch size.
        self._call = jax.jit(function.call)

    def __call__(self, images) -> np.ndarray:
        """Logits [B, classes] of uint8 images [B, H, W, C] of the manifest's input shape."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.input_shape:
            expected = "x".join(map(str, self.input_shape))
            raise ValueError(
                f"expected uint8 images [batch, {expected.replace('x', ', ')}] "
                f"({expected} per image), got {images.dtype} {list(images.shape)}"
            )
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.asarray(self._call(self._weights, images))

    def probabilities(self, images) -> np.ndarray:
        """Softmax of the logits."""
        logits = self(images)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)


def load(directory: str | Path) -> Predictor:
    """The model exported to `directory`."""
    return Predictor(directory)
