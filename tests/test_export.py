import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import checkpoint, export, exported, preprocess
from alexnet_jax.data import spec
from alexnet_jax.locks import hold_output
from alexnet_jax.parallel import make_mesh

from conftest import ODD_SHAPE, tmpfs

# The exported function is the live model's XLA program, run from StableHLO; on the CPU both give
# the same float32 logits up to reassociation.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def trained(tiny_run, cpu_devices):
    return checkpoint.load_trained(tiny_run, mesh=make_mesh(cpu_devices[:1]))


@pytest.fixture(scope="module")
def export_dir(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export.export(trained, out)
    return out


def live_logits(trained, images, average=True):
    """The model's logits, straight from the Flax module: with the run's moving average of the
    weights (the tiny run keeps one), or with the trained weights themselves."""
    mnist = spec("mnist")
    x = preprocess.to_model_input(images, trained.config.image_size, mnist.mean, mnist.std)
    state = trained.state
    variables = state.ema if average else {"params": state.params, "batch_stats": state.batch_stats}
    return np.asarray(state.apply_fn(variables, x, train=False))


def earlier_manifest(**fields) -> bytes:
    """The manifest of an earlier export, as far as export tells one by it."""
    manifest = {"format": exported.FORMAT, "format_version": 1, "onnx": None, **fields}
    return json.dumps(manifest).encode()


EARLIER_MANIFEST = earlier_manifest()


def random_images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28, 1), np.uint8)


@pytest.mark.parametrize("batch", [1, 5, 17])  # the export traced a symbolic batch
def test_exported_function_gives_the_live_models_logits(trained, export_dir, batch):
    images = random_images(batch, seed=batch)
    logits = exported.load(export_dir)(images)
    assert logits.shape == (batch, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, live_logits(trained, images), rtol=RTOL, atol=ATOL)


def test_the_export_computes_the_moving_average(trained, export_dir):
    assert trained.state.ema is not None
    images = random_images(4, seed=3)
    logits = exported.load(export_dir)(images)
    np.testing.assert_allclose(logits, live_logits(trained, images), rtol=RTOL, atol=ATOL)
    trained_weights = live_logits(trained, images, average=False)
    assert np.abs(logits - trained_weights).max() > 1e-3  # the average is not the weights
    with np.load(export_dir / exported.WEIGHTS, allow_pickle=False) as weights:
        np.testing.assert_array_equal(
            weights["params/dense_2/kernel"], trained.state.ema["params"]["dense_2"]["kernel"]
        )


