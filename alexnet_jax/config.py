"""Training configuration: defaults, experiment files, overrides, validation, and what it implies.

An experiment is a Python file with `get_config()` returning an `ml_collections.ConfigDict`
(see `experiments/`). Any field can be overridden with `FIELD=VALUE` strings (the commands'
`--config.FIELD=VALUE` options, see `cli.py`). `derive` computes once what a config implies
beyond its fields: the dataset's spec and normalisation, the compute dtype, the classes.
"""

import ast
import contextlib
import difflib
import importlib.util
import math
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from alexnet_jax.data import DATASETS, DatasetSpec, spec
from alexnet_jax.errors import UserError, first_line
from alexnet_jax.model import MIN_IMAGE_SIZE, STEMS
from alexnet_jax.pooling import POOL_BACKWARDS


def default_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the plain recipe's values."""
    c = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = config_dict.placeholder(str)  # None: TFDS's default ($TFDS_DATA_DIR)
    c.download = True  # prepare the dataset when it is absent (needs network and TensorFlow)
    c.train_examples = 0  # use only the first N training images (at most all); 0: all
    c.validation_examples = 0  # hold out the last N training images and evaluate on them
    c.image_size = 224  # the seed resizes every image to 224x224
    # bfloat16 on accelerators, float32 on CPU; or name one. No float16: without loss scaling
    # its small gradients underflow, and bfloat16 has float32's range and needs none.
    c.compute_dtype = "auto"
    # How the 11x11/4 first convolution is computed: space_to_depth (a 3x3/1 convolution over
    # 4x4 blocks, faster on accelerators) or conv11; the same parameters and function.
    c.stem = "space_to_depth"
    # How the max-poolings' gradient is computed: masks (nine shifted comparisons XLA fuses;
    # pooling.py; 9% faster steps on an H100, README: Speed), indices (the same, each window's
    # first maximum found once; not yet measured on a GPU) or select_and_scatter (JAX's own
    # rule): the same gradient.
    c.pool_backward = "masks"
    c.seed = 0

    c.num_epochs = 30
    c.batch_size = 512  # global, split over all devices
    c.eval_batch_size = 1000
    c.optimizer = "sgd"  # sgd (with momentum) | adamw
    c.learning_rate = 0.04  # peak of the schedule
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4  # on conv and dense kernels only
    c.schedule = "warmup_cosine"  # warmup_cosine | constant
    c.warmup_epochs = 1.0
    c.label_smoothing = 0.1
    c.dropout_rate = 0.5
    # Evaluate (and export) an exponential moving average of the parameters and BatchNorm
    # statistics, updated after every step with this decay; 0: off (the trained weights).
    c.ema_decay = 0.0

    c.crop_padding = 4  # random crop of the source image after zero-padding; 0: off
    c.flip = True  # random horizontal flips
    c.cutout = 0  # side in source pixels of a square hidden at a random place (mean colour); 0: off
    # TrivialAugment (wide ranges): one random operation per example at a random strength
    # (shear, translation, rotation, brightness, colour, contrast, sharpness, posterize,
    # solarize, autocontrast, equalize or none), on the source image before the crop and flip.
    c.trivial_augment = False
    # Random affine transform of the source image, before the crop and the resize (for MNIST),
    # filled with zeros (MNIST's black background; what the crop's padding holds). Each is drawn
    # uniformly per example: rotation in +-degrees, scale in 1 +- this, translation in +- this
    # fraction of the height and width, shear along x in +-degrees; all 0: off.
    c.affine_rotation = 0.0
    c.affine_scale = 0.0
    c.affine_translation = 0.0
    c.affine_shear = 0.0
    # Mixup (blend with another example of the global batch) and CutMix (paste a box of it):
    # the mixing coefficient is drawn from Beta(alpha, alpha) (0: off), and each example is
    # mixed with the given probability; the targets mix in proportion (then label smoothing).
    # With both on, an example is cut-mixed, mixed up or left alone; the probabilities must
    # add up to at most 1.
    c.mixup_alpha = 0.0
    c.mixup_probability = 1.0
    c.cutmix_alpha = 0.0
    c.cutmix_probability = 1.0
    # Test-time views (evaluation, seeds, report, predict, export average their probabilities):
    # the image and, with eval_flip, its mirror; with eval_shift=N, each of those shifted by N
    # source pixels up, down, left and right as well (zero-filled, as training's crops).
    c.eval_flip = False
    c.eval_shift = 0

    c.nonfinite = "stop"  # on a NaN/inf loss or gradient: stop the run | skip the step
    # The last N checkpoints; the best by evaluation accuracy is kept as well (on the validation
    # split when validation_examples holds one out, else on the test split).
    c.keep_checkpoints = 3
    # Epochs between checkpoints; the last epoch and a stop request (Ctrl-C, SIGTERM) always
    # save, so only a crash loses the epochs since the last one. A save blocks training for
    # about 0.28 s (the 357 MiB CIFAR-10 state at 224, measured on a 2-core CPU; not yet on a
    # GPU host), and at the 60,000 images/s aimed at on one H100 a CIFAR-10 epoch is 0.85 s:
    # saving every epoch would cost a third of the run, every 10th about 3%. On a machine
    # where an epoch takes minutes, pass 1.
    c.checkpoint_every = 10
    # Epochs between evaluations; the last epoch and every checkpointed one are always
    # evaluated, so each checkpoint carries its accuracy (the best one is chosen by it). On one
    # H100 an evaluation of CIFAR-10's test split (with mirrors) took 8% of an epoch's training.
    c.eval_every = 1
    c.log_every = 20  # steps between progress-bar updates (each one waits for the device)
    # Training steps run by one call to the devices (unrolled): the same steps as one at a time,
    # equal to float rounding (step.make_train_steps). Stop requests and progress take effect
    # between calls; compiling takes longer the more steps a call holds.
    c.steps_per_dispatch = 1
    # Locked: setting a field that does not exist (a typo in an experiment file) is an error
    # where it happens, not a silently ignored field.
    c.lock()
    return c


