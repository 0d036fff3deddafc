"""Keras interop: the model against the seed's Keras model, Keras files in, Keras files out."""

import errno
import json
import os
import socket

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import (
    checkpoint,
    evaluation,
    export,
    keras_io,
    keras_model,
    predict,
    preprocess,
    report,
)
from alexnet_jax import eval as eval_cli
from alexnet_jax.data import DATASETS, Split
from alexnet_jax.locks import hold_output
from alexnet_jax.model import STEMS, AlexNet
from alexnet_jax.parallel import make_mesh
from alexnet_jax.state import inference_variables

from conftest import ODD_SHAPE, tmpfs

keras = keras_model.keras

# Flax and Keras (JAX backend) run the same float32 model on the CPU with other op orders; the
# largest difference seen is 2.0e-6 of the largest logit (2.9e-5 on a scale of 14, 224x224x3).
TOLERANCE = 1e-5
SIZE = 67  # the smallest input the model takes, for everything that need not be 224


def within_tolerance(actual, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(np.asarray(actual) - np.asarray(expected)).max())
    assert difference <= TOLERANCE * scale, f"{difference} on a scale of {scale}"


def random_variables(image_size, channels, seed=0):
    """Flax variables of the seed's model with random weights and perturbed BatchNorm statistics,
    so that every weight (the moving mean and variance included) changes the logits."""
    rng = np.random.default_rng(seed)
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, channels), np.float32)
    shapes = jax.eval_shape(lambda x: AlexNet().init(jax.random.key(0), x), dummy)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name in ("bias", "mean"):
            return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
        fan_in = np.prod(leaf.shape[:-1])  # He-scaled kernels keep activations of order 1
        return (rng.normal(0, 1, leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def arrays(variables):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(variables)}


def assert_same_arrays(actual, expected):
    actual, expected = arrays(actual), arrays(expected)
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


# --- 1. The Flax model against the seed's Keras model ------------------------------------------


# Each input size and each channel count, with both stems (all four pairs would add two Keras
# models and four compilations to the suite's time).
@pytest.mark.parametrize("channels, image_size", [(1, SIZE), (3, 224)])
def test_the_model_gives_the_seed_keras_models_logits(channels, image_size):
    variables = random_variables(image_size, channels, seed=channels)
    seed = keras_model.seed_model(image_size, channels, initializer="zeros")
    keras_model.set_weights(seed, variables)
    x = np.random.default_rng(1).normal(0, 1, (2, image_size, image_size, channels))
    x = x.astype(np.float32)
    expected = seed.predict(x, verbose=0)
    assert expected.shape == (2, 10) and np.abs(expected).max() > 1  # not vanishing
    for stem in STEMS:
        logits = jax.jit(AlexNet(stem=stem).apply)(variables, x)
        within_tolerance(logits, expected)


def test_the_keras_layers_are_the_seed_tables():
    model = keras_model.seed_model(224, 3, initializer="zeros")
    assert model.count_params() == 46_793_482  # the seed's README, CIFAR-10
    assert keras_model.seed_model(224, 1, initializer="zeros").count_params() == 46_770_250
    assert [layer.name for layer in model.layers][:3] == [
        "conv2d",
        "batch_normalization",
        "max_pooling2d",
    ]
    assert model.get_layer("batch_normalization").momentum == 0.99
    assert model.get_layer("batch_normalization").epsilon == 1e-3


# --- A seed user's files ------------------------------------------------------------------------


def seed_users_model(variables):
    """What a seed user would hold: uint8 MNIST in, scaled to [0, 1], resized, softmax out.

    (Scaled before resizing: Keras' Resizing rounds integer images.)"""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), dtype="uint8"),
            layers.Rescaling(1 / 255),
            layers.Resizing(SIZE, SIZE),
            *keras_model.seed_layers(initializer="zeros"),
            layers.Softmax(),
        ]
    )
    keras_model.set_weights(model, variables)
    return model


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """The seed user's model, and it saved as .keras, .weights.h5 and Keras 2 HDF5 files."""
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("seed")
    model = seed_users_model(random_variables(SIZE, 1))
    model.save(folder / "seed.keras")
    model.save_weights(folder / "seed.weights.h5")
    model.save(folder / "seed-model.h5")  # Keras' legacy HDF5 model format
    with h5py.File(folder / "seed-keras2.h5", "w") as file:  # Keras 2's save_weights to .h5
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    return model, folder


