import json

import numpy as np
import pytest
from test_profiling import trace_steps

from alexnet_jax import bench
from alexnet_jax.errors import UserError
from alexnet_jax.profiling import trace_files


def test_bench_runs_on_one_and_two_devices_and_writes_its_figures(
    tmp_path, cpu_devices, capsys, monkeypatch
):
    out = tmp_path / "bench.json"
    # What the file holds when each measurement starts: a bench stopped part way keeps the
    # measurements before.
    measure, written = bench.measure, []

    def recording(*args, **kwargs):
        written.append(json.loads(out.read_text())["results"] if out.exists() else None)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", recording)
    bench.main(
        [
            "--configs", "s2d-f32-k2",
            "--devices", "1,2",
            "--batch-size", "16",
            "--steps", "2",
            "--epochs", "1",
            "--eval-batch-size", "16",
            "--eval-batches", "1",
            "--out", str(out),
            "--profile", "2",
            "--profile-dir", str(tmp_path / "traces"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["backend"] == "cpu" and document["device_count"] >= 2
    assert document["dataset"] == "cifar10" and document["date"][:2] == "20"
    runs = document["results"]
    assert [(r["devices"], r["name"]) for r in runs] == [(1, "s2d-f32-k2"), (2, "s2d-f32-k2")]
    assert written == [None, runs[:1]]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    for r in runs:
        assert (r["batch_size"], r["image_size"], r["stem"]) == (16, 67, "space_to_depth")
        assert (r["compute_dtype"], r["steps_per_dispatch"], r["steps_per_epoch"]) == (
            "float32",
            2,
            2,
        )
        train, evaluation, memory = r["train"], r["eval"], r["memory"]
        # One warm-up epoch and one timed, each of 2 steps of 16 images.
        assert len(train["epoch_seconds"]) == 2 and train["images_per_epoch"] == 32
        assert train["programs"] == 1 and train["compile_seconds"] > 0
        rate = train["images_per_second"]
        assert rate == pytest.approx(32 / train["epoch_seconds"][1], rel=0.01)
        assert train["images_per_second_per_device"] == pytest.approx(rate / r["devices"], 0.01)
        assert np.isfinite(train["final_loss"])
        assert evaluation["images"] == 16 and evaluation["flip"] is True
        # XLA's plan for one step holds at least the parameters, gradients and momentum.
        assert memory["train_program_bytes"] > 3 * 4 * 17_000_000
        assert memory["peak_bytes_in_use"] is None  # the CPU keeps no allocator statistics
    # The state (parameters and momentum, 2 x 4 bytes x 21.6 M at 67x67) is donated to the step:
    # the new one takes its buffers, so one device plans less than two states (522 MB undonated).
    state_bytes = 2 * 4 * 21_600_000
    assert runs[0]["memory"]["train_program_bytes"] < 2 * state_bytes
    assert "s2d-f32-k2" in printed and f"wrote {out}" in printed
    # --profile: after a warm-up and a timed epoch of 2 steps, the third epoch's call of 2 steps
    # is traced, marked as the step numbered by its first global step (0-based).
    for r in runs:
        folder = tmp_path / "traces" / f"s2d-f32-k2-b16-d{r['devices']}"
        assert r["profile"]["steps"] == 2 and r["profile"]["dir"] == str(folder)
        assert [str(f.relative_to(folder)) for f in trace_files(folder)] == r["profile"]["files"]
        assert trace_steps(folder) == ["4"]
        assert f"traced 2 training steps of s2d-f32-k2: {folder}" in printed


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "s2d-bf16-k8",
            dict(stem="space_to_depth", compute_dtype="bfloat16", steps_per_dispatch=8),
        ),
        ("conv11-f32-k1", dict(stem="conv11", compute_dtype="float32", steps_per_dispatch=1)),
    ],
)
def test_configuration_names(name, expected):
    assert bench.configuration(name) == expected


@pytest.mark.parametrize(
    "name", ["s2d-bf16", "conv7-f32-k1", "s2d-f64-k1", "s2d-f32-k0", "s2d-f16-k1"]
)
def test_bad_configuration_names_say_the_form(name):
    with pytest.raises(UserError, match="is not <stem>-<dtype>-k<steps>"):
        bench.configuration(name)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--epochs", "0"], "--epochs=0 must be at least 1"),
        (["--epochs", "-1"], "--epochs=-1 must be at least 1"),
        (["--eval-batches", "0"], "--eval-batches=0 must be at least 1"),
        (["--steps", "-3"], "--steps=-3 must be at least 1"),
        (["--steps", "0"], "--steps=0 must be at least 1"),
        (["--eval-batch-size", "0"], "--eval-batch-size=0 must be at least 1"),
        (["--image-size", "0"], "--image-size=0 must be at least 1"),
        (["--profile", "-1"], "--profile=-1 must be at least 0"),
        (["--batch-size", "8,0"], "--batch-size=8,0: every value must be at least 1"),
        (["--batch-size", "eight"], "--batch-size 'eight' is not a comma-separated list"),
        (["--devices", "0"], "--devices=0: every value must be at least 1"),
        (["--profile", "2", "--profile-dir", "{file}"], "--profile-dir {file} is a file"),
    ],
)
def test_bad_option_values_are_refused_in_one_line_before_anything_runs(
    options, message, tmp_path, capsys, monkeypatch
):
    afile = tmp_path / "afile"
    afile.write_text("")
    options = [o.format(file=afile) for o in options]

    def nothing_may_run(*args, **kwargs):
        raise AssertionError("the bench ran before refusing its options")

    monkeypatch.setattr(bench, "run_all", nothing_may_run)
    monkeypatch.setattr(bench, "measure", nothing_may_run)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--configs", "conv11-f32-k1", "--batch-size", "8", *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(file=afile)}")
    assert err.count("\n") == 1 and "Traceback" not in err
