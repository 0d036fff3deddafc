"""The seed's AlexNet as Keras 3 layers (on the JAX backend), and its weights as Flax variables.

The layers come from `model.LAYERS`, the table the Flax module is built from, and carry the seed's
layer names (conv2d, batch_normalization, ..., dense_2), so one table defines both models. Needs
the `keras` extra (`pip install -e '.[keras]'`).
"""

import os
import sys

if "keras" not in sys.modules:  # the backend is chosen once, when Keras is first imported
    os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.data import DATASETS  # noqa: E402
from alexnet_jax.evaluation import views  # noqa: E402
from alexnet_jax.model import BN_EPSILON, BN_MOMENTUM, LAYERS  # noqa: E402

# Each weighted layer's Keras weights, in Keras' order, as (Flax collection, Flax name).
KERAS_WEIGHTS = {
    "conv": (("params", "kernel"), ("params", "bias")),
    "dense": (("params", "kernel"), ("params", "bias")),
    "logits": (("params", "kernel"), ("params", "bias")),
    # gamma, beta, moving mean, moving variance
    "norm": (
        ("params", "scale"),
        ("params", "bias"),
        ("batch_stats", "mean"),
        ("batch_stats", "var"),
    ),
}


def seed_layers(
    num_classes: int = 10, dropout_rate: float = 0.5, initializer: str = "glorot_uniform"
) -> list:
    """The seed's 19 layers, from conv2d to dense_2, named as in its table.

    As in the seed, ReLU sits inside each convolution and hidden dense layer; dense_2 gives
    logits (the seed's softmax, if any, is left to the caller). `initializer` of the kernels:
    Keras' default, or "zeros" for layers that receive weights at once (drawing 46 million random
    numbers costs a JAX compilation per shape, seconds on a CPU).
    """
    layers = keras.layers
    init = dict(kernel_initializer=initializer)
    made = []
    for name, kind, args in LAYERS:
        if kind == "conv":
            made.append(
                layers.Conv2D(
                    args["features"],
                    args["kernel"],
                    strides=args.get("strides", 1),
                    padding=args.get("padding", "SAME").lower(),
                    activation="relu",
                    name=name,
                    **init,
                )
            )
        elif kind == "norm":
            made.append(
                layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)
            )
        elif kind == "pool":
            made.append(layers.MaxPooling2D(3, 2, name=name))
        elif kind == "flatten":
            made.append(layers.Flatten(name=name))
        elif kind == "dense":
            made.append(layers.Dense(args["features"], activation="relu", name=name, **init))
        elif kind == "dropout":
            made.append(layers.Dropout(dropout_rate, name=name))
        elif kind == "logits":
            made.append(layers.Dense(num_classes, name=name, **init))
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return made


def seed_model(
    image_size: int, channels: int, num_classes: int = 10, initializer: str = "glorot_uniform"
) -> keras.Sequential:
    """The seed's model as its table shows it: float input [image_size, image_size, channels]."""
    layers = seed_layers(num_classes, initializer=initializer)
    return keras.Sequential(
        [keras.Input((image_size, image_size, channels)), *layers],
        name="alexnet",
    )


def keras_weights(variables: dict) -> dict[str, list[np.ndarray]]:
    """Flax variables ({"params", "batch_stats"}) -> {layer name: its Keras weights, in order}."""
    weights = {}
    for name, kind, _ in LAYERS:
        if kind in KERAS_WEIGHTS:
            weights[name] = [
                np.asarray(variables[collection][name][leaf])
                for collection, leaf in KERAS_WEIGHTS[kind]
            ]
    return weights


def flax_variables(weights: dict[str, list[np.ndarray]]) -> dict:
    """The inverse of `keras_weights`."""
    variables = {"params": {}, "batch_stats": {}}
    for name, kind, _ in LAYERS:
        if kind in KERAS_WEIGHTS:
            for (collection, leaf), value in zip(KERAS_WEIGHTS[kind], weights[name], strict=True):
                variables[collection].setdefault(name, {})[leaf] = np.asarray(value)
    return variables


def set_weights(model: keras.Model, variables: dict) -> None:
    """Copy Flax variables into the layers of `model` that carry the seed's names."""
    for name, values in keras_weights(variables).items():
        model.get_layer(name).set_weights(values)