@pytest.fixture(scope="module")
def imported(seed_files, tmp_path_factory):
    """The seed user's .keras file imported: (run dir, printed lines)."""
    _, folder = seed_files
    lines = []
    run = tmp_path_factory.mktemp("imported") / "mnist"
    keras_io.import_model(folder / "seed.keras", "mnist", run, say=lines.append)
    return run, lines


@pytest.fixture(scope="module")
def imported_trained(imported, cpu_devices):
    return checkpoint.load_trained(imported[0], mesh=make_mesh(cpu_devices[:1]))


def random_images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28, 1), np.uint8)


# --- 2. Import ----------------------------------------------------------------------------------


def test_an_imported_model_gives_the_keras_models_logits(seed_files, imported, imported_trained):
    model, _ = seed_files
    run, lines = imported
    keras_logits = keras.Model(model.inputs, model.get_layer("dense_2").output)
    images = random_images(8)
    within_tolerance(
        keras_io.logits(imported_trained, images), keras_logits.predict(images, verbose=0)
    )
    # The file's [0, 1] inputs are not alexnet_jax's (pixels/255 - mean)/std: folded into conv2d.
    record = json.loads((run / keras_io.IMPORTED).read_text())
    assert record["folded_into_conv2d"] is True
    assert record["input_scale"]["from"] == "the file"
    assert record["input_scale"]["meaning"].startswith("pixels / 255")
    assert any("folded into conv2d" in line for line in lines)


def test_an_imported_run_is_epoch_0_with_a_fresh_optimiser(imported, imported_trained):
    run, _ = imported
    trained = imported_trained
    assert trained.epoch == 0 and trained.history == []
    checkpoints = checkpoint.Checkpoints(run / checkpoint.CHECKPOINTS, read_only=True)
    assert checkpoints.best_epoch() == 0  # --best: the only one there is
    checkpoints.close()
    config = trained.config
    assert (config.dataset, config.image_size, config.dropout_rate) == ("mnist", SIZE, 0.5)
    assert int(trained.state.step) == 0 and trained.state.ema is None
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(trained.state.opt_state))
    assert json.loads((run / "config.json").read_text())["image_size"] == SIZE


@pytest.mark.parametrize(
    "name, options",
    [
        ("seed.weights.h5", dict(input_scale="unit", image_size=SIZE)),
        ("seed-keras2.h5", dict(input_scale="unit", image_size=SIZE)),
        ("seed-model.h5", {}),  # a whole model: its layers say the scale and the size
    ],
)
def test_weights_and_keras_2_files_read_as_the_keras_file(
    seed_files, imported_trained, name, options
):
    _, folder = seed_files
    model = keras_io.read_model(folder / name, "mnist", **options)
    assert model.image_size == SIZE and model.folded
    assert_same_arrays(model.variables, inference_variables(imported_trained.state))


