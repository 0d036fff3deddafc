"""Keras interop: the seed's Keras models in as alexnet_jax runs, ours out as Keras 3 files.

    python -m alexnet_jax.keras_io import MODEL --dataset mnist|cifar10 --out RUN_DIR
        [--input-scale unit|standard|raw] [--image-size N] [--data-dir DIR]
    python -m alexnet_jax.keras_io export --ckpt RUN [--best] --out model.keras

`import` takes a `.keras` file, a Keras 3 `.weights.h5`, or a Keras 2 HDF5 file (`model.save`
or `model.save_weights` to `.h5`), checks every layer against the seed's table, and writes a run
whose one checkpoint (epoch 0, no metrics, a fresh optimiser) holds the weights: `eval`,
`predict`, `report` and `export` then take it as --ckpt. Nothing in the file is unpickled or
run: a config that asks for code (a Lambda layer, a module outside Keras) is refused before
Keras reads it, and Keras loads the rest with safe_mode. `export` writes a Keras 3 model of raw
uint8 images: Rescaling, Resizing and Normalization in front of the seed's layers, with the run's
weights (its moving average when it has one). Both need the `keras` extra.
"""

import argparse
import datetime
import hashlib
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import artifacts, checkpoint, outputs
from alexnet_jax.config import default_config, derive, validate
from alexnet_jax.data import DATASETS, spec
from alexnet_jax.errors import UserError, cli, first_line
from alexnet_jax.evaluation import combined_logits, view_logits, views
from alexnet_jax.locks import hold_output
from alexnet_jax.model import BN_EPSILON, LAYERS, MIN_IMAGE_SIZE, AlexNet, feature_size
from alexnet_jax.parallel import make_mesh
from alexnet_jax.state import create_train_state, inference_variables
from alexnet_jax.summary import KERAS_TYPES

try:  # keras_model now, so that Keras starts on the JAX backend whoever imports it next
    import h5py

    from alexnet_jax import keras_model
except ModuleNotFoundError as e:  # the keras extra is not installed: said when it is needed
    keras_model, h5py, _keras_missing = None, None, e

IMPORTED = "imported.json"  # in the run dir: where the weights came from and what was done

# What a Keras model may expect as input, per channel: a * pixel + b with pixels 0..255.
INPUT_SCALES = {
    "unit": "pixels / 255, in [0, 1] (Rescaling(1/255), the usual Keras recipe)",
    "standard": "(pixels / 255 - mean) / std, the dataset's mean and std, as alexnet_jax trains",
    "raw": "pixels 0..255 as they are",
}
# Layers in front of conv2d that the import understands: the affine ones set the input scale.
PREPROCESSING = ("Resizing", "Rescaling", "Normalization")
# Augmentation layers: identities at inference, so a model may keep them in front.
INACTIVE_AT_INFERENCE = (
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "GaussianNoise",
    "GaussianDropout",
)
WEIGHTED = tuple(name for name, kind, _ in LAYERS if kind in ("conv", "norm", "dense", "logits"))


def _keras_model():
    """alexnet_jax.keras_model, or a UserError saying how to install Keras."""
    if keras_model is None:
        raise UserError(
            f"Keras interop needs Keras 3 ({_keras_missing}): install the extra, "
            "pip install -e '.[keras]'"
        )
    return keras_model


@dataclass
class KerasWeights:
    """What an import read from a Keras file, before it is checked against a dataset."""

    source: Path
    format: str
    keras_version: str | None
    weights: dict[str, list[np.ndarray]]  # seed layer name -> its Keras weights, in Keras' order
    image_size: int | None = None  # the model's input side, when the file fixes it
    input_scale: tuple[np.ndarray, np.ndarray] | None = None  # (a, b) when the file says
    dropout_rate: float | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading a Keras file


