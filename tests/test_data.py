import dataclasses
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet_jax import data, prepare
from alexnet_jax.data import load_dataset, load_training_data, training_plan
from alexnet_jax.errors import UserError

from conftest import record_split_reads, tiny_config

# sha256 of the decoded splits (images then uint8 labels, CIFAR-10 in `id` order), from
# ../shared/tfds/README.md.
SPLIT_SHA256 = {
    ("mnist", "train"): "6d82d9f18df5f5fee79d159b3563eb6adcbd1abce0c4bdf9a7010078c6e75062",
    ("mnist", "test"): "bf70cada31279c1e952492c5ac496fe89dae2242110d9e77827607cd9b2e825f",
    ("cifar10", "train"): "f912919bdea371136f1aa4feed6beeca728015a5f08b1899a29c932a7e30be2b",
    ("cifar10", "test"): "8193b3fbce55bec361cd1b8fd4880cb1649832dc4d6de6da1e7a21847a4843aa",
}


def split_sha256(split):
    digest = hashlib.sha256(split.images.tobytes())
    digest.update(split.labels.astype(np.uint8).tobytes())
    return digest.hexdigest()


def test_mnist_is_read_exactly(mnist):
    assert mnist.train.images.shape == (60000, 28, 28, 1)
    assert mnist.train.images.dtype == np.uint8
    assert split_sha256(mnist.train) == SPLIT_SHA256["mnist", "train"]
    assert split_sha256(mnist.test) == SPLIT_SHA256["mnist", "test"]
    assert mnist.class_names == tuple(str(i) for i in range(10))


def test_cifar10_is_read_exactly(shared_tfds):
    dataset = load_dataset("cifar10", str(shared_tfds), download=False)
    assert dataset.train.images.shape == (50000, 32, 32, 3)
    assert split_sha256(dataset.train) == SPLIT_SHA256["cifar10", "train"]
    assert split_sha256(dataset.test) == SPLIT_SHA256["cifar10", "test"]
    assert list(dataset.test.labels[:10]) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert dataset.class_names[0] == "airplane"


def test_the_test_split_alone_is_read_exactly_without_the_training_split(shared_tfds, monkeypatch):
    # What evaluation reads (eval, report): the test split and the class names, nothing more.
    read = record_split_reads(monkeypatch)
    test, class_names = data.load_test_split("mnist", str(shared_tfds), download=False)
    assert read == ["test"]
    assert split_sha256(test) == SPLIT_SHA256["mnist", "test"]
    assert class_names == tuple(str(i) for i in range(10))


def test_tfds_data_dir_variable_is_the_default(shared_tfds, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(shared_tfds))
    assert data.default_data_dir() == str(shared_tfds)
    assert len(load_dataset("mnist", download=False).test) == 10000


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'svhn': choose one of cifar10, mnist"):
        load_dataset("svhn")


def test_missing_data_offline_names_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"mnist:3.0.1 is not prepared in .*--data-dir"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_missing_data_without_tensorflow_says_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "tensorflow_installed", lambda: False)
    with pytest.raises(UserError, match=r"needs TensorFlow .*`python -m alexnet_jax.prepare mnist"):
        load_dataset("mnist", str(tmp_path), download=True)


def test_truncated_record_file(mnist_copy):
    record = next((mnist_copy / "mnist" / "3.0.1").glob("mnist-test.array_record*"))
    with open(record, "r+b") as f:
        f.truncate(record.stat().st_size // 2)
    # Found before reading: the file's footer is gone.
    with pytest.raises(UserError, match=r"is incomplete \(mnist-test.array_record.*delete "):
        load_dataset("mnist", str(mnist_copy), download=False)


def test_corrupted_record_bytes(mnist_copy):
    record = next((mnist_copy / "mnist" / "3.0.1").glob("mnist-train.array_record*"))
    blob = bytearray(record.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 4096] = bytes(4096)
    record.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupted or truncated"):
        load_dataset("mnist", str(mnist_copy), download=False)


def test_damaged_dataset_info(mnist_copy):
    (mnist_copy / "mnist" / "3.0.1" / "dataset_info.json").write_text("{not json")
    with pytest.raises(UserError, match="mnist"):
        load_dataset("mnist", str(mnist_copy), download=False)


def test_synthetic_dataset_is_deterministic_and_shaped_like_the_real_one():
    a = data.synthetic_dataset("cifar10", 16, 8, seed=1)
    b = data.synthetic_dataset("cifar10", 16, 8, seed=1)
    assert a.train.images.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(a.train.images, b.train.images)


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_class_names_in_the_spec_are_those_of_tfds(shared_tfds, name):
    # predict and export name classes from the spec, without reading the dataset.
    builder = tfds.builder(f"{name}:{data.spec(name).version}", data_dir=str(shared_tfds))
    assert data.spec(name).class_names == tuple(builder.info.features["label"].names)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 400), st.integers(0, 400), st.integers(1, 4), st.data())