# Fields that may change when a run resumes: they do not alter what has been computed. (`stem`
# and `pool_backward` compute the same function and gradient, up to float rounding.
# `steps_per_dispatch` is not among them: its momentum and moving average of the small leaves
# round a few ulp apart, so a resume with another value would not give the run's bits.)
RESUMABLE_CHANGES = frozenset(
    {
        "data_dir",
        "download",
        "keep_checkpoints",
        "checkpoint_every",
        "eval_every",
        "log_every",
        "eval_batch_size",
        "nonfinite",
        "stem",
        "pool_backward",
    }
)

CHOICES = {
    "dataset": tuple(sorted(DATASETS)),
    "compute_dtype": ("auto", "float32", "bfloat16"),
    "stem": STEMS,
    "pool_backward": POOL_BACKWARDS,
    "optimizer": ("sgd", "adamw"),
    "schedule": ("warmup_cosine", "constant"),
    "nonfinite": ("stop", "skip"),
}


def load_config(path: str) -> ml_collections.ConfigDict:
    """Run `get_config()` of an experiment file (a Python file whose `get_config()` starts from
    `default_config()` and sets what it changes, as experiments/*.py do)."""
    file = Path(path)
    example = "pass an experiment file such as experiments/cifar10.py"
    if file.is_dir():
        raise UserError(f"config file {path} is a folder: {example}")
    if not file.is_file():
        raise UserError(f"config file {path} does not exist: {example}")
    if file.suffix != ".py":
        # A run's config.json, say: `--ckpt` and resuming read those, not `--config`.
        raise UserError(f"config file {path} is not a Python file (.py): {example}")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        with importable(file.parent):
            module_spec.loader.exec_module(module)
            if not hasattr(module, "get_config"):
                raise UserError(f"config file {path} has no get_config() function")
            config = module.get_config()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"config file {path} failed to load: {_describe(e, file)}") from e
    start = "start it from alexnet_jax.config.default_config(), as experiments/*.py do"
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"config file {path}: get_config() returned a {type(config).__name__}, not an "
            f"ml_collections.ConfigDict: {start}"
        )
    missing = [key for key in default_config() if key not in config]
    if missing:
        raise UserError(f"config file {path}: get_config() lacks {', '.join(missing)}: {start}")
    return config