def read_keras_file(path: str | Path) -> KerasWeights:
    """The seed's weights from a .keras, .weights.h5 or Keras 2 .h5 file, told apart by content."""
    path = Path(path)
    _keras_model()
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file: pass a Keras model file")
    if zipfile.is_zipfile(path):
        return _read_keras_archive(path)
    if path.suffix == ".keras":
        raise UserError(
            f"{path} is not a zip archive, as .keras files are: it is truncated or damaged"
        )
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise UserError(
            f"{path} is neither a .keras archive nor an HDF5 file that h5py can open "
            f"({first_line(e)}): it is truncated, damaged or not a Keras file"
        ) from e
    try:
        with file:
            version = _text(file.attrs.get("keras_version"))
            if "model_config" in file.attrs:
                return _read_keras2_model(path, file, version)
            if "layer_names" in file.attrs or "model_weights" in file:
                group = file["model_weights"] if "model_weights" in file else file
                weights = _read_keras2_weights(group, path)
                return KerasWeights(path, f"Keras {version or '2'} HDF5 weights", version, weights)
            if "layers" in file:
                return KerasWeights(path, "Keras 3 .weights.h5", None, _read_weights_h5(file, path))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"cannot read {path} ({first_line(e)}): it is truncated or damaged") from e
    raise UserError(f"{path} is an HDF5 file but holds no Keras model or weights")


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _read_keras_archive(path: Path) -> KerasWeights:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            names = archive.namelist()
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise UserError(
            f"{path} is not a readable .keras archive ({first_line(e)}): truncated or damaged?"
        ) from e
    if not isinstance(config, dict):
        raise UserError(f"{path}: its config.json is not a Keras model's")
    _refuse_unsafe(config, path)
    keras = _keras_model().keras
    if path.suffix != ".keras":
        raise UserError(f"{path} is a zip archive: a Keras 3 model file must be named *.keras")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many kinds here, with long messages
        raise UserError(f"Keras {keras.__version__} cannot load {path}: {first_line(e)}") from e
    return _from_keras_model(model, path, ".keras", metadata.get("keras_version"))


def _read_keras2_model(path: Path, file, version: str | None) -> KerasWeights:
    config = json.loads(_text(file.attrs["model_config"]))
    if not isinstance(config, dict):
        raise UserError(f"{path}: its model_config is not a Keras model's")
    _refuse_unsafe(config, path)
    keras = _keras_model().keras
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise UserError(
            f"Keras {keras.__version__} cannot read {path}, a Keras {version or '2'} HDF5 model "
            f"({first_line(e)}): load it with the Keras that wrote it, save its weights with "
            "model.save_weights('alexnet.h5') and import that file with --input-scale"
        ) from e
    return _from_keras_model(model, path, f"Keras {version or '2'} HDF5 model", version)


def _refuse_unsafe(config: dict, path: Path) -> None:
    """Refuse a model config whose loading would run Python code or import other modules."""
    # compile_config (optimiser, loss) is never read: models are loaded with compile=False.
    found = _unsafe({k: v for k, v in config.items() if k != "compile_config"})
    if found:
        raise UserError(
            f"{path} asks for unsafe deserialisation ({found}): refused, nothing was loaded. If "
            "you trust the file, load it in Keras with safe_mode=False, save its weights with "
            "model.save_weights('alexnet.weights.h5') and import that file with --input-scale"
        )


def _unsafe(config) -> str | None:
    """What in a Keras config would run code when loaded (a lambda, a non-Keras module)."""
    if isinstance(config, dict):
        name = config.get("class_name")
        if name in ("Lambda", "__lambda__"):
            return f"a {name} with Python code"
        module = config.get("module")
        if isinstance(module, str) and module.split(".")[0] != "keras":
            return f"{name} from the module {module}"
        values = config.values()
    elif isinstance(config, list):
        values = config
    else:
        return None
    return next((found for value in values if (found := _unsafe(value))), None)


def _read_weights_h5(file, path: Path) -> dict[str, list[np.ndarray]]:
    """Keras 3 weights: `<...>/<layer>/vars/<i>`, layers named by class and position (conv2d_1)."""
    groups = []

    def visit(name, item):
        if name.rsplit("/", 1)[-1] == "vars" and hasattr(item, "keys") and len(item):
            groups.append(name.removesuffix("vars").rstrip("/"))

    file.visititems(visit)
    groups = [g for g in groups if g.split("/")[0] != "optimizer"]  # saved by a compiled model
    firsts = [g for g in groups if g.rsplit("/", 1)[-1] == "conv2d"]
    if len(firsts) != 1:
        raise UserError(
            f"{path} holds {'no' if not firsts else 'several'} layer conv2d with weights: "
            "not the weights of the seed's AlexNet"
        )
    prefix = firsts[0].removesuffix("conv2d")
    missing = [name for name in WEIGHTED if prefix + name not in groups]
    extra = sorted(set(groups) - {prefix + name for name in WEIGHTED})
    if missing or extra:
        what = [f"no weights for {', '.join(missing)}"] if missing else []
        what += [f"weights of {', '.join(extra)}"] if extra else []
        raise UserError(f"{path} has {'; '.join(what)}: not the weights of the seed's AlexNet")
    arrays = {}
    for name in WEIGHTED:
        variables = file[f"{prefix}{name}/vars"]
        arrays[name] = [variables[str(i)][()] for i in range(len(variables))]
    return arrays


