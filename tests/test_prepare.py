"""Preparing a dataset the data dir lacks: what is found, what is decided, and the copy.

Nothing here downloads: the decisions are tested on their own, the folders are real ones made
from ../shared/tfds in temporary directories, and the reachability check talks to a closed port
on this machine.
"""

import errno
import hashlib
import re
import shutil
import socket

import pytest

from alexnet_jax import prepare
from alexnet_jax.errors import UserError

MNIST = ("mnist", "3.0.1")


def found(state, problem=""):
    return prepare.Found(state, problem)


def decide(state, problem="", **kwargs):
    return prepare.next_step(found(state, problem), "mnist:3.0.1", "/data", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"download": False}, {"copy_from": "/elsewhere"}, {"processes": 4}, {"install": True}],
)
def test_a_prepared_dataset_is_used_as_it_is(kwargs):
    assert decide("prepared", **kwargs) == "use"


@pytest.mark.parametrize("kwargs", [{}, {"copy_from": "/elsewhere"}, {"has_tensorflow": True}])
def test_an_incomplete_dataset_is_never_used_nor_overwritten(kwargs):
    with pytest.raises(
        UserError, match=r"incomplete \(x holds 1 of 2 records\).*delete /data/mnist/3.0.1"
    ):
        decide("incomplete", "x holds 1 of 2 records", **kwargs)


def test_a_missing_dataset_is_copied_when_a_prepared_copy_is_named():
    assert decide("missing", copy_from="/elsewhere") == "copy"
    assert decide("missing", copy_from="/elsewhere", download=False) == "copy"


def test_a_missing_dataset_is_downloaded_when_tensorflow_is_there():
    assert decide("missing", has_tensorflow=True) == "prepare"


def test_without_tensorflow_the_extra_is_installed_only_when_allowed():
    assert decide("missing", install=True) == "install"
    # The command it names prepares the data dir this run reads, not TFDS's default one.
    with pytest.raises(
        UserError, match=r"needs TensorFlow .*prepare mnist --data-dir /data --install"
    ):
        decide("missing")


def test_a_missing_dataset_without_download_names_the_option():
    # A command that any command can run (eval and report take no --config options).
    with pytest.raises(
        UserError,
        match=r"not prepared in /data: pass --data-dir .*`python -m alexnet_jax.prepare mnist "
        r"--data-dir /data --install`",
    ):
        decide("missing", download=False, has_tensorflow=True, install=True)


def test_several_processes_never_prepare_the_same_dataset_at_once():
    with pytest.raises(UserError, match=r"prepare it first with `python -m alexnet_jax.prepare"):
        decide("missing", has_tensorflow=True, processes=2)


def records(data_dir, split):
    return next((data_dir / "mnist" / "3.0.1").glob(f"mnist-{split}.array_record*"))


def test_a_complete_copy_is_found_prepared(mnist_copy):
    assert prepare.find(*MNIST, str(mnist_copy)).state == "prepared"


@pytest.mark.parametrize("keep", [4096, 1 / 3, 0.99])
def test_a_truncated_record_file_makes_it_incomplete(mnist_copy, keep):
    path = records(mnist_copy, "train")
    with open(path, "r+b") as f:
        f.truncate(keep if isinstance(keep, int) else int(path.stat().st_size * keep))
    result = prepare.find(*MNIST, str(mnist_copy))
    assert result.state == "incomplete"
    assert re.fullmatch(
        rf"{re.escape(path.name)} (is unreadable \(.+\)|holds 0 of 60000 records)", result.problem
    )


def test_a_missing_record_file_makes_it_incomplete(mnist_copy):
    path = records(mnist_copy, "test")
    path.unlink()
    result = prepare.find(*MNIST, str(mnist_copy))
    assert (result.state, result.problem) == ("incomplete", f"{path.name} is missing")


def test_a_copy_that_stopped_before_the_metadata_is_incomplete(mnist_copy):
    (mnist_copy / "mnist" / "3.0.1" / "dataset_info.json").unlink()
    result = prepare.find(*MNIST, str(mnist_copy))
    assert result.state == "incomplete"
    assert result.problem == "it has no dataset_info.json"
    with pytest.raises(UserError, match="is incomplete"):
        prepare.ensure_prepared(*MNIST, str(mnist_copy))


def test_an_unfinished_tfds_preparation_counts_as_missing_and_is_named(mnist_copy):
    # TFDS prepares into `incomplete.XXXXXX_<version>` and renames it last; a killed
    # preparation leaves that folder, half written, and no version folder.
    version = mnist_copy / "mnist" / "3.0.1"
    leftover = mnist_copy / "mnist" / "incomplete.Q7ZP2K_3.0.1"
    leftover.mkdir()
    shutil.copyfile(records(mnist_copy, "train"), leftover / records(mnist_copy, "train").name)
    shutil.rmtree(version)
    result = prepare.find(*MNIST, str(mnist_copy))
    assert result.state == "missing"
    assert result.leftovers == (str(leftover),)