@contextlib.contextmanager
def importable(folder: Path):
    """The experiment file's folder on `sys.path` while it loads, so that it can import a file
    beside it (`from base import get_config as base`), as a script run there could. Unless the
    folder was on the path already, it is taken off afterwards, with the modules imported from
    it, so that another folder's file of the same name is not taken for it later."""
    entry = str(folder.resolve())
    if entry in sys.path:
        yield
        return
    before = set(sys.modules)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
        added = set(sys.modules) - before
        beside = {name for name in added if "." not in name and _in(sys.modules[name], entry)}
        for name in added:
            if name.partition(".")[0] in beside:  # a module of the folder, or of its package
                del sys.modules[name]


def _in(module, folder: str) -> bool:
    """Whether `module` is a file in `folder`, or a package there (`folder/NAME/__init__.py`)."""
    origin = getattr(module, "__file__", None)
    if not origin:
        return False
    file = Path(origin).resolve()
    return str(file.parent) == folder or (
        file.name == "__init__.py" and str(file.parent.parent) == folder
    )


def _describe(error: Exception, file: Path) -> str:
    """One line for an error raised by an experiment file, naming its line there."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).resolve() == file.resolve()
    ]
    where = f"line {lines[-1]}: " if lines else ""
    unknown = re.match(r'.*Key "(\w+)" does not exist and cannot be added', str(error))
    if unknown:
        return f"{where}{unknown[1]!r} is not a config field: {_closest(unknown[1])}"
    return f"{where}{type(error).__name__}: {first_line(error)}"


# The commands' own options, which a user may write as config fields.
COMMAND_OPTIONS = ("workdir", "ckpt", "seeds", "out", "results", "target")


def _closest(key: str) -> str:
    if key in COMMAND_OPTIONS:
        return f"it is an option of the command: pass --{key}"
    fields = list(default_config().keys())
    close = difflib.get_close_matches(key, fields, n=1)
    return f"did you mean {close[0]}?" if close else f"fields: {', '.join(fields)}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Apply `FIELD=VALUE` strings, parsed by the field's type; unknown fields are an error."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise UserError(f"override {override!r} needs a value: write --config.FIELD=VALUE")
        if key not in config:
            raise UserError(f"unknown config field {key!r}: {_closest(key)}")
        kind = config.get_type(key)
        try:
            config[key] = _parse(text, kind)
        except (ValueError, TypeError) as e:
            raise UserError(
                f"{key}={text!r} is not a valid {kind.__name__} "
                f"(the config's value is {config[key]!r})"
            ) from e


def _parse(text: str, kind: type):
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if kind is str:
        return text
    if kind in (int, float):
        return kind(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def validate(config: ml_collections.ConfigDict) -> None:
    """Check every field up front; the first problem is raised as one UserError line."""
    unknown = set(config.keys()) - set(default_config().keys())
    if unknown:
        raise UserError(f"unknown config fields {sorted(unknown)}: remove them from the config")
    for key, default in default_config().items():
        if isinstance(default, float) and not math.isfinite(config[key]):
            raise UserError(f"{key}={config[key]} must be a finite number")
    if config.compute_dtype == "float16":
        raise UserError(
            "compute_dtype='float16' is not offered: its small gradients underflow without loss "
            "scaling, which this trainer does not do; use bfloat16 (float32's range) or float32"
        )
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise UserError(f"{key}={config[key]!r} is not one of {', '.join(choices)}")
    for key, low in {
        "num_epochs": 1,
        "batch_size": 1,
        "eval_batch_size": 1,
        "keep_checkpoints": 1,
        "checkpoint_every": 1,
        "eval_every": 1,
        "log_every": 1,
        "steps_per_dispatch": 1,
        "train_examples": 0,
        "validation_examples": 0,
        "crop_padding": 0,
        "cutout": 0,
        "learning_rate": 0.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        "dropout_rate": 0.0,
        "ema_decay": 0.0,
        "affine_rotation": 0.0,
        "affine_scale": 0.0,
        "affine_translation": 0.0,
        "affine_shear": 0.0,
        "mixup_alpha": 0.0,
        "mixup_probability": 0.0,
        "cutmix_alpha": 0.0,
        "cutmix_probability": 0.0,
        "eval_shift": 0,
    }.items():
        if config[key] < low:
            raise UserError(f"{key}={config[key]} must be at least {low}")
    # jax.random.PRNGKey keeps a seed's low 32 bits (without x64): 2**32 would give seed 0's
    # run and -1 seed 2**32 - 1's, so only the seeds that name distinct runs are taken.
    if not 0 <= config.seed < 2**32:
        raise UserError(
            f"seed={config.seed} must be from 0 to 2**32 - 1 ({2**32 - 1}): the random keys keep "
            "32 bits, so any other seed would repeat the run of one of these"
        )
    for key in ("label_smoothing", "dropout_rate", "momentum", "ema_decay"):
        if config[key] >= 1:
            raise UserError(f"{key}={config[key]} must be below 1")
    for key, high in {
        "mixup_probability": 1.0,
        "cutmix_probability": 1.0,
        "affine_rotation": 180.0,
        "affine_scale": 0.99,  # a scale of 0 would shrink the image to a point
        "affine_translation": 1.0,
        "affine_shear": 60.0,
    }.items():
        if config[key] > high:
            raise UserError(f"{key}={config[key]} must be at most {high}")
    if config.mixup_alpha and config.cutmix_alpha:
        total = config.mixup_probability + config.cutmix_probability
        if total > 1:
            raise UserError(
                f"mixup_probability + cutmix_probability = {total:g} with both on: an example "
                "gets one or the other, so they must add up to at most 1 (e.g. 0.5 each)"
            )
    source_size = min(spec(config.dataset).image_shape[:2])
    if config.eval_shift >= source_size // 2:
        raise UserError(
            f"eval_shift={config.eval_shift} would shift the {config.dataset} image out of view: "
            f"use less than {source_size // 2} (or 0 for none)"
        )
    if config.cutout >= source_size:
        raise UserError(
            f"cutout={config.cutout} would hide the whole {config.dataset} image: "
            f"use less than {source_size} (or 0 for none)"
        )
    if config.image_size < MIN_IMAGE_SIZE:
        raise UserError(
            f"image_size={config.image_size} is too small: AlexNet needs at least {MIN_IMAGE_SIZE}"
        )


@dataclass(frozen=True)
class Derived:
    """What a config implies beyond its fields, computed once by `derive` and passed on."""

    dataset: DatasetSpec
    dtype: jnp.dtype  # of activations; parameters stay float32

    @property
    def mean(self) -> tuple[float, ...]:
        return self.dataset.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.dataset.std

    @property
    def num_classes(self) -> int:
        return len(self.dataset.class_names)

    @property
    def channels(self) -> int:
        return self.dataset.image_shape[-1]


def derive(config: ml_collections.ConfigDict) -> Derived:
    """The dataset's spec and the compute dtype: `auto` is bfloat16 on accelerators, float32 on
    the CPU."""
    if config.compute_dtype == "auto":
        dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    else:
        dtype = config.compute_dtype
    return Derived(spec(config.dataset), jnp.dtype(dtype))