def _read_keras2_weights(group, path: Path) -> dict[str, list[np.ndarray]]:
    """Keras 2 weights (`save_weights` to .h5): by position, as Keras 2 itself loads them."""
    weighted = []
    for layer in (_text(name) for name in group.attrs["layer_names"]):
        names = [_text(name) for name in group[layer].attrs["weight_names"]]
        if names:
            weighted.append((layer, [group[layer][name][()] for name in names]))
    if len(weighted) != len(WEIGHTED):
        found = ", ".join(layer for layer, _ in weighted[:14])
        raise UserError(
            f"{path} holds the weights of {len(weighted)} layers ({found}), the seed's AlexNet "
            f"has {len(WEIGHTED)}: not its weights"
        )
    return {name: arrays for name, (_, arrays) in zip(WEIGHTED, weighted, strict=True)}


def _from_keras_model(model, path: Path, format: str, version: str | None) -> KerasWeights:
    """Check a loaded Keras model layer by layer against the seed's table; take its weights."""
    keras = _keras_model().keras
    model, views_note = _single_view(model, keras)
    layers = _flat_layers(model, keras)
    start = next((i for i, layer in enumerate(layers) if type(layer).__name__ == "Conv2D"), None)
    if start is None:
        raise UserError(f"{path} has no Conv2D layer: not the seed's AlexNet")
    stack = layers[start : start + len(LAYERS)]
    read = KerasWeights(path, format, version, {})
    try:
        integer_input = not keras.backend.is_float_dtype(model.inputs[0].dtype)
    except (AttributeError, IndexError, TypeError, ValueError):  # a model never built
        integer_input = False
    read.input_scale, read.notes = _input_scale(layers[:start], path, keras, integer_input)
    read.notes += [views_note] if views_note else []
    # zip stops at the shorter: a model that ends early is told after its layers are checked.
    for position, (layer, (name, kind, args)) in enumerate(
        zip(stack, LAYERS, strict=False), start + 1
    ):
        problem = _mismatch(layer, kind, args)
        if problem:
            raise UserError(
                f"{path}: layer {position} ({layer.name}) {problem}, where the seed's AlexNet has "
                f"{name} ({KERAS_TYPES[kind]}): not the seed's AlexNet"
            )
        if kind in ("conv", "norm", "dense", "logits"):
            read.weights[name] = [np.asarray(w) for w in layer.get_weights()]
        if kind == "dropout" and read.dropout_rate is None:
            read.dropout_rate = float(layer.rate)
    if len(stack) < len(LAYERS):
        raise UserError(
            f"{path} ends after {stack[-1].name}, where the seed's AlexNet goes on with "
            f"{LAYERS[len(stack)][0]}: not the seed's AlexNet"
        )
    for layer in layers[start + len(LAYERS) :]:
        config = layer.get_config()
        softmax = type(layer).__name__ == "Softmax" or config.get("activation") == "softmax"
        if not softmax:
            raise UserError(
                f"{path}: layer {layer.name} ({type(layer).__name__}) after dense_2 is not a "
                "softmax: not the seed's AlexNet"
            )
    read.image_size = _square_input(stack[0], path)
    return read


def _single_view(model, keras):
    """(the model of one view, a note) for a `keras_io export` with test-time views, which
    nests the single-view model (`keras_model.views_model`); (model, None) for any other."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    name = model.name.rsplit("_", 2)
    if len(nested) != 1 or len(name) != 3 or name[2] != "views" or not name[1].isdigit():
        return model, None
    return nested[0], (
        f"its {name[1]} test-time views are not imported: the run evaluates one view unless "
        "you set eval_flip / eval_shift in its config"
    )


def _flat_layers(model, keras) -> list:
    """The model's layers in order, nested models opened, input layers left out."""
    flat = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            flat += _flat_layers(layer, keras)
        elif not isinstance(layer, keras.layers.InputLayer):
            flat.append(layer)
    return flat