def test_training_and_validation_ranges_never_overlap(size, train, held_out, processes, draw):
    config = tiny_config(train_examples=train, validation_examples=held_out)
    if held_out >= size:
        with pytest.raises(UserError, match=f"validation_examples={held_out} leaves no training"):
            training_plan(size, config, processes)
        return
    if train > size - held_out:
        with pytest.raises(UserError, match=f"train_examples={train} is more than the "):
            training_plan(size, config, processes)
        return
    shards, validation = training_plan(size, config, processes)
    # The validation images are the last `validation_examples`; training takes the first
    # `train_examples` (all when 0) of the rest, in contiguous shards of nearly equal size.
    stop = train or size - held_out
    assert validation == ((size - held_out, size) if held_out else None)
    assert [index for a, b in shards for index in range(a, b)] == list(range(stop))
    sizes = [b - a for a, b in shards]
    assert len(sizes) == processes and max(sizes) - min(sizes) <= 1
    process = draw.draw(st.integers(0, processes - 1))
    dataset = data.synthetic_dataset("mnist", size, 1)
    images = dataset.train.images.copy()  # each numbered by its first two pixels
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.divmod(np.arange(size), 256)
    numbered = dataclasses.replace(dataset, train=data.Split(images, dataset.train.labels))

    def positions(split):
        return list(split.images[:, 0, 0, 0].astype(int) * 256 + split.images[:, 0, 1, 0])

    part = data.training_data_from(numbered, config, process, processes)
    assert positions(part.train) == list(range(*shards[process]))
    if held_out:
        assert part.eval_name == "validation"
        assert positions(part.evaluation) == list(range(size - held_out, size))
        assert not set(positions(part.train)) & set(positions(part.evaluation))
    else:
        assert part.eval_name == "test" and part.evaluation is numbered.test


def replaced(dataset, split="train", **arrays):
    """`dataset` with its `split`'s images or labels replaced."""
    old = getattr(dataset, split)
    new = data.Split(arrays.get("images", old.images), arrays.get("labels", old.labels))
    return dataclasses.replace(dataset, **{split: new})


