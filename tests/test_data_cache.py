"""The decoded-split cache (alexnet_jax.data_cache) on the real MNIST test split."""

import numpy as np
import pytest

from alexnet_jax import data, data_cache
from alexnet_jax.data_cache import VARIABLE


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "decoded"
    monkeypatch.setenv(VARIABLE, str(folder))
    return folder


@pytest.fixture
def decodes(monkeypatch):
    """The ranges decoded from the record files from now on, as (split, start, stop)."""
    decoded, decode = [], data._decode_split

    def recording(builder, split, data_dir, start, stop):
        decoded.append((split, start, stop))
        return decode(builder, split, data_dir, start, stop)

    monkeypatch.setattr(data, "_decode_split", recording)
    return decoded


def read_test_split(mnist_copy):
    return data.load_test_split("mnist", str(mnist_copy), download=False)[0]


def test_a_split_is_decoded_once_and_then_read_with_the_same_bytes(mnist_copy, cache, decodes):
    first = read_test_split(mnist_copy)
    (kept,) = cache.glob("*.npz")
    assert kept.name.startswith("mnist-3.0.1-test-0-10000-")
    second = read_test_split(mnist_copy)
    assert decodes == [("test", 0, 10000)]  # the second read decoded nothing
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.images.dtype == np.uint8 and second.labels.dtype == np.int32
    assert not list(cache.glob(".writing-*"))  # no temporary file left behind


def test_each_range_of_a_split_is_kept_apart(mnist_copy, cache, decodes):
    builder = data._prepared_builder("mnist", str(mnist_copy), download=False)
    head = data._read_split(builder, "test", str(mnist_copy), 0, 100)
    tail = data._read_split(builder, "test", str(mnist_copy), 100, 300)
    whole = data._read_split(builder, "test", str(mnist_copy))
    again = data._read_split(builder, "test", str(mnist_copy), 100, 300)
    assert decodes == [("test", 0, 100), ("test", 100, 300), ("test", 0, 10000)]
    assert len(list(cache.glob("*.npz"))) == 3
    np.testing.assert_array_equal(head.images, whole.images[:100])
    np.testing.assert_array_equal(tail.labels, whole.labels[100:300])
    np.testing.assert_array_equal(again.images, tail.images)


def test_record_files_with_other_bytes_are_decoded_afresh(mnist_copy, cache, decodes):
    read_test_split(mnist_copy)
    record = next((mnist_copy / "mnist" / "3.0.1").glob("mnist-test.array_record*"))
    blob = bytearray(record.read_bytes())
    blob[len(blob) // 2] ^= 0x40  # one bit, the file's size and name unchanged
    record.write_bytes(bytes(blob))
    try:
        read_test_split(mnist_copy)
    except data.UserError:
        pass  # refused, as it is without a cache: either way not read from the cache
    assert decodes == [("test", 0, 10000)] * 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_cache_file_is_decoded_again_and_replaced(mnist_copy, cache, decodes, damage):
    first = read_test_split(mnist_copy)
    (kept,) = cache.glob("*.npz")
    blob = bytearray(kept.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":  # inside the images' bytes: only the checksum can tell
        blob[len(blob) // 2] ^= 0x01
    else:
        blob = bytearray(b"not an npz file")
    kept.write_bytes(bytes(blob))
    second = read_test_split(mnist_copy)
    np.testing.assert_array_equal(second.images, first.images)
    assert decodes == [("test", 0, 10000)] * 2
    third = read_test_split(mnist_copy)  # the replaced file is good again
    np.testing.assert_array_equal(third.images, first.images)
    assert len(decodes) == 2


def test_an_empty_variable_turns_the_cache_off(mnist_copy, tmp_path, monkeypatch, decodes):
    monkeypatch.setenv(VARIABLE, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache.folder() is None
    read_test_split(mnist_copy)
    read_test_split(mnist_copy)
    assert len(decodes) == 2
    assert not (tmp_path / "xdg").exists()


def test_the_default_folder_is_under_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_cache.folder() == tmp_path / "alexnet_jax" / "data"


def test_a_folder_that_cannot_be_written_reads_as_without_a_cache(
    mnist_copy, tmp_path, monkeypatch, decodes
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(VARIABLE, str(blocker / "decoded"))
    first = read_test_split(mnist_copy)
    second = read_test_split(mnist_copy)
    np.testing.assert_array_equal(first.images, second.images)
    assert len(decodes) == 2
    assert blocker.read_text() == "not a folder"