def test_export_refuses_to_write_what_fails_its_check(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    previous = {exported.MANIFEST: EARLIER_MANIFEST, exported.WEIGHTS: b"earlier"}
    for name, content in previous.items():
        (out / name).write_bytes(content)
    savez = np.savez

    def altered(path, **arrays):  # the weights written are not the live model's
        arrays["params/dense_2/bias"] = arrays["params/dense_2/bias"] + 1
        savez(path, **arrays)

    monkeypatch.setattr(np, "savez", altered)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--ckpt", str(tiny_run), "--out", str(out), "--platforms", "cpu"])
    assert exit_info.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no folder left beside it
    err = capsys.readouterr().err
    assert "the jax export's logits differ from the live model's by" in err
    assert f"nothing was written to {out}" in err and len(err.strip().splitlines()) == 1


def test_manifest_describes_the_input_and_the_classes(export_dir):
    manifest = json.loads((export_dir / exported.MANIFEST).read_text())
    assert manifest["input"] == {"shape": [None, 28, 28, 1], "dtype": "uint8"}
    # The names of the tiny run's own classes (its synthetic Dataset's), not MNIST's.
    assert manifest["class_names"] == [f"class {i}" for i in range(10)]
    assert manifest["dataset"] == "mnist" and manifest["image_size"] == 67
    assert manifest["platforms"] == ["cpu", "cuda"] and manifest["epoch"] == 1
    with np.load(export_dir / exported.WEIGHTS, allow_pickle=False) as weights:
        assert sorted(weights.files) == sorted(manifest["weight_names"])
        assert weights["params/dense_2/kernel"].shape == (4096, 10)
        assert "batch_stats/batch_normalization/mean" in weights.files


def test_loader_refuses_images_of_another_shape_or_type(export_dir):
    model = exported.load(export_dir)
    with pytest.raises(ValueError, match=r"expected uint8 images \[batch, 28, 28, 1\]"):
        model(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="got float32"):
        model(np.zeros((2, 28, 28, 1), np.float32))
    assert model(np.zeros((0, 28, 28, 1), np.uint8)).shape == (0, 10)
    np.testing.assert_allclose(model.probabilities(random_images(2)).sum(1), 1, rtol=1e-6)


def test_loader_runs_on_its_own_without_the_model_code(trained, export_dir, tmp_path):
    """exported.py copied alone next to the export runs it: no alexnet_jax, no flax."""
    shutil.copy(exported.__file__, tmp_path / "exported.py")
    images = random_images(3, seed=7)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, sys
import numpy as np
import exported
logits = exported.load({str(export_dir)!r})(np.load("images.npy"))
np.save("logits.npy", logits)
loaded = [m for m in sys.modules if m.split(".")[0] in ("alexnet_jax", "flax", "ml_collections",
                                                        "optax", "orbax")]
print(json.dumps(loaded))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    logits = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(logits, live_logits(trained, images), rtol=RTOL, atol=ATOL)


def test_export_cli_checks_what_it_wrote(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported"
    # An earlier export's ONNX model: this export writes none, so it must not stay beside it.
    out.mkdir()
    (out / exported.MANIFEST).write_bytes(earlier_manifest(onnx=export.ONNX))
    (out / export.ONNX).write_bytes(b"an earlier export's model")
    (out / "notes.txt").write_text("the user's own file")
    export.main(["--ckpt", str(tiny_run), "--out", str(out), "--platforms", "cpu"])
    printed, err = capsys.readouterr()
    assert "checked jax: logits within" in printed
    assert err == (
        f"note: {tiny_run}/checkpoints/1 was trained on the in-memory Dataset 'mnist': the "
        "manifest lists its class names (class 0, class 1, class 2 and 7 more)\n"
    )
    assert json.loads((out / exported.MANIFEST).read_text())["platforms"] == ["cpu"]
    assert not (out / export.ONNX).exists()
    assert (out / "notes.txt").read_text() == "the user's own file"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--platforms", "cpu,metal"], "--platforms cpu,metal: choose from"),
        (["--out", __file__], "is a file: name a folder"),
    ],
)
def test_export_cli_usage_errors(tiny_run, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--ckpt", str(tiny_run), "--out", str(tmp_path / "x"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_loader_refuses_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        exported.load(tmp_path)


def test_onnx_export_gives_the_live_models_logits(trained, tmp_path):
    pytest.importorskip("jax2onnx", reason="the onnx extra is not installed")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    manifest = export.export(trained, tmp_path, platforms=("cpu",), onnx=True)
    assert manifest["onnx"] == export.ONNX
    session = onnxruntime.InferenceSession(
        str(tmp_path / export.ONNX), providers=["CPUExecutionProvider"]
    )
    (images_input,) = session.get_inputs()
    assert images_input.name == "images" and images_input.type == "tensor(uint8)"
    assert isinstance(images_input.shape[0], str) and images_input.shape[1:] == [28, 28, 1]
    for batch in (1, 6):  # any batch size: the batch axis is dynamic
        images = random_images(batch, seed=batch)
        (logits,) = session.run(["logits"], {"images": images})
        # ONNX Runtime's own convolutions and matmuls: float32 rounding differs from XLA's.
        np.testing.assert_allclose(logits, live_logits(trained, images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "folder, message",
    [
        (  # the user's own files of the names export writes
            {export.ONNX: b"mine", exported.MANIFEST: b'{"mine": 1}'},
            r"is not an alexnet_jax export \(it has no manifest of one\), and exporting would "
            r"replace or remove its model.onnx, manifest.json: move them away",
        ),
        (
            {exported.MANIFEST: b'{"format": "another.tool", "format_version": 1}'},
            r"is not an alexnet_jax export .* would replace or remove its manifest.json:",
        ),
        ({exported.WEIGHTS: b"\x00not json"}, r"would replace or remove its weights.npz:"),
        (
            {"notes.txt": b"mine", "data.csv": b"1,2"},
            r"holds files that are not an alexnet_jax export \(data.csv, notes.txt\): name an "
            "empty or new folder",
        ),
        (  # an export without ONNX, and the user's model.onnx put beside it
            {exported.MANIFEST: EARLIER_MANIFEST, export.ONNX: b"mine"},
            r"holds an earlier export and a model.onnx that it did not write, which exporting "
            "would replace or remove: move it away",
        ),
    ],
    ids=[
        "own model.onnx and manifest.json",
        "another manifest",
        "own weights",
        "own files",
        "own model.onnx beside an export",
    ],
)
def test_export_refuses_a_folder_that_is_not_an_earlier_export_before_reading_the_checkpoint(
    folder, message, tmp_path, monkeypatch, capsys
):
    def load_trained(*_, **__):
        raise AssertionError("the checkpoint was read before --out was checked")

    monkeypatch.setattr(checkpoint, "load_trained", load_trained)
    out = tmp_path / "u"
    out.mkdir()
    for name, content in folder.items():
        (out / name).write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--ckpt", "a-run", "--out", str(out), "--platforms", "cpu"])
    assert exit_info.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == folder
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --out {out} ")
    assert re.search(message, line), line


def test_a_second_export_into_a_folder_in_use_is_refused_before_reading_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    # Two exports into one folder: the later won, or a manifest described other weights.
    def load_trained(*_, **__):
        raise AssertionError("the checkpoint was read while another export held --out")

    monkeypatch.setattr(checkpoint, "load_trained", load_trained)
    out = tmp_path / "exported"
    out.mkdir()
    first = {exported.MANIFEST: EARLIER_MANIFEST, exported.WEIGHTS: b"the first export's"}
    for name, content in first.items():
        (out / name).write_bytes(content)
    with hold_output(out, "export", "--out"):  # as the first export does while it writes
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--ckpt", "a-run", "--out", str(out), "--platforms", "cpu"])
        assert exit_info.value.code == 2
        assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {out} is in use by another export (pid {os.getpid()} on host "
        f"{socket.gethostname()} since "
    )
    assert line.endswith("): wait for it to end, or pass another --out"), line
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no lock file left


def test_a_full_disk_during_the_export_is_one_line_and_keeps_the_earlier_export(
    tiny_run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "exported"
    out.mkdir()
    previous = {exported.MANIFEST: EARLIER_MANIFEST, exported.WEIGHTS: b"earlier"}
    for name, content in previous.items():
        (out / name).write_bytes(content)

    def disk_fills(path, **arrays):  # the first bytes, then no more room
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_fills)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--ckpt", str(tiny_run), "--out", str(out), "--platforms", "cpu"])
    assert exit_info.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # the staging folder is gone
    assert capsys.readouterr().err == (
        f"error: could not write the export's weights.npz for {out} (No space left on device): "
        "free disk space and run it again\n"
    )


def test_a_real_full_disk_during_the_export_leaves_nothing_on_it(tiny_run, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", 20) as disk:  # the weights alone are 87 MB at 67x67
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--ckpt", str(tiny_run), "--out", str(disk / "e"), "--platforms", "cpu"])
        assert exit_info.value.code == 2
        assert list(disk.iterdir()) == []
    assert capsys.readouterr().err == (
        f"error: could not write the export's weights.npz for {disk / 'e'} (No space left on "
        "device): free disk space and run it again\n"
    )


def test_export_takes_a_new_or_empty_folder_or_an_earlier_export(tmp_path):
    empty, earlier, with_onnx = tmp_path / "empty", tmp_path / "earlier", tmp_path / "with-onnx"
    for folder, manifest in ((earlier, EARLIER_MANIFEST), (with_onnx, None)):
        folder.mkdir()
        (folder / exported.MANIFEST).write_bytes(manifest or earlier_manifest(onnx=export.ONNX))
        (folder / exported.WEIGHTS).write_bytes(b"earlier")
        (folder / "notes.txt").write_text("the user's own file, kept beside the export")
    (with_onnx / export.ONNX).write_bytes(b"the earlier export's model")
    empty.mkdir()
    # An export stopped as it moved its files in: the old manifest removed, the new not yet in.
    cut_short = tmp_path / "cut-short"
    cut_short.mkdir()
    for name in (exported.FUNCTION, exported.WEIGHTS, export.ONNX):
        (cut_short / name).write_bytes(b"an export's")
    for out in (tmp_path / "new", empty, earlier, with_onnx, cut_short):
        export.check_replaceable(out)  # raises for any other folder (the test above)
    assert export.earlier_export_files(with_onnx) == set(export.EXPORT_FILES)
    assert export.earlier_export_files(earlier) == set(export.EXPORT_FILES) - {export.ONNX}


def test_a_run_on_a_datasets_own_shape_is_exported_for_images_of_that_shape(
    odd_shaped_run, cpu_devices, tmp_path
):
    """The function, the manifest and the check take the 40x36 images the run trained on
    (conftest's ODD_SHAPE), not MNIST's 28x28."""
    trained = checkpoint.load_trained(odd_shaped_run, mesh=make_mesh(cpu_devices[:1]))
    manifest, differences = export.export_checked(trained, tmp_path / "e", ("cpu",))
    assert manifest["input"] == {"shape": [None, *ODD_SHAPE], "dtype": "uint8"}
    assert set(differences) == {"jax"}  # on such images, against the live model
    model = exported.load(tmp_path / "e")
    images = np.random.default_rng(1).integers(0, 256, (2, *ODD_SHAPE), np.uint8)
    assert model(images).shape == (2, 10) and np.isfinite(model(images)).all()
    with pytest.raises(ValueError, match=r"expected uint8 images \[batch, 40, 36, 1\]"):
        model(random_images(2))