GIVES = (
    r"config.dataset='mnist' gives the model {} \(config.dataset sets the model's channels, "
    r"classes and normalisation: 'cifar10' 3 channels and 10 classes, 'mnist' 1 channel and 10 "
    r"classes\)"
)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: replaced(d, images=np.repeat(d.train.images, 3, axis=-1)),
            r"the train split of the Dataset 'digits' has 3-channel images, and "
            + GIVES.format("1-channel input")
            + r": set config.dataset='cifar10', or convert the images to 1 channel\(s\)$",
        ),
        (
            lambda d: replaced(d, images=d.train.images.astype(np.float32) / 255),
            r"the train split of the Dataset 'digits' has float32 images, not uint8: pass "
            r"pixels 0..255 as uint8",
        ),
        (
            lambda d: replaced(d, images=d.train.images[..., 0]),
            r"has images of shape \(48, 28, 28\): pass them as \[N, H, W, C\]; add the "
            r"channel axis to grey images, images\[..., None\]",
        ),
        (
            lambda d: replaced(d, images=list(d.train.images)),
            "has images of type list: pass a NumPy uint8 array",
        ),
        (
            lambda d: replaced(d, images=d.train.images[:, :0]),
            "the train split of the Dataset 'digits' has 0x28 images: pass images with pixels",
        ),
        (
            lambda d: replaced(d, labels=d.train.labels + 10),
            r"the train split of the Dataset 'digits' has labels 10..19, and "
            + GIVES.format("10 classes")
            + r": pass labels 0..9$",
        ),
        (
            lambda d: replaced(d, "test", labels=d.test.labels - 1),
            r"the test split .* labels -1\.\.",
        ),
        (
            lambda d: replaced(d, labels=d.train.labels.astype(np.float32)),
            "has float32 labels: pass integer class indices 0..9",
        ),
        (
            lambda d: replaced(d, labels=d.train.labels[:, None]),
            r"has labels of shape \(48, 1\): pass one class index per image",
        ),
        (
            lambda d: replaced(d, labels=d.train.labels[:40]),
            "the train split of the Dataset 'digits' has 48 images and 40 labels: pass one label "
            "per image",
        ),
        (
            lambda d: replaced(d, "test", images=d.test.images[:0], labels=d.test.labels[:0]),
            "the test split of the Dataset 'digits' holds no images: pass at least one",
        ),
        (
            lambda d: dataclasses.replace(d, test=None),
            "the test split of the Dataset 'digits' is None, and it is what the run evaluates",
        ),
        (
            lambda d: dataclasses.replace(d, class_names=("zero", "one")),
            r"the Dataset 'digits' has 2 class_names, and "
            + GIVES.format("10 classes")
            + ": pass 10 names, one per label in order$",
        ),
        (lambda d: dataclasses.replace(d, name=""), "the Dataset's name is '': give it a name"),
        (
            lambda d: replaced(d, "test", images=d.test.images[:, :5, :5]),
            r"cutout=6 would hide the whole 5x5 image of the test split of the Dataset 'digits': "
            r"use less than 5",
        ),
    ],
)
def test_a_dataset_that_does_not_fit_the_config_is_refused_in_one_line(change, message):
    dataset = dataclasses.replace(data.synthetic_dataset("mnist", 48, 16), name="digits")
    with pytest.raises(UserError, match=message) as refused:
        data.check_dataset(change(dataset), tiny_config(cutout=6))
    assert "\n" not in str(refused.value)


def test_what_the_pipeline_takes_is_accepted():
    # Any height and width (resized to image_size; tests/test_train.py trains on such images),
    # any integer labels in range, and no test split when a validation split is held out.
    dataset = data.synthetic_dataset("mnist", 48, 16)
    config = tiny_config()
    for changed in (
        replaced(dataset, images=dataset.train.images[:, :3, :7]),
        replaced(dataset, labels=dataset.train.labels.astype(np.uint8)),
        replaced(dataset, labels=dataset.train.labels.astype(np.int64)),
    ):
        data.check_dataset(changed, config)
    data.check_dataset(dataclasses.replace(dataset, test=None), tiny_config(validation_examples=8))


def test_more_train_examples_than_a_dataset_has_names_the_dataset():
    dataset = dataclasses.replace(data.synthetic_dataset("mnist", 48, 16), name="digits")
    with pytest.raises(
        UserError,
        match="train_examples=100 is more than the 48 training images of the Dataset "
        "'digits': pass at most 48",
    ):
        data.training_data_from(dataset, tiny_config(train_examples=100))


def test_validation_images_are_read_from_the_end_of_the_training_split(
    mnist, shared_tfds, monkeypatch
):
    config = tiny_config(
        data_dir=str(shared_tfds), download=False, train_examples=1000, validation_examples=100
    )
    read = record_split_reads(monkeypatch)
    for process in (0, 1):
        part = load_training_data(config, process, 2)
        start = 500 * process
        np.testing.assert_array_equal(part.train.images, mnist.train.images[start : start + 500])
        np.testing.assert_array_equal(part.train.labels, mnist.train.labels[start : start + 500])
        assert part.shard_sizes == (500, 500)
        assert part.eval_name == "validation"
        np.testing.assert_array_equal(part.evaluation.images, mnist.train.images[-100:])
        np.testing.assert_array_equal(part.evaluation.labels, mnist.train.labels[-100:])
    # Each process reads its own shard and the held-out images, and not the test split.
    held_out = "train[59900:60000]"
    assert read == ["train[0:500]", held_out, "train[500:1000]", held_out]
