"""Output paths are refused before the work that would fill them (alexnet_jax.outputs)."""

import errno
import json
import threading

import pytest

from alexnet_jax import eval as eval_command
from alexnet_jax import export, outputs, seeds, tta
from alexnet_jax.errors import UserError


def test_a_file_in_folders_yet_to_be_made_passes_and_nothing_is_made(tmp_path, monkeypatch):
    outputs.check_file(str(tmp_path / "a" / "b" / "result.json"), "--json")
    monkeypatch.chdir(tmp_path)
    for nothing_to_write in (None, "", "-"):  # no option, or stdout, as write_json takes them
        outputs.check_file(nothing_to_write, "--json")
    outputs.check_folder(str(tmp_path / "c" / "d"), "--out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "check, kind, message",
    [
        (outputs.check_file, "folder", r"--json .* is a folder: name a file, such as"),
        (outputs.check_folder, "file", r"--json .* is a file: name a folder"),
        (outputs.check_file, "under a file", r"lies under .*, which is a file"),
        (outputs.check_folder, "under a file", r"lies under .*, which is a file"),
        (outputs.check_file, "refused", r"cannot be written \(/proc: .*\): name another place"),
        (outputs.check_folder, "refused", r"cannot be written \(/proc: .*\): name another place"),
    ],
)
def test_what_cannot_be_written_is_refused_in_one_line(check, kind, message, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    path = {
        "folder": tmp_path / "folder",
        "file": tmp_path / "file",
        "under a file": tmp_path / "file" / "out" / "x.json",
        "refused": "/proc/alexnet_jax_out/x",  # refused even to root
    }[kind]
    with pytest.raises(UserError, match=message):
        check(str(path), "--json")


@pytest.mark.parametrize(
    "main, argv",
    [
        (eval_command.main, ["--ckpt", "no-such-run", "--json", "{folder}"]),
        (tta.main, ["--config", "experiments/quick.py", "--out", "{folder}"]),
        (seeds.main, ["--config", "experiments/quick.py", "--results", "{file}"]),
        (export.main, ["--ckpt", "no-such-run", "--out", "{file}"]),
    ],
)
def test_commands_refuse_their_output_path_before_any_work(main, argv, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    argv = [a.format(folder=tmp_path / "folder", file=tmp_path / "file") for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    # Refused for the path, before the checkpoint (which does not exist) or the data is read.
    assert error.startswith("error: --") and "no-such-run" not in error, error


def test_a_disk_that_fills_as_json_is_written_keeps_the_old_file_and_leaves_no_partial(
    tmp_path, monkeypatch
):
    target = tmp_path / "result.json"
    outputs.write_json({"run": 1}, str(target), quiet=True)
    write_text = type(target).write_text

    def full(path, *args, **kwargs):
        write_text(path, "{", *args[1:], **kwargs)  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(type(target), "write_text", full)
    full_disk = r"could not write .*result.json \(No space left on device\)"
    with pytest.raises(UserError, match=full_disk):
        outputs.write_json({"run": 2}, str(target), quiet=True)
    assert json.loads(target.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_two_writers_of_one_file_each_put_a_whole_file_in_place(tmp_path):
    # Two `report`s of one run, or two `eval --json x.json`: they shared one temporary name, so
    # one writer's rename failed (a wrong "make that place writable") or put a mix in place.
    path = tmp_path / "out.json"
    documents = [{"writer": 0, "pad": "x" * 5000}, {"writer": 1}]
    failures = []

    def write(document):
        for _ in range(300):
            try:
                outputs.write_json(document, str(path), quiet=True)
            except UserError as e:
                failures.append(str(e))

    writers = [threading.Thread(target=write, args=(d,)) for d in documents]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        try:
            json.loads(path.read_text())
        except FileNotFoundError:
            pass  # before the first rename
        except ValueError as e:
            failures.append(f"a reader saw half a file: {e}")
    for writer in writers:
        writer.join()
    assert failures == []
    assert json.loads(path.read_text()) in documents
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("hard_links", [True, False])
def test_publishing_a_new_file_never_replaces_one_that_is_there(hard_links, tmp_path, monkeypatch):
    if not hard_links:  # a filesystem without them (FAT): a check, then a rename

        def refused(*_):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(outputs.os, "link", refused)
    first, second = tmp_path / ".m.1.partial", tmp_path / ".m.2.partial"
    first.write_text("first")
    second.write_text("second")
    target = tmp_path / "m.keras"
    outputs.publish_new(first, target)
    with pytest.raises(FileExistsError):
        outputs.publish_new(second, target)
    assert target.read_text() == "first"