def inference_model(
    dataset: str,
    image_size: int,
    variables: dict,
    dropout_rate: float = 0.5,
    flip: bool = False,
    shift: int = 0,
    image_shape: tuple[int, int, int] | None = None,
) -> keras.Model:
    """uint8 images of `image_shape` [H, W, C] (default: the TFDS dataset's; a run trained on a
    Dataset of its own passes its images', `checkpoint.Trained.source_shape`) -> logits, as
    alexnet_jax evaluates them.

    Rescaling(1/255), Resizing (bilinear) to `image_size` and Normalization by the dataset's
    per-channel mean and std come first, in alexnet_jax's order, then the seed's layers with
    `variables` (Flax). Rescaling goes first because Keras' Resizing rounds integer images.
    With test-time views (`flip`, `shift`: the run's `eval_flip`, `eval_shift`), that model is
    nested in one that runs it on each view and combines them as evaluation does
    (`views_model`); with none, it is the whole model.
    """
    image_shape = tuple(image_shape or DATASETS[dataset].image_shape)
    single = _single_view_model(dataset, image_size, variables, dropout_rate, image_shape)
    if len(views(flip, shift)) == 1:
        return single
    return views_model(single, dataset, flip, shift, image_shape)


def views_model(
    single: keras.Model,
    dataset: str,
    flip: bool,
    shift: int,
    image_shape: tuple[int, int, int] | None = None,
) -> keras.Model:
    """`single` (uint8 images -> logits) on each of evaluation's test-time views, combined as
    `evaluation.combined_logits` does: logits whose softmax is the mean of the views'.

    Only Keras' own layers, so that the file loads with safe_mode: a shift is ZeroPadding2D and
    Cropping2D; the mirror is the columns cropped one by one and concatenated in reverse, taken
    of the source image before the resize (alexnet_jax mirrors after it: the same up to the
    rounding of the resize); the log of the mean probability is log_softmax's own logsumexp:
    for each class, log_softmax over the views' log-probabilities [l_1 .. l_n] gives
    l_1 - logsumexp(l), so l_1 minus that, less log n, is the combined logit.
    """
    layers = keras.layers
    data = DATASETS[dataset]
    image_shape = tuple(image_shape or data.image_shape)
    height, width, _ = image_shape
    images = keras.Input(image_shape, dtype="uint8", name="images")
    mirrored = None
    if flip:
        columns = [
            layers.Cropping2D(((0, 0), (j, width - 1 - j)), name=f"mirror_column_{j}")(images)
            for j in reversed(range(width))
        ]
        mirrored = layers.Concatenate(axis=2, name="mirror")(columns)

    def moved(source, dy, dx, name):
        if dy == dx == 0:
            return source
        pad = max(abs(dy), abs(dx))
        padded = layers.ZeroPadding2D(pad, name=f"{name}_pad")(source)
        crop = ((pad - dy, pad + dy), (pad - dx, pad + dx))
        return layers.Cropping2D(crop, name=f"{name}_crop")(padded)

    log_probabilities = []
    for view in views(flip, shift):
        (dy, dx), mirror = view["shift"], view["flip"]
        # Mirroring after a move right is the mirror moved left.
        source = moved(mirrored, dy, -dx, f"view_{len(log_probabilities)}") if mirror else None
        source = source if mirror else moved(images, dy, dx, f"view_{len(log_probabilities)}")
        log_probabilities.append(
            layers.Activation("log_softmax", name=f"view_{len(log_probabilities)}_log_softmax")(
                single(source)
            )
        )
    count, classes = len(log_probabilities), len(data.class_names)
    stacked = layers.Concatenate(axis=-1, name="views")(
        [
            layers.Reshape((classes, 1), name=f"view_{i}_column")(x)
            for i, x in enumerate(log_probabilities)
        ]
    )
    relative = layers.Activation("log_softmax", name="views_log_softmax")(stacked)
    first = layers.Reshape((classes,), name="first_view_relative")(
        layers.Cropping1D((0, count - 1), name="first_view")(
            layers.Permute((2, 1), name="views_first")(relative)
        )
    )
    logsumexp = layers.Subtract(name="logsumexp")([log_probabilities[0], first])
    combined = layers.Rescaling(1.0, offset=-float(np.log(count)), name="mean_probability")(
        logsumexp
    )
    return keras.Model(images, combined, name=f"{single.name}_{count}_views")


def _single_view_model(
    dataset: str,
    image_size: int,
    variables: dict,
    dropout_rate: float,
    image_shape: tuple[int, int, int],
) -> keras.Sequential:
    data = DATASETS[dataset]
    layers = keras.layers
    front = [keras.Input(image_shape, dtype="uint8", name="images")]
    front.append(layers.Rescaling(1 / 255, name="rescaling"))
    if tuple(image_shape[:2]) != (image_size, image_size):
        front.append(layers.Resizing(image_size, image_size, "bilinear", name="resizing"))
    front += [
        layers.Normalization(
            mean=list(data.mean), variance=list(np.square(data.std)), name="normalization"
        ),
    ]
    stack = seed_layers(len(data.class_names), dropout_rate, initializer="zeros")
    model = keras.Sequential(front + stack, name=f"alexnet_{dataset}")
    set_weights(model, variables)
    return model
