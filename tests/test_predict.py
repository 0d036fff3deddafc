import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import checkpoint, evaluation, predict
from alexnet_jax.data import Split
from alexnet_jax.parallel import make_mesh

from conftest import ODD_SHAPE

MNIST_SHAPE = (28, 28, 1)
CIFAR10_SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def trained(tiny_run, cpu_devices):
    return checkpoint.load_trained(tiny_run, mesh=make_mesh(cpu_devices[:1]))


def save(array, path, mode=None, **options):
    Image.fromarray(array, mode).save(path, **options)
    return str(path)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 37]], np.uint16).repeat(28, 0)
    values = np.tile(values, (1, 7))  # 28 x 28
    image, conversions = predict.load_image(save(values, tmp_path / "g.png"), MNIST_SHAPE)
    np.testing.assert_array_equal(image[0, :4, 0], [0, 100, 255, 37])
    assert conversions == [
        "converted I;16 to grayscale",
        "16-bit values scaled to 8 bits (divided by 257)",
    ]


def test_16_bit_values_are_scaled_the_same_whatever_their_range(tmp_path):
    """Two files that differ by one pixel give the same digit: no guess from the maximum."""
    dim = np.zeros((28, 28), np.uint16)
    dim[10:18, 10:18] = 257 * 200
    bright = dim.copy()
    bright[0, 0] = 65535
    low = np.where(dim > 0, 200, 0).astype(np.uint16)  # all values <= 255: still 16-bit
    images = [
        predict.load_image(save(a, tmp_path / f"{i}.png"), MNIST_SHAPE)
        for i, a in enumerate((dim, bright, low))
    ]
    np.testing.assert_array_equal(images[0][0][10:18, 10:18], 200)
    np.testing.assert_array_equal(images[1][0][10:18, 10:18], 200)
    assert images[1][0][0, 0] == 255
    np.testing.assert_array_equal(images[2][0][10:18, 10:18], 1)  # 200 / 257
    for _, conversions in images:
        assert "16-bit values scaled to 8 bits (divided by 257)" in conversions


def test_a_16_bit_file_that_pillow_opens_as_mode_i_is_scaled(tmp_path):
    # A PGM with maxval 65535 opens as mode "I", as 16-bit PNGs do in older Pillow.
    path = tmp_path / "g.pgm"
    path.write_bytes(b"P5 28 28 65535\n" + np.full((28, 28), 257 * 90, ">u2").tobytes())
    with Image.open(path) as opened:
        assert opened.mode == "I"
    image, conversions = predict.load_image(path, MNIST_SHAPE)
    assert (image == 90).all()
    assert conversions == [
        "converted I to grayscale",
        "16-bit values scaled to 8 bits (divided by 257)",
    ]


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((28, 28), 70000, np.int32), "32-bit or signed integer pixels (mode I)"),
        (np.full((28, 28), 0.5, np.float32), "floating-point pixels (mode F)"),
    ],
)
def test_32_bit_and_float_images_are_refused(tmp_path, array, message):
    path = save(array, tmp_path / "wide.tif")
    with pytest.raises(predict.ImageError, match=re.escape(message)):
        predict.load_image(path, MNIST_SHAPE)


def test_transparency_is_flattened_onto_black(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[:, :14] = (255, 255, 255, 255)  # opaque white left half
    rgba[:, 14:] = (255, 255, 255, 0)  # transparent white right half
    image, conversions = predict.load_image(save(rgba, tmp_path / "a.png"), MNIST_SHAPE)
    assert (image[:, :14] == 255).all() and (image[:, 14:] == 0).all()
    assert conversions == ["converted RGBA to grayscale", "transparency flattened onto black"]


def test_colour_to_grayscale_and_back(tmp_path):
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255
    image, conversions = predict.load_image(save(red, tmp_path / "r.png"), MNIST_SHAPE)
    assert (image == 76).all()  # ITU-R 601-2 luma of pure red, as Pillow computes it
    assert conversions == ["converted RGB to grayscale"]

    gray = np.full((32, 32), 200, np.uint8)
    image, conversions = predict.load_image(save(gray, tmp_path / "g.png"), CIFAR10_SHAPE)
    assert image.shape == (32, 32, 3) and (image == 200).all()
    assert conversions == ["converted L to RGB"]


def test_an_image_of_the_right_size_and_mode_is_taken_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, CIFAR10_SHAPE, np.uint8)
    image, conversions = predict.load_image(save(pixels, tmp_path / "c.png"), CIFAR10_SHAPE)
    np.testing.assert_array_equal(image, pixels)
    assert conversions == []


