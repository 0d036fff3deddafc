"""MNIST and CIFAR-10 from tensorflow-datasets, loaded once as uint8 arrays."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from alexnet_jax import data_cache, prepare
from alexnet_jax.distributed import is_primary
from alexnet_jax.errors import UserError, first_line


@dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know of a dataset before reading it."""

    version: str  # pinned so that another TFDS release never silently picks another version
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per-channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    # As TFDS names the labels (tests check it), so that a trained model can name its classes
    # without reading the dataset.
    class_names: tuple[str, ...]


DATASETS = {
    "mnist": DatasetSpec(
        "3.0.1", (28, 28, 1), (0.1307,), (0.3081,), tuple(str(i) for i in range(10))
    ),
    "cifar10": DatasetSpec(
        "3.0.2",
        (32, 32, 3),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


def spec(name: str) -> DatasetSpec:
    """The spec of a supported dataset, or a UserError naming the choices."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclass(frozen=True)
class Split:
    """Images and their labels: `images` uint8 [N, H, W, C] (pixels 0..255; the model scales
    and normalises them itself), `labels` integers [N], one per image, in 0 .. classes - 1."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A dataset in memory: what `train.train_and_evaluate(config, workdir, dataset)` trains on
    in place of TFDS (`check_dataset` says what it must hold).

    `name` identifies it: the run records it, and a run resumes only with the data it was
    trained on. `train` and `test` hold at least one image each (`test` may be None when
    `config.validation_examples` holds images out of `train` instead); their images have the
    channels of `config.dataset`, which also sets the model's classes and normalisation.
    `class_names` names each label, one name per class.
    """

    name: str
    train: Split
    test: Split | None
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_dataset(dataset: Dataset, config) -> None:
    """Refuse, in one line, a `dataset` that `config` cannot train on, or would train on wrongly.

    `config.dataset` supplies the model's input channels, its classes and the normalisation
    (mean and std), whatever the Dataset: its images must have those channels, and its labels
    must be classes of the model. Any height and width is taken (resized to `image_size`, the
    aspect ratio not kept), as long as `cutout` and `eval_shift` leave something to see.
    """
    if not isinstance(dataset.name, str) or not dataset.name:
        raise UserError(
            f"the Dataset's name is {dataset.name!r}: give it a name (a non-empty string), which "
            "the run records so that it resumes only with the same data"
        )
    splits = {"train": dataset.train}
    if dataset.test is not None or not config.validation_examples:  # evaluated, or given
        splits["test"] = dataset.test
    for split_name, split in splits.items():
        _check_split(split, f"the {split_name} split of the Dataset {dataset.name!r}", config)
    names = tuple(dataset.class_names or ())
    classes = len(spec(config.dataset).class_names)
    if len(names) != classes:
        raise UserError(
            f"the Dataset {dataset.name!r} has {len(names)} class_names, and "
            f"{_gives(config, f'{classes} classes')}: pass {classes} names, one per label in order"
        )


def _gives(config, what: str) -> str:
    """`config.dataset='mnist' gives the model <what>`, and what each choice gives."""

    def channels(s):
        return f"{s.image_shape[-1]} channel{'s' if s.image_shape[-1] > 1 else ''}"

    choices = ", ".join(
        f"{name!r} {channels(s)} and {len(s.class_names)} classes"
        for name, s in sorted(DATASETS.items())
    )
    return (
        f"config.dataset={config.dataset!r} gives the model {what} (config.dataset sets the "
        f"model's channels, classes and normalisation: {choices})"
    )


def _check_split(split, what: str, config) -> None:
    model = spec(config.dataset)
    channels, classes = model.image_shape[-1], len(model.class_names)
    if split is None:
        raise UserError(
            f"{what} is None, and it is what the run evaluates: pass Split(images, labels), or "
            "hold out training images with config.validation_examples to evaluate those"
        )
    if not isinstance(split, Split):
        raise UserError(
            f"{what} is {type(split).__name__}, not an alexnet_jax.data.Split: pass "
            "Split(images, labels)"
        )
    shape = getattr(split.images, "shape", None)
    dtype = getattr(split.images, "dtype", None)
    if shape is None or dtype is None:
        raise UserError(
            f"{what} has images of type {type(split.images).__name__}: pass a NumPy uint8 array "
            "[N, H, W, C]"
        )
    if dtype != np.uint8:
        raise UserError(
            f"{what} has {dtype} images, not uint8: pass pixels 0..255 as uint8 (the model "
            "scales and normalises them itself; for images in [0, 1], np.round(images * 255))"
        )
    if len(shape) != 4:
        grey = "; add the channel axis to grey images, images[..., None]" if len(shape) == 3 else ""
        raise UserError(
            f"{what} has images of shape {tuple(shape)}: pass them as [N, H, W, C]{grey}"
        )
    if shape[-1] != channels:
        fits = [name for name, s in sorted(DATASETS.items()) if s.image_shape[-1] == shape[-1]]
        change = f"set config.dataset={fits[0]!r}, or " if fits else ""
        gives = _gives(config, f"{channels}-channel input")
        raise UserError(
            f"{what} has {shape[-1]}-channel images, and {gives}: {change}convert the images to "
            f"{channels} channel(s)"
        )
    if shape[0] == 0:
        raise UserError(f"{what} holds no images: pass at least one")
    side = min(shape[1:3])
    if side == 0:
        raise UserError(f"{what} has {shape[1]}x{shape[2]} images: pass images with pixels")
    if config.cutout >= side:
        raise UserError(
            f"cutout={config.cutout} would hide the whole {shape[1]}x{shape[2]} image of {what}: "
            f"use less than {side} (or 0 for none)"
        )
    if config.eval_shift and config.eval_shift >= side // 2:
        raise UserError(
            f"eval_shift={config.eval_shift} would shift the {shape[1]}x{shape[2]} image of "
            f"{what} out of view: use less than {side // 2} (or 0 for none)"
        )
    labels = np.asarray(split.labels)
    if labels.ndim != 1:
        raise UserError(
            f"{what} has labels of shape {labels.shape}: pass one class index per image, [N]"
        )
    if len(labels) != shape[0]:
        raise UserError(
            f"{what} has {shape[0]} images and {len(labels)} labels: pass one label per image"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{what} has {labels.dtype} labels: pass integer class indices 0..{classes - 1}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise UserError(
            f"{what} has labels {low}..{high}, and {_gives(config, f'{classes} classes')}: pass "
            f"labels 0..{classes - 1}"
        )


# Where a run's data came from, as its checkpoints record it (`data_record`).
TFDS, IN_MEMORY = "tfds", "in-memory"


def data_record(config, dataset: Dataset | None = None) -> dict:
    """Where a run of `config` reads its data: TFDS by name and pinned version, or the in-memory
    `dataset` by its name, class names, split sizes and its training images' [H, W, C], the
    shape that `predict` and the exports give the model (`checkpoint.Trained.source_shape`; the
    test split's may differ, `check_dataset` takes any height and width). Checkpoints carry it
    (`checkpoint.Checkpoints.save`); one without it is of a TFDS run."""
    if dataset is None:
        return {"source": TFDS, "name": config.dataset, "version": spec(config.dataset).version}
    return {
        "source": IN_MEMORY,
        "name": dataset.name,
        "class_names": [str(name) for name in dataset.class_names],
        "train_images": len(dataset.train),
        "test_images": None if dataset.test is None else len(dataset.test),
        "image_shape": [int(n) for n in dataset.train.images.shape[1:]],
    }


def describe_data(record: dict) -> str:
    """`TFDS mnist:3.0.1`, or `the in-memory Dataset 'digits'`."""
    if record["source"] == IN_MEMORY:
        return f"the in-memory Dataset {record['name']!r}"
    version = f":{record['version']}" if record.get("version") else ""
    return f"TFDS {record['name']}{version}"


def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return tfds.core.constants.get_default_data_dir()


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Read the whole train and test splits of `name`, preparing them if absent.

    Reading needs no TensorFlow (ArrayRecord via `tfds.data_source`); preparing does (see
    `alexnet_jax.prepare`).
    """
    data_dir = _resolve(data_dir)
    builder = _prepared_builder(name, data_dir, download)
    train, test = (_read_split(builder, split, data_dir) for split in ("train", "test"))
    return Dataset(name, train, test, _class_names(builder))


def load_test_split(
    name: str, data_dir: str | None = None, download: bool = True
) -> tuple[Split, tuple[str, ...]]:
    """The test split of `name` and its class names, preparing the dataset if absent: what
    evaluating a trained model reads (the training split is 6x larger: 7.6 s of MNIST and 11.6 s
    of CIFAR-10 on a 2-core CPU)."""
    data_dir = _resolve(data_dir)
    builder = _prepared_builder(name, data_dir, download)
    return _read_split(builder, "test", data_dir), _class_names(builder)


def _class_names(builder) -> tuple[str, ...]:
    return tuple(builder.info.features["label"].names)


@dataclass(frozen=True)
class TrainingData:
    """What one process trains and evaluates on."""

    name: str
    train: Split  # this process's part of the training images
    evaluation: Split  # the whole evaluation split, on every process
    eval_name: str  # "test", or "validation" when held out of the training split
    class_names: tuple[str, ...]
    shard_sizes: tuple[int, ...]  # training images of each process

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def training_plan(num_train: int, config, process_count: int = 1, source: str = ""):
    """Index ranges of the training split: (each process's training shard, held-out range).

    The last `validation_examples` images are held out; of the rest, the first
    `train_examples` (all when 0; more than there are is refused) are split into contiguous,
    nearly equal shards. `source` names the data in refusals (default: `config.dataset`).
    """
    held_out = config.validation_examples
    if held_out >= num_train:
        raise UserError(
            f"validation_examples={held_out} leaves no training images out of {num_train}"
        )
    stop = num_train - held_out
    if config.train_examples > stop:  # refused, not capped: the run would not be what it says
        left = f" left after validation_examples={held_out}" if held_out else ""
        raise UserError(
            f"train_examples={config.train_examples} is more than the {stop} training images "
            f"of {source or config.dataset}{left}: pass at most {stop}, or 0 for all of them"
        )
    if config.train_examples:
        stop = config.train_examples
    shards = [
        (stop * p // process_count, stop * (p + 1) // process_count) for p in range(process_count)
    ]
    return shards, ((num_train - held_out, num_train) if held_out else None)


def load_training_data(config, process_index: int = 0, process_count: int = 1) -> TrainingData:
    """Read only this process's training shard, and the evaluation split, from TFDS."""
    data_dir = _resolve(config.data_dir)
    builder = _prepared_builder(config.dataset, data_dir, config.download, process_count)
    shards, held_out = training_plan(
        builder.info.splits["train"].num_examples, config, process_count
    )
    train = _read_split(builder, "train", data_dir, *shards[process_index])
    if held_out:
        evaluation, eval_name = _read_split(builder, "train", data_dir, *held_out), "validation"
    else:
        evaluation, eval_name = _read_split(builder, "test", data_dir), "test"
    class_names = tuple(builder.info.features["label"].names)
    sizes = tuple(b - a for a, b in shards)
    return TrainingData(config.dataset, train, evaluation, eval_name, class_names, sizes)


def training_data_from(
    dataset: Dataset, config, process_index: int = 0, process_count: int = 1
) -> TrainingData:
    """The same carving as `load_training_data`, of a dataset already in memory (refused in
    one line, by `check_dataset`, when it does not fit `config`)."""
    check_dataset(dataset, config)
    name = f"the Dataset {dataset.name!r}"
    shards, held_out = training_plan(len(dataset.train), config, process_count, name)

    def part(start, stop):
        return Split(dataset.train.images[start:stop], dataset.train.labels[start:stop])

    evaluation = part(*held_out) if held_out else dataset.test
    return TrainingData(
        dataset.name,
        part(*shards[process_index]),
        evaluation,
        "validation" if held_out else "test",
        dataset.class_names,
        tuple(b - a for a, b in shards),
    )


def _resolve(data_dir: str | None) -> str:
    return str(Path(data_dir or default_data_dir()).expanduser())


def _prepared_builder(name: str, data_dir: str, download: bool, processes: int = 1):
    return prepare.ensure_prepared(
        name, spec(name).version, data_dir, download=download, processes=processes
    )


def _read_split(builder, split: str, data_dir: str, start: int = 0, stop: int | None = None):
    """Examples [start, stop) of `split` in TFDS's file order, put back in their original order
    within the slice when the dataset has ids (TFDS shuffles CIFAR-10 when preparing); decoded
    once per machine and dataset's bytes, then read from `data_cache`."""
    stop = builder.info.splits[split].num_examples if stop is None else stop
    records = Path(str(builder.data_path)).glob(f"{builder.name}-{split}.array_record-*")
    name = f"{builder.name}-{builder.version}"
    kept_at = data_cache.entry(list(records), name, split, start, stop)
    kept = data_cache.load(kept_at, stop - start)
    if kept is not None:
        return Split(*kept)
    decoded = _decode_split(builder, split, data_dir, start, stop)
    data_cache.save(kept_at, decoded.images, decoded.labels)
    return decoded


def _decode_split(builder, split: str, data_dir: str, start: int, stop: int) -> Split:
    """`_read_split` from the record files, decoding each PNG."""
    versioned = f"{builder.name}:{builder.version}"
    files = f"{builder.data_path}/{builder.name}-{split}.array_record-*"
    total = builder.info.splits[split].num_examples
    selection = split if (start, stop) == (0, total) else f"{split}[{start}:{stop}]"
    try:
        source = tfds.data_source(versioned, split=selection, data_dir=data_dir, download=False)
        images = np.empty((len(source), *spec(builder.name).image_shape), np.uint8)
        labels = np.empty((len(source),), np.int32)
        ids = []
        chunk = 5000
        for first in tqdm(
            range(0, len(source), chunk),
            desc=f"reading {builder.name} {selection}",
            leave=False,
            disable=not is_primary(),
        ):
            items = source.__getitems__(list(range(first, min(first + chunk, len(source)))))
            for i, item in enumerate(items, first):
                images[i] = item["image"]
                labels[i] = item["label"]
                if "id" in item:
                    ids.append(item["id"])
    except Exception as e:  # ArrayRecord/Riegeli and the PNG decoder raise various types
        raise UserError(
            f"the record file {files} is corrupted or truncated ({first_line(e)}): "
            f"delete {builder.data_path} and prepare it again, or pass --data-dir to a good copy"
        ) from e
    if ids:
        order = np.argsort(np.asarray(ids))
        images, labels = images[order], labels[order]
    if len(labels) != stop - start:
        raise UserError(
            f"{files} holds {len(labels)} {selection} examples where {stop - start} were "
            f"expected: delete {builder.data_path} and prepare it again"
        )
    return Split(images, labels)


def synthetic_dataset(
    name: str = "mnist", train_size: int = 256, test_size: int = 128, seed: int = 0
) -> Dataset:
    """A learnable stand-in with a real dataset's shapes: the class sets a bright stripe's row.

    For tests and speed measurements (`alexnet_jax.bench`, benchmarks/); never used in place of
    real data silently.
    """
    shape = spec(name).image_shape
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
        rows = (labels * shape[0]) // 10
        for i, row in enumerate(rows):
            images[i, row : row + 2] = 255
        return Split(images, labels)

    return Dataset(name, make(train_size), make(test_size), tuple(f"class {i}" for i in range(10)))


def main(argv=None):
    """`python -m alexnet_jax.data mnist cifar10 [--data-dir DIR]`: prepare and check datasets."""
    import argparse

    from alexnet_jax.errors import cli

    parser = argparse.ArgumentParser(description="Download, prepare and check datasets.")
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="mnist and/or cifar10")
    parser.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or TFDS's own)")
    args = parser.parse_args(argv)

    @cli
    def run():
        for name in args.datasets:
            dataset = load_dataset(name, args.data_dir)
            print(
                f"{name}:{spec(name).version} in {args.data_dir or default_data_dir()}: "
                f"{len(dataset.train)} train, {len(dataset.test)} test images"
            )

    run()


if __name__ == "__main__":
    main()