def test_eval_predict_and_export_take_an_imported_run(
    imported, mnist, tmp_path, capsys, monkeypatch
):
    run, _ = imported
    # eval's command on the first 320 real test images (all 10,000 take too long here).
    few = Split(mnist.test.images[:320], mnist.test.labels[:320]), mnist.class_names
    monkeypatch.setattr(eval_cli, "load_test_split", lambda *args, **kwargs: few)
    eval_cli.main(["--ckpt", str(run), "--batch-size", "64", "--json", str(tmp_path / "eval.json")])
    assert "mnist, epoch 0 of" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["num_examples"] == 320

    paths = []
    for i, image in enumerate(mnist.test.images[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[..., 0]).save(paths[-1])
    assert predict.main(["--ckpt", str(run), *paths]) == 0

    export.main(["--ckpt", str(run), "--out", str(tmp_path / "export"), "--platforms", "cpu"])
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["epoch"] == 0 and manifest["metrics"] is None


# --- 3. Export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def averaged_run(imported_trained, tmp_path_factory):
    """The imported run with a moving average of other weights: what export must take."""
    run = tmp_path_factory.mktemp("averaged") / "mnist"
    average = jax.tree.map(np.asarray, random_variables(SIZE, 1, seed=7))
    config = imported_trained.config
    config.ema_decay = 0.99
    checkpoints = checkpoint.Checkpoints(run / checkpoint.CHECKPOINTS)
    checkpoints.save(0, imported_trained.state.replace(ema=average), config, [])
    checkpoints.wait()
    checkpoints.close()
    return run, average


@pytest.fixture(scope="module")
def exported(averaged_run, tmp_path_factory):
    lines = []
    path, _ = keras_io.export_model(
        averaged_run[0], tmp_path_factory.mktemp("keras") / "m.keras", say=lines.append
    )
    assert "(the moving average of its weights)" in lines[0]
    return path


def test_the_keras_export_predicts_real_images_as_evaluation_does(
    averaged_run, exported, mnist, cpu_devices
):
    images, labels = mnist.test.images[:320], mnist.test.labels[:320]
    model = keras.saving.load_model(exported, safe_mode=True)
    (images_in,) = model.inputs
    assert images_in.dtype == "uint8" and tuple(images_in.shape) == (None, 28, 28, 1)
    keras_logits = model.predict(images, verbose=0)

    mesh = make_mesh(cpu_devices[:1])
    trained = checkpoint.load_trained(averaged_run[0], mesh=mesh)
    split = evaluation.DeviceSplit(Split(images, labels), 32, mesh)
    evaluator = evaluation.make_evaluator(trained.config, trained.derived, mesh)
    result = evaluation.evaluate(trained.state, split, evaluator, 10)
    assert len(set(result.predictions.tolist())) > 1  # not one class for every image
    np.testing.assert_array_equal(keras_logits.argmax(1), result.predictions)
    within_tolerance(keras_logits, keras_io.logits(trained, images))

    # The report of a run without metrics (its evaluation is this one; write_report's costs more).
    page = report.render_html(
        "mnist: imported", trained.config.to_dict(), [], result, images, mnist.class_names, "0"
    )
    assert "No metrics recorded" in page and page.count("<img") == 3  # no curves


def test_export_then_import_gives_back_identical_arrays(averaged_run, imported_trained, exported):
    _, average = averaged_run
    model = keras_io.read_model(exported, "mnist")
    assert not model.folded  # the export's inputs are alexnet_jax's own
    assert_same_arrays(model.variables, average)  # the moving average, not the parameters:
    trained_kernel = imported_trained.state.params["conv2d"]["kernel"]
    assert not np.array_equal(average["params"]["conv2d"]["kernel"], trained_kernel)


def test_a_single_view_export_is_the_plain_sequential_model(exported):
    model = keras.saving.load_model(exported, safe_mode=True)
    assert isinstance(model, keras.Sequential) and model.name == "alexnet_mnist"


def test_the_keras_export_takes_the_runs_test_time_views(
    averaged_run, imported_trained, cpu_devices, tmp_path
):
    """A run evaluated over views (eval_flip, eval_shift) exports them: the Keras logits are
    evaluation's combined ones, and importing the file back gives the same weights."""
    run = tmp_path / "views" / "mnist"
    config = imported_trained.config.copy_and_resolve_references()
    config.ema_decay, config.eval_flip, config.eval_shift = 0.99, True, 2
    checkpoints = checkpoint.Checkpoints(run / checkpoint.CHECKPOINTS)
    state = imported_trained.state.replace(ema=averaged_run[1])  # as averaged_run's
    checkpoints.save(0, state, config, [])
    checkpoints.wait()
    checkpoints.close()

    lines = []
    path, _ = keras_io.export_model(run, tmp_path / "views.keras", say=lines.append)
    assert "the run's 10 test-time views inside (eval_flip=True, eval_shift=2)" in "\n".join(lines)
    model = keras.saving.load_model(path, safe_mode=True)
    images = random_images(6, seed=5)
    keras_logits = model.predict(images, verbose=0)

    trained = checkpoint.load_trained(run, mesh=make_mesh(cpu_devices[:1]))
    options = evaluation.inference_options(trained.config, trained.derived)
    probabilities = evaluation.class_probabilities(trained.state, images, **options)
    np.testing.assert_allclose(jax.nn.softmax(keras_logits), probabilities, rtol=1e-4, atol=1e-6)
    views = evaluation.view_logits(
        trained.state.apply_fn, inference_variables(trained.state), images, **options
    )
    within_tolerance(keras_logits, evaluation.combined_logits(views))
    assert np.abs(keras_logits - views[0]).max() > 1e-3  # not the single view's

    read = keras_io.read_model(path, "mnist")
    assert_same_arrays(read.variables, inference_variables(trained.state))
    assert any("its 10 test-time views are not imported" in note for note in read.read.notes)


def test_a_cifar10_model_scales_each_channel_out_and_back(tmp_path):
    """The export's front for 3 channels (per-channel mean and std), without a run."""
    variables = random_variables(SIZE, 3, seed=3)
    model = keras_model.inference_model("cifar10", SIZE, variables)
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), np.uint8)
    cifar10 = DATASETS["cifar10"]
    x = preprocess.to_model_input(images, SIZE, cifar10.mean, cifar10.std)
    within_tolerance(model.predict(images, verbose=0), jax.jit(AlexNet().apply)(variables, x))
    model.save(tmp_path / "cifar10.keras")
    back = keras_io.read_model(tmp_path / "cifar10.keras", "cifar10")
    assert not back.folded and back.image_size == SIZE
    assert_same_arrays(back.variables, variables)