def _mismatch(layer, kind: str, args: dict) -> str | None:
    """How a Keras layer differs from the seed's layer of `kind`, or None."""
    actual, expected = type(layer).__name__, KERAS_TYPES[kind]
    if actual != expected:
        return f"is a {actual}"
    config = layer.get_config()
    want = {}
    if kind == "conv":
        k, s = args["kernel"], args.get("strides", 1)
        want = dict(
            filters=args["features"],
            kernel_size=(k, k),
            strides=(s, s),
            padding=args.get("padding", "SAME").lower(),
            activation="relu",
            use_bias=True,
            dilation_rate=(1, 1),
            groups=1,
            data_format="channels_last",
        )
    elif kind == "norm":
        if config.get("axis") not in (-1, 3, [-1], [3]):
            return f"normalises axis {config.get('axis')}, not the channels"
        if not np.isclose(config.get("epsilon", 0), BN_EPSILON):
            return f"has epsilon {config.get('epsilon')}, not {BN_EPSILON}"
        want = dict(center=True, scale=True)
    elif kind == "pool":
        want = dict(pool_size=(3, 3), strides=(2, 2), padding="valid", data_format="channels_last")
    elif kind == "flatten":
        want = dict(data_format="channels_last")
    elif kind == "dense":
        want = dict(units=args["features"], activation="relu", use_bias=True)
    elif kind == "logits":
        if config.get("activation") not in ("linear", "softmax"):
            return f"has activation {config.get('activation')}, not softmax or none"
        want = dict(use_bias=True)
    for key, value in want.items():
        got = config.get(key, value)  # an option this Keras does not have takes the default
        if (tuple(got) if isinstance(got, list) else got) != value:
            return f"has {key}={got!r}, not {value!r}"
    return None


def _square_input(first_conv, path: Path) -> int | None:
    """The side of conv2d's input, when the model fixes it."""
    try:
        _, height, width, _ = first_conv.input.shape
    except (AttributeError, ValueError):  # a layer never called on a known input
        return None
    if height is None or width is None:
        return None
    if height != width:
        raise UserError(
            f"{path}: the model takes {height}x{width} inputs; alexnet_jax's are square"
        )
    return int(height)


def _input_scale(front: list, path: Path, keras, integer_input: bool):
    """(a, b) of the layers in front of conv2d (their input: pixels 0..255), and notes.

    None when no Rescaling or Normalization layer says how the inputs were scaled.
    """
    a, b, known, notes = np.ones(1), np.zeros(1), False, []
    for layer in front:
        name = type(layer).__name__
        if name == "Resizing":
            method = layer.get_config().get("interpolation")
            if method != "bilinear":
                notes.append(
                    f"its Resizing layer interpolates {method}; alexnet_jax resizes bilinearly, "
                    "so predictions may differ slightly"
                )
            if integer_input and not known:
                notes.append(
                    "its Resizing layer rounds the resized integer images to integers; "
                    "alexnet_jax does not, so predictions may differ slightly"
                )
        elif name == "Rescaling":
            scale, offset = (_per_channel(v, layer, path) for v in (layer.scale, layer.offset))
            a, b, known = a * scale, b * scale + offset, True
        elif name == "Normalization":
            if layer.invert:
                raise UserError(
                    f"{path}: its Normalization layer {layer.name} inverts: not an input"
                )
            mean = _per_channel(keras.ops.convert_to_numpy(layer.mean), layer, path)
            std = np.sqrt(_per_channel(keras.ops.convert_to_numpy(layer.variance), layer, path))
            std = np.maximum(std, keras.config.epsilon())  # as Normalization divides
            a, b, known = a / std, (b - mean) / std, True
        elif name not in INACTIVE_AT_INFERENCE:
            raise UserError(
                f"{path}: layer {layer.name} ({name}) before conv2d is not one that alexnet_jax "
                f"reproduces ({', '.join(PREPROCESSING)}, or augmentation inactive at inference)"
            )
    return ((a, b) if known else None), notes


def _per_channel(value, layer, path: Path) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.size > 1 and array.size != array.shape[-1]:
        raise UserError(
            f"{path}: its {type(layer).__name__} layer {layer.name} scales each pixel position "
            "differently; alexnet_jax scales per channel"
        )
    return array.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Checking against a dataset and writing a run