def test_missing_without_tensorflow_refuses_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "tensorflow_installed", lambda: False)
    with pytest.raises(UserError) as error:
        prepare.ensure_prepared(*MNIST, str(tmp_path / "empty"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "empty").exists()


def digest(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_copy_from_a_prepared_data_dir(shared_tfds, tmp_path, capsys):
    target = tmp_path / "home" / "tensorflow_datasets"
    builder = prepare.ensure_prepared(*MNIST, str(target), copy_from=str(shared_tfds))
    assert builder.is_prepared()
    assert digest(target / "mnist" / "3.0.1") == digest(shared_tfds / "mnist" / "3.0.1")
    assert sorted(p.name for p in (target / "mnist").iterdir()) == ["3.0.1"]
    assert "copied mnist:3.0.1 from" in capsys.readouterr().out
    # Prepared now: a second call uses it and copies nothing.
    prepare.ensure_prepared(*MNIST, str(target), copy_from=str(shared_tfds))
    assert capsys.readouterr().out == ""


def test_an_incomplete_source_is_not_copied(mnist_copy, tmp_path):
    records(mnist_copy, "test").unlink()
    target = tmp_path / "target"
    with pytest.raises(UserError, match=r"cannot copy mnist:3.0.1 from .*: it is incomplete"):
        prepare.ensure_prepared(*MNIST, str(target), copy_from=str(mnist_copy))
    assert not (target / "mnist" / "3.0.1").exists()


def test_an_interrupted_copy_leaves_nothing_that_passes_for_the_dataset(
    shared_tfds, tmp_path, monkeypatch
):
    copied, copyfile = [], shutil.copyfile

    def copy_then_interrupt(source, target):
        if copied:
            raise KeyboardInterrupt
        copied.append(copyfile(source, target))

    monkeypatch.setattr(prepare.shutil, "copyfile", copy_then_interrupt)
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure_prepared(*MNIST, str(target), copy_from=str(shared_tfds))
    assert copied  # it was interrupted after one file
    assert list((target / "mnist").iterdir()) == []
    assert prepare.find(*MNIST, str(target)).state == "missing"


def test_a_disk_that_fills_during_a_copy_is_one_line_and_leaves_nothing(
    shared_tfds, tmp_path, monkeypatch
):
    copied, copyfile = [], shutil.copyfile

    def copy_then_fill(source, target):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        copied.append(copyfile(source, target))

    monkeypatch.setattr(prepare.shutil, "copyfile", copy_then_fill)
    target = tmp_path / "target"
    message = r"cannot copy mnist:3.0.1 into .*target \(No space left on device\): free disk"
    with pytest.raises(UserError, match=message):
        prepare.ensure_prepared(*MNIST, str(target), copy_from=str(shared_tfds))
    assert list((target / "mnist").iterdir()) == []


def test_a_copy_that_another_process_finished_first_uses_theirs(
    shared_tfds, tmp_path, monkeypatch, capsys
):
    # Two `make train-mnist COPY_DATA_FROM=...` at once: the second's rename found the first's
    # copy in place, and it said to free disk space.
    target = tmp_path / "target"
    copyfile, others = shutil.copyfile, []

    def another_process_copies_first(source, copied):
        if not others:
            others.append(theirs := target / "mnist" / "3.0.1")
            theirs.mkdir(parents=True)
            for original in (shared_tfds / "mnist" / "3.0.1").iterdir():
                copyfile(original, theirs / original.name)
        return copyfile(source, copied)

    monkeypatch.setattr(prepare.shutil, "copyfile", another_process_copies_first)
    prepare.ensure_prepared(*MNIST, str(target), copy_from=str(shared_tfds))
    assert "mnist:3.0.1 was put in" in capsys.readouterr().out
    assert sorted(p.name for p in (target / "mnist").iterdir()) == ["3.0.1"]  # no leftover
    assert digest(target / "mnist" / "3.0.1") == digest(shared_tfds / "mnist" / "3.0.1")


def test_a_data_dir_that_is_a_file_is_named_as_one(tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.write_text("not a folder")
    with pytest.raises(UserError, match=r"the data dir .*tfds is a file: pass --data-dir the"):
        prepare.ensure_prepared(*MNIST, str(data_dir))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_source_is_named_fast(monkeypatch):
    # The proxy the environment names is a closed port here, so nothing leaves this machine.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    url = "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz"
    assert prepare.unreachable(url, timeout=5) == (
        "storage.googleapis.com is not reachable (ProxyError)"
    )


def test_the_prepare_extra_names_tensorflow():
    requirements = prepare.extra_requirements("prepare")
    assert any(r.startswith("tensorflow") for r in requirements), requirements
