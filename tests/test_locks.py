"""One writer at a time (alexnet_jax.locks): the lock, and a command's hold on its output."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_jax.errors import UserError
from alexnet_jax.locks import Lock, hold_output, output_lock_path

from conftest import ROOT


def test_a_lock_file_removed_by_its_holder_as_it_is_taken_is_not_the_lock(tmp_path):
    path = tmp_path / "train.lock"
    first, second = Lock(path), Lock(path)
    assert first.acquire() is None
    late = os.open(path, os.O_RDWR)  # opened just before the holder removes it and lets go
    first.release()
    assert not path.exists()
    try:
        assert not second.names(late)  # a lock on it would lock nothing the path names
        assert second.acquire() is None and second.names(second._fd)
        assert "pid" in Lock.holder(path)
    finally:
        os.close(late)
        second.release()


def test_a_second_writer_of_an_output_is_refused_in_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with hold_output(out, "sweep", "--out"):
        # Another spelling of the same folder: the same lock.
        os.symlink(tmp_path, tmp_path / "link")
        for spelling in (out, tmp_path / "link" / "out", os.path.relpath(out)):
            with pytest.raises(UserError) as refused:
                with hold_output(spelling, "export", "--out"):
                    pytest.fail("a second writer held the output")
            assert str(refused.value) == (
                f"{spelling} is in use by another sweep (pid {os.getpid()} on host "
                f"{socket.gethostname()} since {Lock.holder(output_lock_path(out))[-19:]}): "
                "wait for it to end, or pass another --out"
            )
        with hold_output(tmp_path / "other", "export", "--out"):  # another output: free
            pass
    os.unlink(tmp_path / "link")
    assert list(tmp_path.iterdir()) == []  # no lock file, and the unused folder removed


def test_holding_an_output_leaves_nothing_but_what_the_command_wrote(tmp_path):
    # Folders made for the lock and the output are removed when nothing was written in them.
    with pytest.raises(UserError, match="the data is missing"):
        with hold_output(tmp_path / "a" / "b" / "out", "sweep", "--out"):
            raise UserError("the data is missing")
    assert list(tmp_path.iterdir()) == []

    # A folder that was there stays, empty; what a command wrote stays, and its folders.
    (tmp_path / "empty").mkdir()
    with hold_output(tmp_path / "empty", "sweep", "--out"):
        pass
    with hold_output(tmp_path / "new" / "m.keras", "keras_io export", "--out"):
        (tmp_path / "new" / "m.keras").write_text("a model")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "empty",
        "new",
        "new/m.keras",
    ]


def test_an_output_in_a_folder_that_cannot_be_written_is_written_unlocked(
    tmp_path, monkeypatch, capsys
):
    # `--out .` where the folder above refuses writing: no lock file can go beside the output.
    out = tmp_path / "out"
    out.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and access(p, mode))
    with hold_output(out, "sweep", "--out"):
        (out / "sweep.json").write_text("{}")
    assert capsys.readouterr().out == (
        f"warning: cannot lock {out} ({tmp_path} cannot be written): a second sweep into it "
        "would not be refused\n"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "sweep.json"]


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "results"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from alexnet_jax.locks import hold_output\n"
            "with hold_output(sys.argv[1], 'seeds run', '--results'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=rf"in use by another seeds run \(pid {holder.pid} "):
            with hold_output(out, "seeds run", "--results"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert output_lock_path(out).exists()  # a killed holder removes nothing
    with hold_output(out, "seeds run", "--results"):
        assert f"pid {os.getpid()} " in output_lock_path(out).read_text()
    assert list(tmp_path.iterdir()) == []