def seed_shapes(image_size: int, channels: int, num_classes: int) -> dict[str, list[tuple]]:
    """Each weighted layer's Keras weight shapes in the seed's model at this input."""
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    variables = jax.eval_shape(
        lambda x: AlexNet(num_classes).init(jax.random.key(0), x, train=False), dummy
    )
    keras_weights = _keras_model().KERAS_WEIGHTS
    kinds = dict((name, kind) for name, kind, _ in LAYERS)
    return {
        name: [tuple(variables[c][name][leaf].shape) for c, leaf in keras_weights[kinds[name]]]
        for name in WEIGHTED
    }


def _check_weights(read: KerasWeights, dataset: str, image_size: int | None) -> int:
    """Check the weights' shapes for `dataset`; returns the input size (file's, given, or 224)."""
    source, weights = read.source, read.weights
    channels, classes = spec(dataset).image_shape[-1], len(spec(dataset).class_names)
    kernel = np.shape(weights["conv2d"][0])
    if len(kernel) == 4 and kernel[:2] == (11, 11) and kernel[2] != channels:
        others = [n for n, s in DATASETS.items() if s.image_shape[-1] == kernel[2]]
        hint = f"pass --dataset {others[0]}" if others else "no dataset of alexnet_jax has them"
        raise UserError(
            f"{source} holds a model of {kernel[2]}-channel images, but {dataset}'s have "
            f"{channels}: {hint}"
        )
    if read.image_size and image_size and read.image_size != image_size:
        raise UserError(
            f"{source} fixes its input at {read.image_size}x{read.image_size}: drop --image-size"
        )
    size = read.image_size or image_size
    rows = np.shape(weights["dense"][0])[0] if np.ndim(weights["dense"][0]) == 2 else None
    side = int(round(np.sqrt(rows / 256))) if rows else None
    if size is None:
        size = 224  # the seed's
        if side and feature_size(size) != side:
            fits = [s for s in range(MIN_IMAGE_SIZE, 1024) if feature_size(s) == side]
            span = (
                f"inputs of {fits[0]} to {fits[-1]} pixels give it" if fits else "no input gives it"
            )
            raise UserError(
                f"{source}: its dense layer takes a {side}x{side}x256 feature map, which {span}: "
                "pass --image-size, the size it was trained at"
            )
    if size < MIN_IMAGE_SIZE:
        raise UserError(f"{source}: inputs of {size} pixels are too small for AlexNet")
    expected = seed_shapes(size, channels, classes)
    for name in WEIGHTED:
        got = [tuple(np.shape(w)) for w in weights[name]]
        if got != expected[name]:
            raise UserError(
                f"{source}: {name}'s weights have shapes {_shapes(got)}, the seed's AlexNet for "
                f"{dataset} at {size}x{size} has {_shapes(expected[name])}"
            )
        if not all(np.issubdtype(np.asarray(w).dtype, np.floating) for w in weights[name]):
            raise UserError(f"{source}: {name}'s weights are not floating-point numbers")
    return size


def _shapes(shapes) -> str:
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes)