# --- Errors: one line each ----------------------------------------------------------------------


def small_model(*middle):
    dense = keras.layers.Dense(10, kernel_initializer="zeros")
    return keras.Sequential([keras.Input((SIZE, SIZE, 1)), *middle, keras.layers.Flatten(), dense])


@pytest.fixture(scope="module")
def bad_files(seed_files, tmp_path_factory):
    _, folder = seed_files
    bad = tmp_path_factory.mktemp("bad")
    other = small_model(
        keras.layers.Conv2D(96, 11, strides=4, activation="relu", kernel_initializer="zeros")
    )
    other.save(bad / "other.keras")
    other.save_weights(bad / "other.weights.h5")
    small_model(keras.layers.Lambda(lambda x: x * 2)).save(bad / "lambda.keras")
    for name in ("seed.keras", "seed.weights.h5"):
        data = (folder / name).read_bytes()
        (bad / f"truncated-{name}").write_bytes(data[: len(data) // 2])
    # A Keras 2 model with a TensorFlow op layer, which Keras 3 has no class for.
    small_model().save(bad / "keras2.h5")
    with h5py.File(bad / "keras2.h5", "r+") as file:
        config = json.loads(file.attrs["model_config"])
        op = {
            "class_name": "TFOpLambda",
            "config": {"name": "tf.math.multiply", "function": "math.multiply"},
        }
        config["config"]["layers"].insert(1, op)
        file.attrs["model_config"] = json.dumps(config)
        file.attrs["keras_version"] = "2.15.0"
    return bad


@pytest.mark.parametrize(
    "file, options, message",
    [
        (
            "other.keras",
            [],
            "layer 2 (flatten) is a Flatten, where the seed's AlexNet has batch_normalization",
        ),
        (
            "other.weights.h5",
            ["--input-scale", "unit"],
            # The missing layers listed, then straight on to the reason: no stray "; ".
            "dense_2: not the weights of the seed's AlexNet",
        ),
        (
            "seed:seed.keras",
            ["--dataset", "cifar10"],
            "holds a model of 1-channel images, but cifar10's have 3: pass --dataset mnist",
        ),
        ("truncated-seed.keras", [], "is not a zip archive, as .keras files are: it is truncated"),
        ("truncated-seed.weights.h5", ["--input-scale", "unit"], "truncated"),
        ("keras2.h5", [], "a Keras 2.15.0 HDF5 model"),
        (
            "lambda.keras",
            [],
            "asks for unsafe deserialisation (a Lambda with Python code): refused",
        ),
        ("seed:seed.weights.h5", [], "pass --image-size, the size it was trained at"),
        (
            "seed:seed.weights.h5",
            ["--image-size", str(SIZE)],
            "does not say how its inputs were scaled",
        ),
        ("seed:seed.keras", ["--input-scale", "unit"], "drop --input-scale"),
    ],
)
def test_a_file_that_cannot_be_imported_gets_one_line(
    seed_files, bad_files, tmp_path, capsys, file, options, message
):
    folder = seed_files[1] if file.startswith("seed:") else bad_files
    path = folder / file.removeprefix("seed:")
    dataset = [] if "--dataset" in options else ["--dataset", "mnist"]
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(["import", str(path), *dataset, "--out", str(tmp_path / "run"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_never_overwritten(seed_files, imported, capsys):
    run, _ = imported
    before = sorted(p.name for p in (run / checkpoint.CHECKPOINTS).iterdir())
    with pytest.raises(SystemExit):
        keras_io.main(
            ["import", str(seed_files[1] / "seed.keras"), "--dataset", "mnist", "--out", str(run)]
        )
    assert "holds a run already" in capsys.readouterr().err
    assert sorted(p.name for p in (run / checkpoint.CHECKPOINTS).iterdir()) == before


@pytest.mark.parametrize("kind", ["the user's files", "a workdir"])
def test_an_import_into_a_folder_that_is_not_empty_is_refused(seed_files, tmp_path, kind, capsys):
    # It replaced the user's config.json, and a workdir became a run hiding the runs in it.
    out = tmp_path / "out"
    if kind == "a workdir":
        (out / "mnist" / checkpoint.CHECKPOINTS).mkdir(parents=True)
    else:
        out.mkdir()
        (out / "config.json").write_text('{"mine": 1}')
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(
            ["import", str(seed_files[1] / "seed.keras"), "--dataset", "mnist", "--out", str(out)]
        )
    assert exit_info.value.code == 2
    listed = "mnist" if kind == "a workdir" else "config.json"
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: --out {out} is not empty ({listed}): the run is written into a new or empty "
        "folder; name one (nothing was changed)"
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    if kind != "a workdir":
        assert (out / "config.json").read_text() == '{"mine": 1}'


def test_a_second_import_into_a_folder_in_use_is_refused_and_leaves_it_alone(
    seed_files, tmp_path, capsys
):
    # Two imports into one folder: both found it empty, each removed the other's checkpoint in
    # flight (Orbax's temporary folder has a fixed name), and one or neither survived.
    out = tmp_path / "run"
    with hold_output(out, "keras_io import", "--out"):  # as the first import does
        with pytest.raises(SystemExit) as exit_info:
            keras_io.main(
                [
                    "import",
                    str(seed_files[1] / "seed.keras"),
                    "--dataset",
                    "mnist",
                    "--out",
                    str(out),
                ]
            )
        assert exit_info.value.code == 2
        assert not out.exists()  # nothing written by the second
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {out} is in use by another keras_io import (pid {os.getpid()} on host "
        f"{socket.gethostname()} since "
    )
    assert line.endswith("): wait for it to end, or pass another --out"), line
    assert list(tmp_path.iterdir()) == []  # and the lock file went with its holder


def test_an_import_that_fails_part_way_leaves_nothing_that_blocks_the_next(
    seed_files, tmp_path, monkeypatch, capsys
):
    # Its checkpoints folder stayed: the next import refused the folder as a run, eval found
    # no checkpoint in it.
    def disk_fills(*_):
        raise OSError(errno.ENOSPC, "No space left on device", "config.json")

    monkeypatch.setattr(keras_io.artifacts, "write_config", disk_fills)
    argv = ["import", str(seed_files[1] / "seed.keras"), "--dataset", "mnist"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty):
        with pytest.raises(SystemExit) as exit_info:
            keras_io.main([*argv, "--out", str(out)])
        assert exit_info.value.code == 1
        assert "no space left on the disk" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # the folder made is gone
    assert list(empty.iterdir()) == []  # the one that was there stays, empty
    monkeypatch.undo()
    keras_io.main([*argv, "--out", str(empty)])
    assert (empty / keras_io.IMPORTED).exists() and (empty / checkpoint.CHECKPOINTS).is_dir()


def test_export_wants_a_keras_file_name(imported, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(["export", "--ckpt", str(imported[0]), "--out", str(tmp_path / "m.h5")])
    assert exit_info.value.code == 2
    assert "must end in .keras" in capsys.readouterr().err


def test_export_leaves_an_existing_file_alone(imported, tmp_path, capsys):
    # Perhaps the user's own Keras model: the one a run was imported from.
    existing = tmp_path / "model.keras"
    existing.write_bytes(b"the user's model")
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(["export", "--ckpt", str(imported[0]), "--out", str(existing)])
    assert exit_info.value.code == 2
    assert "exists: delete it first, or name another file" in capsys.readouterr().err
    assert existing.read_bytes() == b"the user's model"


def test_a_second_keras_export_to_a_file_in_use_is_refused(imported, tmp_path, capsys):
    # Two exports to one file: one checked the other's model ("logits differ ... please report
    # this"), the other's cleanup removed it, or the later silently replaced the earlier.
    out = tmp_path / "m.keras"
    with hold_output(out, "keras_io export", "--out"):  # as the first export does
        with pytest.raises(SystemExit) as exit_info:
            keras_io.main(["export", "--ckpt", str(imported[0]), "--out", str(out)])
        assert exit_info.value.code == 2
        assert not out.exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {out} is in use by another keras_io export (pid {os.getpid()} on host "
    )
    assert line.endswith("): wait for it to end, or pass another --out"), line
    assert list(tmp_path.iterdir()) == []


def test_the_keras_export_never_replaces_a_file_that_appeared_meanwhile(
    imported, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "m.keras"
    check_export = keras_io.check_export

    def another_program_writes_out(trained, path):
        difference = check_export(trained, path)
        out.write_bytes(b"another program's model")  # after the check that it did not exist
        return difference

    monkeypatch.setattr(keras_io, "check_export", another_program_writes_out)
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(["export", "--ckpt", str(imported[0]), "--out", str(out)])
    assert exit_info.value.code == 2
    assert out.read_bytes() == b"another program's model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no partial file, no lock
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: --out {out} appeared while the model was exported (another program wrote it): "
        "it was left as it is and the export was not written; name another file"
    )


def test_a_full_disk_during_the_keras_export_is_one_line_and_leaves_no_file(
    tiny_run, tmp_path, monkeypatch, capsys
):
    def disk_fills(model, path, *args, **kwargs):  # the first bytes, then no more room
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", disk_fills)
    out = tmp_path / "m.keras"
    with pytest.raises(SystemExit) as exit_info:
        keras_io.main(["export", "--ckpt", str(tiny_run), "--out", str(out)])
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial
    assert capsys.readouterr().err == (
        f"error: could not write {out} (No space left on device): free disk space and run it "
        "again\n"
    )


def test_a_real_full_disk_during_the_keras_export_leaves_nothing_on_it(tiny_run, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", 20) as disk:  # the model's weights are 87 MB at 67x67
        out = disk / "m.keras"
        with pytest.raises(SystemExit) as exit_info:
            keras_io.main(["export", "--ckpt", str(tiny_run), "--out", str(out)])
        assert exit_info.value.code == 2
        assert list(disk.iterdir()) == []
    assert capsys.readouterr().err == (
        f"error: could not write {out} (No space left on device): free disk space and run it "
        "again\n"
    )


def test_the_keras_export_of_a_run_trained_on_a_dataset_names_its_classes(
    tiny_run, tmp_path, capsys
):
    # A Keras file carries no class names: the note says which the outputs are.
    keras_io.main(["export", "--ckpt", str(tiny_run), "--out", str(tmp_path / "m.keras")])
    assert capsys.readouterr().err == (
        f"note: {tiny_run}/checkpoints/1 was trained on the in-memory Dataset 'mnist': a Keras "
        "file holds no class names: its 10 outputs are its classes, in order (class 0, class 1, "
        "class 2 and 7 more)\n"
    )


def test_the_keras_export_of_a_run_on_a_datasets_own_shape_takes_that_shape(
    odd_shaped_run, tmp_path
):
    """The model's input is the 40x36 images the run trained on (conftest's ODD_SHAPE), not
    MNIST's 28x28; export_model checks its logits on such images, over the run's two views."""
    said = []
    out, _ = keras_io.export_model(odd_shaped_run, tmp_path / "m.keras", say=said.append)
    model = keras_io._keras_model().keras.saving.load_model(out, safe_mode=True)
    assert tuple(model.input_shape) == (None, *ODD_SHAPE)
    assert any("uint8 [batch, 40x36x1] -> logits [batch, 10]" in line for line in said)