def test_a_huge_photo_is_resized(tmp_path):
    photo = np.full((3000, 4000, 3), (10, 200, 30), np.uint8)
    path = save(photo, tmp_path / "huge.jpg", quality=95)
    image, conversions = predict.load_image(path, CIFAR10_SHAPE)
    assert image.shape == CIFAR10_SHAPE
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), (10, 200, 30), atol=3)
    assert conversions == ["resized 4000x3000 to 32x32 (aspect ratio not kept)"]


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(np.zeros((300, 300), np.uint8), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 2x this refuses 300x300
    with pytest.raises(predict.ImageError, match="refused as too large"):
        predict.load_image(path, MNIST_SHAPE)


def test_a_very_large_image_is_resized_with_a_note_and_no_warning(tmp_path, monkeypatch):
    path = save(np.zeros((300, 300), np.uint8), tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # Pillow warns over this, refuses 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        image, conversions = predict.load_image(path, MNIST_SHAPE)
    assert image.shape == MNIST_SHAPE and conversions == ["resized 300x300 to 28x28"]


def test_inputs_expand_from_directories_and_patterns(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "c.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    entries = predict.expand_inputs(
        [str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "x*.png"), str(empty), "gone.png"]
    )
    names = [(e.file.replace(str(tmp_path), "T"), e.error) for e in entries]
    assert names == [
        ("T/a.JPG", None),
        ("T/b.png", None),
        ("T/c.gif", None),
        ("T/b.png", None),
        ("T/x*.png", "no file matches this pattern"),
        ("T/empty", "no image files in this directory"),
        ("gone.png", None),  # fails when it is read: "no such file"
    ]


def test_a_broken_symlink_in_a_directory_is_a_failed_input(tiny_run, tmp_path, capsys):
    save(np.zeros((28, 28), np.uint8), tmp_path / "zero.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")  # a link to itself
    for inputs in ([str(tmp_path)], [str(tmp_path / "*.png")]):
        assert [Path(e.file).name for e in predict.expand_inputs(inputs)] == [
            "gone.png",
            "loop.png",
            "zero.png",
        ]
    assert predict.main(["--ckpt", str(tiny_run), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path}/gone.png: error: broken symbolic link (to {tmp_path}/deleted.png)" in (
        captured.out
    )
    assert f"{tmp_path}/loop.png: error: symbolic links in a loop" in captured.out
    assert "2 of 3 inputs failed" in captured.err


def test_cli_reports_conversions_and_failures_per_file(tiny_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    save(rng.integers(0, 256, (28, 28), np.uint8), images / "exact.png")
    save(rng.integers(0, 256, (50, 80, 4), np.uint8), images / "rgba.png")
    save(rng.integers(0, 65535, (40, 40), np.uint16), images / "gray16.png")
    palette = Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).quantize(8)
    palette.save(images / "palette.gif", transparency=0)
    save(rng.integers(0, 256, (2400, 3200, 3), np.uint8), images / "photo.jpg")
    (images / "notes.png").write_text("not an image")
    truncated = (images / "photo.jpg").read_bytes()[:2000]
    (images / "truncated.jpg").write_bytes(truncated)
    out = tmp_path / "out" / "predictions.json"

    status = predict.main(
        ["--ckpt", str(tiny_run), str(images), str(tmp_path / "missing.png"), "--json", str(out)]
    )
    assert status == 1
    captured = capsys.readouterr()
    # The tiny run was trained on a synthetic Dataset: its own class names name the classes.
    assert captured.err == (
        f"note: {tiny_run}/checkpoints/1 was trained on the in-memory Dataset 'mnist': its "
        "predictions name its classes (class 0, class 1, class 2 and 7 more)\n"
        "3 of 8 inputs failed\n"
    )
    entries = json.loads(out.read_text())["files"]
    files = {entry["file"].rsplit("/", 1)[-1]: entry for entry in entries}
    assert [name for name, e in files.items() if e["ok"]] == [
        "exact.png",
        "gray16.png",
        "palette.gif",
        "photo.jpg",
        "rgba.png",
    ]
    assert files["exact.png"]["conversions"] == []
    assert files["gray16.png"]["conversions"] == [
        "converted I;16 to grayscale",
        "16-bit values scaled to 8 bits (divided by 257)",
        "resized 40x40 to 28x28",
    ]
    assert files["palette.gif"]["conversions"] == [
        "converted P to grayscale",
        "transparency flattened onto black",
        "resized 20x20 to 28x28",
    ]
    assert files["photo.jpg"]["conversions"] == [
        "converted RGB to grayscale",
        "resized 3200x2400 to 28x28 (aspect ratio not kept)",
    ]
    assert files["notes.png"]["error"] == "not an image file that Pillow can read"
    assert files["missing.png"]["error"] == "no such file"
    assert files["truncated.jpg"]["error"].startswith("cannot decode it")
    for entry in (e for e in files.values() if e["ok"]):
        probabilities = [c["probability"] for c in entry["top_k"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        assert all(c["class"] == f"class {c['index']}" for c in entry["top_k"])
    # The text output says the same, file by file.
    assert "rgba.png  [converted RGBA to grayscale; transparency flattened onto black;" in (
        captured.out
    )
    assert "notes.png: error: not an image file that Pillow can read" in captured.out


def test_cli_exit_status_is_0_when_all_files_are_classified(tiny_run, tmp_path, capsys):
    path = save(np.zeros((28, 28), np.uint8), tmp_path / "zero.png")
    assert predict.main(["--ckpt", str(tiny_run), path, "--json", "-", "--top-k", "10"]) == 0
    payload = json.loads(capsys.readouterr().out)  # with --json -, stdout is only JSON
    assert payload["dataset"] == "mnist" and payload["epoch"] == 1
    (entry,) = payload["files"]
    assert sorted(c["index"] for c in entry["top_k"]) == list(range(10))
    assert sum(c["probability"] for c in entry["top_k"]) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-k", "11"], "--top-k=11 must be between 1 and 10"),
        (["--json", "out.png"], "looks like an image"),
        (["--batch-size", "0"], "--batch-size=0 must be at least 1"),
    ],
)
def test_cli_usage_errors_exit_with_2(tiny_run, tmp_path, capsys, args, message):
    path = save(np.zeros((28, 28), np.uint8), tmp_path / "zero.png")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--ckpt", str(tiny_run), path, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_batches_padding_does_not_change_the_probabilities(trained):
    images = np.random.default_rng(2).integers(0, 256, (5, *MNIST_SHAPE), np.uint8)
    whole = predict.make_classifier(trained, max_batch=64)(images)  # one batch of 8
    pairs = predict.make_classifier(trained, max_batch=2)(images)  # 3 batches of 2
    assert whole.shape == (5, 10)
    np.testing.assert_allclose(pairs, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole.sum(1), 1, rtol=1e-5)


def test_a_real_mnist_png_is_predicted_as_evaluation_predicts_it(
    trained, mnist, cpu_devices, tmp_path
):
    """Saved as PNG and read back through predict, a test image gets eval's probabilities."""
    images, labels = mnist.test.images[:4], mnist.test.labels[:4]
    paths = [save(image[..., 0], tmp_path / f"{i}.png") for i, image in enumerate(images)]
    predictions = predict.predict_files(trained, paths, top_k=10)
    assert all(p.error is None and p.conversions == [] for p in predictions)

    mesh = make_mesh(cpu_devices[:1])  # where `trained` lives
    evaluator = evaluation.make_evaluator(trained.config, trained.derived, mesh)
    for image, label, prediction in zip(images, labels, predictions, strict=True):
        split = evaluation.DeviceSplit(Split(image[None], label[None]), 1, mesh)
        result = evaluation.evaluate(trained.state, split, evaluator, 10)
        probabilities = dict(prediction.top)
        assert prediction.top[0][0] == result.predictions[0]
        # Evaluation's loss of one image is -log p(true class).
        assert probabilities[int(label)] == pytest.approx(np.exp(-result.loss), rel=1e-5)


def test_the_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; a bright left edge
    pixels[:, :2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "turned.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    image, conversions = predict.load_image(path, CIFAR10_SHAPE)
    assert conversions == [
        "turned upright as its EXIF orientation says",
        "resized 10x20 to 32x32 (aspect ratio not kept)",
    ]
    assert image[:4].mean() > 200 and image[-4:].mean() < 50  # the left edge is now the top


def test_prediction_uses_the_moving_average(trained):
    assert trained.state.ema is not None  # the tiny run keeps one
    images = np.random.default_rng(3).integers(0, 256, (4, *MNIST_SHAPE), np.uint8)
    probabilities = predict.make_classifier(trained, max_batch=4)(images)
    options = evaluation.inference_options(trained.config, trained.derived)
    averaged = evaluation.class_probabilities(trained.state, images, **options)
    as_trained = evaluation.class_probabilities(trained.state.replace(ema=None), images, **options)
    np.testing.assert_allclose(probabilities, averaged, rtol=1e-5, atol=1e-7)
    assert np.abs(probabilities - as_trained).max() > 1e-4


def test_a_model_trained_on_a_datasets_own_shape_takes_files_at_that_shape(
    odd_shaped_run, cpu_devices, tmp_path, monkeypatch
):
    """Files are made into the 40x36 images the run trained on (conftest's ODD_SHAPE), not into
    MNIST's 28x28: a 45x50 file keeps its aspect ratio."""
    trained = checkpoint.load_trained(odd_shaped_run, mesh=make_mesh(cpu_devices[:1]))
    fed = []
    make_classifier = predict.make_classifier

    def recording(trained, max_batch):
        classify = make_classifier(trained, max_batch)
        return lambda images: fed.append(images.shape) or classify(images)

    monkeypatch.setattr(predict, "make_classifier", recording)
    image = save(np.zeros((50, 45), np.uint8), tmp_path / "tall.png")
    (prediction,) = predict.predict_files(trained, [image])
    assert prediction.error is None and prediction.conversions == ["resized 45x50 to 36x40"]
    assert fed == [(1, *ODD_SHAPE)]
