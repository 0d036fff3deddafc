import errno
import json
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax import seeds
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.data import Split
from alexnet_jax.errors import UserError
from alexnet_jax.locks import Lock, hold_output, output_lock_path
from alexnet_jax.run import build
from alexnet_jax.rundir import LOCK

from conftest import new_state, tiny_config


class Unread:
    """A dataset that fails the test when anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the data was read ({name}) before the seeds were checked")


def test_runs_each_seed_and_summarises_with_evidence(tiny_dataset, tmp_path, monkeypatch):
    # With test-time shifts of its own: evaluated single view, flipped, and over its 5 views.
    config = tiny_config(num_epochs=1, eval_shift=1)
    results = tmp_path / "results"
    summary = seeds.run_seeds(config, [3, 4], tmp_path / "runs", results, tiny_dataset)

    assert summary["seeds"] == [3, 4] and summary["epochs"] == 1
    for run in summary["runs"]:
        folder = results / f"seed{run['seed']}"
        saved = json.loads((folder / "config.json").read_text())
        assert saved["seed"] == run["seed"]
        single = json.loads((folder / "eval.json").read_text())
        flip = json.loads((folder / "eval_flip.json").read_text())
        own = json.loads((folder / "eval_views.json").read_text())
        assert (single["eval_flip"], flip["eval_flip"], own["eval_flip"]) == (False, True, False)
        assert (len(single["views"]), len(flip["views"]), len(own["views"])) == (1, 2, 5)
        assert own["eval_shift"] == 1
        assert single["accuracy"] == run["test_accuracy"]
        assert flip["accuracy"] == run["test_accuracy_flip"]
        assert own["accuracy"] == run["test_accuracy_views"]
        assert single["num_examples"] == len(tiny_dataset.test)
        for name in ("metrics.jsonl", "mnist_loss.png"):
            assert (folder / name).stat().st_size > 0
    accuracies = [run["test_accuracy"] for run in summary["runs"]]
    assert summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert json.loads((results / "summary.json").read_text()) == summary
    assert summary["views"]["test_accuracy_views"] == own["views"]
    table = (results / "summary.md").read_text()
    assert len(table.strip().splitlines()) == 5 and "mean ± std" in table
    assert "with the config's 5 views" in table

    # The same command again (as after an interruption) resumes the finished runs and writes
    # the same figures: the results folder holds only the seeds it names.
    again = seeds.run_seeds(config, [3, 4], tmp_path / "runs", results, tiny_dataset)
    assert [run["test_accuracy"] for run in again["runs"]] == accuracies
    assert json.loads((results / "summary.json").read_text()) == again

    # A copy that fails part way (a full disk) leaves the earlier file whole: the evidence was
    # copied in place, and half a metrics.jsonl was left.
    evidence = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    copyfile = shutil.copyfile

    def disk_fills(source, target, **kwargs):
        if Path(source).name != "metrics.jsonl":
            return copyfile(source, target, **kwargs)
        Path(target).write_bytes(b'{"epo')  # the first bytes, then no more room
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(shutil, "copyfile", disk_fills)
    with pytest.raises(UserError, match=r"could not write .*seed3/metrics.jsonl \(No space left"):
        seeds.run_seeds(config, [3, 4], tmp_path / "runs", results, tiny_dataset)
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == evidence
    assert not output_lock_path(results).exists()


def test_repeated_seeds_are_refused(tiny_dataset, tmp_path):
    with pytest.raises(seeds.UserError, match="repeats a seed"):
        seeds.run_seeds(tiny_config(), [1, 1], tmp_path, None, tiny_dataset)


def test_a_dataset_that_does_not_fit_is_refused_before_anything_is_placed(
    tiny_dataset, tmp_path, monkeypatch
):
    def placed(*args):
        raise AssertionError("the test split was placed on the devices")

    monkeypatch.setattr(seeds, "DeviceSplit", placed)
    grey = Split(tiny_dataset.test.images[..., 0], tiny_dataset.test.labels)  # no channel axis
    with pytest.raises(seeds.UserError, match=r"the test split .* images of shape \(32, 28, 28\)"):
        seeds.run_seeds(
            tiny_config(), [0, 1], tmp_path / "runs", None, replace(tiny_dataset, test=grey)
        )
    assert not (tmp_path / "runs").exists()


def test_seeds_differ_in_data_only_so_they_run_the_same_programs(tiny_dataset, cpu_devices):
    # What lets one compilation cache give seeds 1 and 2 the programs seed 0 compiled (the GPU
    # suite's accuracy stages): the seed reaches the programs as the state's keys, not as code.
    programs, kernels = [], []
    for seed in (0, 1):
        run = build(tiny_config(seed=seed, dropout_rate=0.5), tiny_dataset, cpu_devices[:1])
        state = run.fresh_state()
        training, evaluation = run.lower(state)
        programs.append([lowered.as_text() for lowered in [*training, evaluation]])
        kernels.append(np.asarray(state.params["conv2d"]["kernel"]))
    assert programs[0] == programs[1]
    assert not np.array_equal(*kernels)  # the seeds' states are not the same


def test_results_of_other_seeds_are_refused_before_anything_trains(tmp_path):
    # What `make accuracy-mnist SEEDS='3 4'` after the default seeds 0 1 2 found: seed folders
    # and a summary that the new summary would not cover.
    results = tmp_path / "results"
    for seed in (0, 1, 3):
        (results / f"seed{seed}").mkdir(parents=True)
    (results / "seed-notes").mkdir()  # not a seed's folder
    (results / "summary.json").write_text(json.dumps({"seeds": [0, 1, 2, 3]}))
    with pytest.raises(seeds.UserError) as refused:
        seeds.run_seeds(tiny_config(), [3, 4], tmp_path / "runs", results, Unread())
    message = str(refused.value)
    assert message == (
        f"--results {results} holds the results of seed(s) 0 1 2, which --seeds 3 4 leaves out, "
        "and its summary would not cover them: include them in --seeds or pass another "
        "--results (nothing was trained)"
    )
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_summary_in_results_is_refused_before_anything_trains(tmp_path):
    (tmp_path / "summary.json").write_text('{"seeds": [0, 1')
    with pytest.raises(seeds.UserError, match=r"summary.json cannot be read \(Expecting "):
        seeds.run_seeds(tiny_config(), [0, 1], tmp_path / "runs", tmp_path, Unread())
    assert (tmp_path / "summary.json").read_text() == '{"seeds": [0, 1'


def test_a_results_folder_in_use_by_another_seeds_run_is_refused_before_anything_trains(
    tmp_path,
):
    # Two seeds commands (other workdirs, one --results): summary.md, summary.json and each
    # seed's evidence came from different configs.
    results = tmp_path / "results"
    results.mkdir()
    (results / "summary.json").write_text('{"seeds": [0, 1]}')  # the first's, so far
    with hold_output(results, "seeds run", "--results"):
        with pytest.raises(UserError) as refused:
            seeds.run_seeds(tiny_config(), [0, 1], tmp_path / "runs", results, Unread())
    assert str(refused.value).startswith(
        f"{results} is in use by another seeds run (pid {os.getpid()} on host "
        f"{socket.gethostname()} since "
    )
    assert str(refused.value).endswith("wait for it to end, or pass another --results")
    assert [p.name for p in results.iterdir()] == ["summary.json"]
    assert (results / "summary.json").read_text() == '{"seeds": [0, 1]}'
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("problem", ["other settings", "held", "a run as workdir"])
def test_every_seeds_run_directory_is_checked_before_the_first_seed_trains(tmp_path, problem):
    # Seed 1's run directory is refused: seed 0 must not train first.
    workdir = tmp_path / "runs"
    run = workdir / "seed1" / "mnist"
    run.mkdir(parents=True)
    expected = {
        "other settings": r"seed1/mnist/checkpoints/1 holds a run with other settings "
        r"\(learning_rate: 0.5 -> 0.01\)",
        "held": r"seed1/mnist is in use by another training \(pid \d+ on host ",
        "a run as workdir": r"--workdir .*/seed1 is a run's folder",
    }[problem]
    holder = Lock(run / LOCK)
    if problem == "other settings":
        other = tiny_config(num_epochs=1, seed=1, learning_rate=0.5)
        saved = Checkpoints(run / "checkpoints")
        saved.save(1, new_state(other), other, [{"epoch": 1, "test_accuracy": 0.5}])
        saved.wait()
        saved.close()
    elif problem == "held":
        assert holder.acquire() is None  # another open file: refused as another process is
    else:  # seed 1's run was trained with --workdir runs/seed1/mnist
        run.rmdir()
        (run.parent / "checkpoints").mkdir()
    try:
        with pytest.raises(seeds.UserError, match=expected):
            seeds.run_seeds(tiny_config(num_epochs=1), [0, 1], workdir, None, Unread())
        if problem == "held":  # the check took nothing from the training that holds it
            assert holder.held and "pid" in (run / LOCK).read_text()
    finally:
        holder.release()
    assert not (workdir / "seed0").exists()


def test_a_seeds_run_trained_on_other_data_is_refused_before_the_first_seed_trains(
    tiny_dataset, tmp_path
):
    workdir = tmp_path / "runs"
    saved = Checkpoints(workdir / "seed1" / "mnist" / "checkpoints")
    config = tiny_config(num_epochs=1, seed=1)  # seed 1's own settings, trained on TFDS
    saved.save(1, new_state(config), config, [{"epoch": 1, "test_accuracy": 0.5}])
    saved.wait()
    saved.close()
    with pytest.raises(
        seeds.UserError,
        match=r"seed1/mnist/checkpoints/1 holds a run trained on TFDS mnist, and this run reads "
        "the in-memory Dataset 'mnist'",
    ):
        seeds.run_seeds(tiny_config(num_epochs=1), [0, 1], workdir, None, tiny_dataset)
    assert not (workdir / "seed0").exists()


def test_a_second_seeds_command_in_a_held_workdir_is_refused_before_reading_data(tmp_path):
    # Two `seeds` on one workdir (other --results): the second read the whole training split
    # before a seed's run lock, which the first had not taken yet, refused it.
    workdir = tmp_path / "runs"
    with hold_output(workdir, "seeds run", "--workdir"):
        with pytest.raises(UserError) as refused:
            seeds.run_seeds(tiny_config(), [0, 1], workdir, tmp_path / "results", Unread())
    assert str(refused.value).startswith(f"{workdir} is in use by another seeds run (pid ")
    assert str(refused.value).endswith("wait for it to end, or pass another --workdir")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, no lock left