def scale_of(name: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per channel of an `INPUT_SCALES` name: the model's input is a * pixel + b."""
    channels = spec(dataset).image_shape[-1]
    if name == "unit":
        return np.full(channels, 1 / 255), np.zeros(channels)
    if name == "raw":
        return np.ones(channels), np.zeros(channels)
    mean, std = (np.asarray(v, np.float64) for v in (spec(dataset).mean, spec(dataset).std))
    return 1 / (255 * std), -mean / std


def describe_scale(scale, dataset: str) -> str:
    a, b = scale
    for name, meaning in INPUT_SCALES.items():
        a0, b0 = scale_of(name, dataset)
        if np.allclose(a, a0, rtol=1e-6, atol=0) and np.allclose(b, b0, rtol=1e-6, atol=1e-9):
            return meaning
    return f"pixels x {np.round(a, 6).tolist()} + {np.round(b, 6).tolist()}"


def fold_input_scale(variables: dict, scale, dataset: str) -> tuple[dict, bool]:
    """Variables that give on alexnet_jax's inputs what `variables` gave on inputs a * pixel + b.

    alexnet_jax feeds (pixel / 255 - mean) / std = a0 * pixel + b0. The first convolution is
    linear and unpadded, so the change folds into its kernel and bias exactly (in float64): with
    s = a / a0 and t = b - s * b0, kernel[..., c, :] * s[c], and bias + sum(kernel * t[c]).
    Returns (variables, whether anything changed): a model of alexnet_jax's scale is left as is.
    """
    channels = spec(dataset).image_shape[-1]
    if any(np.size(v) not in (1, channels) for v in scale):
        raise UserError(f"the model scales {np.size(scale[0])} channels, {dataset} has {channels}")
    a, b = (np.broadcast_to(np.asarray(v, np.float64), (channels,)) for v in scale)
    a0, b0 = scale_of("standard", dataset)
    if np.allclose(a, a0, rtol=1e-6, atol=0) and np.allclose(b, b0, rtol=1e-6, atol=1e-9):
        return variables, False
    s, t = a / a0, b - (a / a0) * b0
    conv = variables["params"]["conv2d"]
    kernel = np.asarray(conv["kernel"], np.float64)
    folded = {
        "kernel": (kernel * s[None, None, :, None]).astype(np.float32),
        "bias": (conv["bias"] + np.einsum("hwcf,c->f", kernel, t)).astype(np.float32),
    }
    params = {**variables["params"], "conv2d": folded}
    return {**variables, "params": params}, True


@dataclass(frozen=True)
class Imported:
    """A Keras file's weights, checked for a dataset and put into alexnet_jax's terms."""

    read: KerasWeights
    variables: dict  # Flax {"params", "batch_stats"}, float32, for alexnet_jax's input scale
    image_size: int
    input_scale: tuple[np.ndarray, np.ndarray]  # (a, b) of the file's model
    folded: bool  # whether the input scale was folded into conv2d


def read_model(
    source: str | Path, dataset: str, input_scale: str | None = None, image_size: int | None = None
) -> Imported:
    """Read a Keras file of the seed's model and check it for `dataset` (see `import_model`)."""
    spec(dataset)
    if input_scale is not None and input_scale not in INPUT_SCALES:
        raise UserError(f"--input-scale {input_scale}: choose one of {', '.join(INPUT_SCALES)}")
    read = read_keras_file(source)
    size = _check_weights(read, dataset, image_size)
    if read.input_scale is not None and input_scale is not None:
        raise UserError(
            f"{read.source} says how its inputs are scaled (its Rescaling or Normalization "
            "layers): drop --input-scale"
        )
    if read.input_scale is None and input_scale is None:
        choices = "; ".join(f"{name}: {meaning}" for name, meaning in INPUT_SCALES.items())
        raise UserError(
            f"{read.source} does not say how its inputs were scaled (no Rescaling or "
            f"Normalization layer in front of conv2d): pass --input-scale ({choices})"
        )
    scale = read.input_scale if input_scale is None else scale_of(input_scale, dataset)
    variables = _keras_model().flax_variables(read.weights)
    variables = jax.tree.map(lambda w: np.asarray(w, np.float32), variables)
    variables, folded = fold_input_scale(variables, scale, dataset)
    return Imported(read, variables, size, scale, folded)


def import_model(
    source: str | Path,
    dataset: str,
    out: str | Path,
    input_scale: str | None = None,
    image_size: int | None = None,
    data_dir: str | None = None,
    say=print,
) -> Path:
    """Write the run `out` from a Keras file of the seed's model; returns the run dir.

    The run's one checkpoint is epoch 0 with an empty metrics history (nothing was trained or
    evaluated here), a fresh optimiser state, and the config the file implies.
    """
    out = Path(out)
    # Held from the check that `out` is new or empty until the run is written: a second import
    # into it is refused, rather than writing the same files (and Orbax's temporary folder, of
    # a fixed name, which each one removes as it opens the checkpoints) beside this one's.
    with hold_output(out, "keras_io import", "--out"):
        check_run_folder(out)
        imported = read_model(source, dataset, input_scale, image_size)
        read, size, scale, folded = (
            imported.read,
            imported.image_size,
            imported.input_scale,
            imported.folded,
        )

        config = default_config()
        config.update(dataset=dataset, image_size=size)
        if read.dropout_rate is not None:
            config.dropout_rate = read.dropout_rate
        if data_dir:
            config.data_dir = data_dir
        validate(config)
        # A fresh state (optimiser moments at zero, step 0) with the imported weights in it.
        state = create_train_state(config, derive(config), 1, imported.variables)
        record = {
            "source": str(read.source.absolute()),
            "sha256": hashlib.sha256(read.source.read_bytes()).hexdigest(),
            "format": read.format,
            "keras_version": read.keras_version,
            "dataset": dataset,
            "image_size": size,
            "input_scale": {
                "meaning": describe_scale(scale, dataset),
                "from": "the file" if input_scale is None else "--input-scale",
                "a": np.broadcast_to(scale[0], spec(dataset).image_shape[-1:]).tolist(),
                "b": np.broadcast_to(scale[1], spec(dataset).image_shape[-1:]).tolist(),
            },
            "folded_into_conv2d": folded,
            "imported": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        write_run(out, state, config, record)

    say(f"imported {read.source} ({read.format}) into {out}")
    say(f"  {dataset}, {size}x{size} input; the file's inputs: {record['input_scale']['meaning']}")
    if folded:
        say("  that scale is folded into conv2d's kernel and bias, as alexnet_jax feeds")
        say(f"  {INPUT_SCALES['standard']}")
    for note in read.notes:
        say(f"  note: {note}")
    say("  epoch 0 (no alexnet_jax training, no metrics); eval, predict, report and export take")
    say(f"  --ckpt {out}")
    return out


def check_run_folder(out: Path) -> None:
    """Refuse an `out` that is not a new or empty folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder for the run")
    if (out / checkpoint.CHECKPOINTS).exists():
        raise UserError(f"{out} holds a run already: pass another --out (nothing was changed)")
    # The run's files (config.json, imported.json, ...) would replace the user's own, and a
    # workdir named here would become a run that hides the runs inside it.
    present = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if present:
        raise UserError(
            f"--out {out} is not empty ({outputs.listed(present)}): the run is written into a "
            "new or empty folder; name one (nothing was changed)"
        )


def write_run(out: Path, state, config, record: dict) -> None:
    """The run's checkpoint, config.json and imported.json into the new or empty `out`. An
    import that fails part way removes what it wrote: a checkpoints folder left there would
    make the next import refuse `out` as a run, which eval would find empty."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        checkpoints = checkpoint.Checkpoints(out / checkpoint.CHECKPOINTS)
        try:
            checkpoints.save(0, state, config, [])
            checkpoints.wait()
        finally:
            checkpoints.close()
        artifacts.write_config(out, config)
        outputs.write_text(out / IMPORTED, json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(out / checkpoint.CHECKPOINTS, ignore_errors=True)
        for name in (artifacts.CONFIG, IMPORTED):
            (out / name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Export


def export_model(ckpt: str | Path, out: str | Path, best: bool = False, say=print):
    """Write a run's model as a Keras 3 file of uint8 images -> logits; returns (path, check)."""
    out = Path(out)
    if out.suffix != ".keras":
        raise UserError(f"--out {out}: a Keras 3 model file must end in .keras")
    # Held from the check that `out` does not exist until the model is in place: a second
    # export to it is refused, rather than checking or removing this one's file.
    with hold_output(out, "keras_io export", "--out"):
        if out.is_dir():
            raise UserError(f"--out {out} is a folder: pass a file name ending in .keras")
        if out.exists():
            # It may be the user's own Keras model, the very file a run was imported from.
            raise UserError(f"--out {out} exists: delete it first, or name another file")
        outputs.check_file(str(out), "--out")
        keras_model = _keras_model()
        trained = checkpoint.load_trained(ckpt, best, make_mesh(jax.devices()[:1]))
        config = trained.config
        variables = jax.device_get(inference_variables(trained.state))
        model = keras_model.inference_model(
            config.dataset,
            config.image_size,
            variables,
            config.dropout_rate,
            flip=config.eval_flip,
            shift=config.eval_shift,
            image_shape=trained.source_shape,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside under a name of its own and linked into place, so that a failed export
        # never leaves half a file at `out`, and a file that appeared there is never replaced.
        partial = outputs.temporary_beside(out).with_suffix(".partial.keras")
        try:
            try:
                model.save(partial)
            except OSError as e:
                if not outputs.disk_full(e):
                    raise
                raise outputs.write_error(str(out), e) from e
            difference = check_export(trained, partial)
            try:
                outputs.publish_new(partial, out)
            except FileExistsError as e:
                raise UserError(
                    f"--out {out} appeared while the model was exported (another program wrote "
                    "it): it was left as it is and the export was not written; name another file"
                ) from e
            except OSError as e:
                raise outputs.write_error(str(out), e) from e
        finally:
            partial.unlink(missing_ok=True)
    note = checkpoint.in_memory_note(
        trained,
        f"a Keras file holds no class names: its {trained.derived.num_classes} outputs are its "
        f"classes, in order ({outputs.listed(list(trained.class_names))})",
    )
    if note:
        print(note, file=sys.stderr)

    shape = "x".join(map(str, trained.source_shape))
    averaged = " (the moving average of its weights)" if trained.state.ema is not None else ""
    say(f"exported {config.dataset}, epoch {trained.epoch} of {trained.path.parent}{averaged}")
    classes = trained.derived.num_classes
    say(f"  {out}: Keras 3, uint8 [batch, {shape}] -> logits [batch, {classes}], resize to")
    say(f"  {config.image_size}x{config.image_size} and normalisation inside")
    count = len(views(config.eval_flip, config.eval_shift))
    if count > 1:
        say(
            f"  the run's {count} test-time views inside (eval_flip={config.eval_flip}, "
            f"eval_shift={config.eval_shift}): logits whose softmax is the mean of theirs"
        )
    say(f"  checked: read back with safe_mode, logits within {difference:.2g} of alexnet_jax's")
    return out, difference


def logits(trained: checkpoint.Trained, images: np.ndarray) -> np.ndarray:
    """alexnet_jax's float32 logits of uint8 images, from the run's inference variables, over
    the run's test-time views as evaluation combines them."""
    config, dataset = trained.config, trained.derived.dataset
    model = AlexNet(trained.derived.num_classes, stem=config.stem)

    @jax.jit
    def forward(variables, images):
        options = dict(image_size=config.image_size, mean=dataset.mean, std=dataset.std)
        return combined_logits(
            view_logits(
                model.apply,
                variables,
                images,
                **options,
                dtype=jnp.float32,
                flip=config.eval_flip,
                shift=config.eval_shift,
            )
        )

    return np.asarray(forward(inference_variables(trained.state), images))


def check_export(trained: checkpoint.Trained, path: Path) -> float:
    """Load the written file as a user would and compare its logits on random images with ours.

    Returns the largest difference; raises when it is more than float32 rounding allows.
    """
    keras = _keras_model().keras
    images = np.random.default_rng(0).integers(0, 256, (3, *trained.source_shape), np.uint8)
    ours = logits(trained, images)
    theirs = np.asarray(keras.saving.load_model(path, safe_mode=True).predict(images, verbose=0))
    difference = float(np.abs(theirs - ours).max())
    tolerance = 1e-4 * max(1.0, float(np.abs(ours).max()))
    if not difference <= tolerance:  # also catches NaN
        raise UserError(
            f"the Keras export's logits differ from alexnet_jax's by {difference:.3g}, more than "
            f"{tolerance:.3g}; {path.name} was not written: please report this"
        )
    return difference


# ---------------------------------------------------------------------------------------------
# Command line


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bring = commands.add_parser("import", help="a Keras file of the seed's model -> a run")
    bring.add_argument("model", help=".keras, .weights.h5, or a Keras 2 .h5 model or weights")
    bring.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    bring.add_argument("--out", required=True, help="the run dir to write")
    bring.add_argument(
        "--input-scale",
        choices=tuple(INPUT_SCALES),
        help="how the model's inputs were scaled, for files that do not say: "
        + "; ".join(f"{name}: {meaning}" for name, meaning in INPUT_SCALES.items()),
    )
    bring.add_argument(
        "--image-size", type=int, help="the model's input side, for files that do not fix it"
    )
    bring.add_argument("--data-dir", help="TFDS data dir, stored in the run's config for eval")
    send = commands.add_parser("export", help="a run -> a Keras 3 .keras model")
    checkpoint.add_arguments(send)
    send.add_argument("--out", required=True, help="the .keras file to write")
    args = parser.parse_args(argv)
    if args.command == "import":
        import_model(
            args.model, args.dataset, args.out, args.input_scale, args.image_size, args.data_dir
        )
    else:
        export_model(args.ckpt, args.out, args.best)


if __name__ == "__main__":
    main()
