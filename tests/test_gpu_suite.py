"""The GPU suite (benchmarks/gpu_suite.py, `make gpu-suite`), run at its CPU sizes."""

import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from alexnet_jax import sweep

from conftest import ROOT

SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def load_suite():
    module_spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_a_failing_stage_is_recorded_the_next_one_runs_and_a_long_one_is_skipped(tmp_path):
    suite = load_suite()
    estimate = {name: sizes["cpu"] for name, sizes in suite.ESTIMATES.items()}
    # train-split needs more than the whole budget: skipped whatever the others take. env fits
    # if the failing stage before it (seconds) leaves it at least 30 s of room.
    budget = estimate["train-split"] + suite.RESERVE_SECONDS - 1
    assert budget - suite.RESERVE_SECONDS - estimate["env"] >= 30
    out, returned = tmp_path / "out", tmp_path / "returned"
    empty = tmp_path / "no-data"  # tta-mnist finds no MNIST there: a real failure, at once
    empty.mkdir()
    out.mkdir()  # with the figures of an earlier run, which must not be taken for this one's
    (out / "tta-mnist.json").write_text('{"reached": true}')
    done = subprocess.run(
        [
            sys.executable, SUITE, "--sizes", "cpu", "--budget", str(budget),
            "--stages", "tta-mnist,env,train-split", "--data-dir", empty,
            "--out", out, "--archive", returned / "suite.tar.gz",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # a stage failed

    summary = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == ["tta-mnist", "env", "train-split"]
    assert [s["status"] for s in stages.values()] == ["failed", "ok", "skipped"], summary
    assert summary["sizes"] == "cpu" and summary["budget_s"] == budget

    failed = stages["tta-mnist"]
    assert failed["error"].startswith("exit status 2: error: ") and "mnist" in failed["error"]
    assert "figures" not in failed and "partial_figures" not in failed
    assert (out / "tta-mnist.log").is_file()
    assert not (out / "tta-mnist.json").exists()

    # The stage after the failure ran and has its figures.
    env = stages["env"]["figures"]
    assert env["backend"] == "cpu" and env["devices"].endswith("x cpu")
    smi = (out / "nvidia-smi.txt").read_text()
    assert ("absent on this machine" in smi) == (shutil.which("nvidia-smi") is None)
    assert json.loads((out / "environment.json").read_text())["backend"] == "cpu"

    skipped = stages["train-split"]
    assert skipped["reason"].startswith(f"needs about {estimate['train-split']} s, ")
    assert "seconds" not in skipped and not (out / "train-split.log").exists()

    markdown = (out / "summary.md").read_text()
    for name, status in [("tta-mnist", "failed"), ("env", "ok"), ("train-split", "skipped")]:
        assert f"| {name} | {status} |" in markdown
    assert markdown in done.stdout  # printed last, for the GPU machine's output tail

    # What the GPU machine returns: the folder packed, and the summaries beside it.
    with tarfile.open(returned / "suite.tar.gz") as t:
        names = set(t.getnames())
    assert {"out/summary.json", "out/env.log", "out/tta-mnist.log", "out/environment.json"} <= names
    assert (returned / "summary.md").read_text() == markdown


def test_a_stage_stopped_at_its_time_limit_keeps_the_figures_it_wrote_before(tmp_path):
    suite = load_suite()
    context = suite.Context(tmp_path, tmp_path / "work", sizes="cpu", data_dir=None)
    written = tmp_path / "slow.json"
    # As bench does: its JSON after each measurement, then a long one that the limit stops.
    command = ["sh", "-c", f"echo '{{\"rows\": 1}}' > {written}; sleep 60"]
    stage = suite.Stage(
        "slow", "a stage that outlives its limit", lambda ctx: [command],
        lambda ctx, seconds: {"rows": json.loads(written.read_text())["rows"]},
    )  # fmt: skip
    record = suite.run_stage(stage, context, timeout=3)
    assert record["status"] == "failed" and record["error"].startswith("stopped after")
    assert record["partial_figures"] == {"rows": 1} and "figures" not in record
    summary = suite.Summary(tmp_path, 100, "cpu", None)
    summary.document["stages"].append({"name": "slow", **record})
    summary.document["elapsed_s"] = record["seconds"]
    assert (
        "| slow | failed |" in summary.markdown()
        and "its time limit; rows: 1 |" in summary.markdown()
    )


def test_the_archive_keeps_the_traces_apart(tmp_path):
    suite = load_suite()
    out = tmp_path / "out"
    (out / "profile" / "plugins").mkdir(parents=True)
    (out / "profile" / "plugins" / "host.xplane.pb").write_bytes(b"trace")
    for name in ("summary.json", "summary.md", "profile.json", "profile.log"):
        (out / name).write_text(name)
    suite.pack(out, tmp_path / "back" / "call1.tar.gz", profile=False)
    with tarfile.open(tmp_path / "back" / "call1.tar.gz") as t:
        assert sorted(t.getnames()) == [
            "out", "out/profile.json", "out/profile.log", "out/summary.json", "out/summary.md"
        ]  # fmt: skip
    assert not (tmp_path / "back" / "call1-profile.tar.gz").exists()
    suite.pack(out, tmp_path / "back" / "call1.tar.gz", profile=True)
    with tarfile.open(tmp_path / "back" / "call1-profile.tar.gz") as t:
        assert "profile/plugins/host.xplane.pb" in t.getnames()
    assert (tmp_path / "back" / "summary.md").read_text() == "summary.md"


def test_the_pool_stage_runs_each_pool_backward_of_the_model():
    from alexnet_jax.pooling import POOL_BACKWARDS

    suite = load_suite()
    assert suite.POOL_BACKWARDS == POOL_BACKWARDS
    context = suite.Context(ROOT / "out", ROOT / "work", sizes="accelerator", data_dir=None)
    commands = suite.BY_NAME["bench-pool"].commands(context)
    assert [c[c.index("--configs") + 1] for c in commands] == ["s2d-bf16-k1"] * 3
    assert [c[-3] for c in commands] == [f"--config.pool_backward={b}" for b in POOL_BACKWARDS]
    assert [c[-1] for c in commands] == [
        str(ROOT / "out" / f"bench-pool-{b}.json") for b in POOL_BACKWARDS
    ]


def test_the_autotune_stage_benches_the_fast_step_with_autotuning_off_and_the_callers_flags(
    tmp_path, monkeypatch
):
    suite = load_suite()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    context = suite.Context(tmp_path, tmp_path / "work", sizes="accelerator", data_dir=None)
    ((env, flags, *command),) = suite.BY_NAME["bench-autotune"].commands(context)
    assert env == "env"
    assert flags == "XLA_FLAGS=--xla_force_host_platform_device_count=2 " + suite.AUTOTUNE_OFF
    (bench,) = suite.BY_NAME["bench"].commands(context)
    # bench's first configuration and batch, so that the two compare in one call.
    assert command[command.index("--configs") + 1] == "s2d-bf16-k1"
    assert command[command.index("--batch-size") + 1] == "512"
    assert command[:4] == bench[:4] and command[-1] == str(tmp_path / "bench-autotune.json")

    # Its figures come from a bench that ran with the flag, and say so.
    row = {
        "name": "s2d-bf16-k1",
        "batch_size": 512,
        "train": {"images_per_second": 5.0, "compile_seconds": 2.0},
        "eval": {"images_per_second": 9.0},
        "memory": {"peak_bytes_in_use": None},
    }
    for xla_flags in ["", suite.AUTOTUNE_OFF]:
        document = {"xla_flags": xla_flags, "results": [row]}
        (tmp_path / "bench-autotune.json").write_text(json.dumps(document))
        if not xla_flags:
            with pytest.raises(RuntimeError, match="without --xla_gpu_autotune_level=0"):
                suite.autotune_figures(context, 1.0)
    figures = suite.autotune_figures(context, 1.0)
    assert figures["xla_flags"] == suite.AUTOTUNE_OFF
    assert figures["s2d-bf16-k1 b512"].startswith("5 train img/s, 9 eval img/s, compile 2.0 s")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar10_long", "mnist"])
def test_the_sweep_stages_run_variants_of_the_sweep_files_on_their_validation_split(dataset):
    suite = load_suite()
    sweep_file = ROOT / "experiments" / f"sweep_{dataset}.py"
    stage = "sweep-" + dataset.replace("_", "-")
    variants = sweep.load_variants(sweep_file)
    for sizes in ("accelerator", "cpu"):
        context = suite.Context(ROOT / "out", ROOT / "work", sizes, data_dir="/data")
        (command,) = suite.BY_NAME[stage].commands(context)
        command = list(map(str, command))
        assert command[command.index("--config") + 1] == f"experiments/sweep_{dataset}.py"
        assert command[command.index("--out") + 1] == str(ROOT / "out" / stage)
        assert "--config.download=false" in command and "/data" in command
        # --only takes every argument after it: each must be a variant of the file.
        only = command[command.index("--only") + 1 :] if "--only" in command else []
        assert all(name in variants for name in only), only
    if dataset == "cifar10":  # the levers at the recipe's full length, the plain recipe first
        (command,) = suite.BY_NAME["sweep-cifar10"].commands(
            suite.Context(ROOT / "out", ROOT / "work", "accelerator", None)
        )
        assert "--config.num_epochs=50" in command
        assert command[command.index("--only") + 1 :][:2] == ["base", "cutout16"]


def test_the_sweep_figures_name_the_best_variant_and_each_ones_accuracy(tmp_path):
    suite = load_suite()

    def row(name, accuracy, best, epoch):
        return {
            "name": name, "changes": {}, "epochs": 50, "validation_accuracy": accuracy,
            "best_validation_accuracy": best, "best_epoch": epoch, "wall_seconds": 61.2,
        }  # fmt: skip

    table = {"variants": [row("base", 0.9018, 0.9034, 45), row("cutout16", 0.9086, 0.9096, 47)]}
    (tmp_path / "sweep-cifar10").mkdir()
    (tmp_path / "sweep-cifar10" / sweep.JSON).write_text(json.dumps(table))
    context = suite.Context(tmp_path, tmp_path / "work", "accelerator", None)
    figures = suite.BY_NAME["sweep-cifar10"].figures(context, 130.0)
    assert figures["best"] == "cutout16: 90.86%"
    assert figures["base"] == "90.18% after 50 epoch(s) (best 90.34% at 45), 61 s"
    assert list(figures) == ["best", "base", "cutout16"]


def test_the_accuracy_stages_run_the_seeds_afresh_and_report_every_view(tmp_path):
    from alexnet_jax import seeds
    from alexnet_jax.config import load_config

    suite = load_suite()
    assert set(suite.ACCURACY_KEYS) == set(seeds.KEYS.values())
    context = suite.Context(tmp_path, tmp_path / "work", "accelerator", data_dir="/data")
    remove, command = suite.BY_NAME["accuracy-cifar10"].commands(context)
    workdir = tmp_path / "work" / "accuracy-cifar10"
    cache = tmp_path / "work" / "accuracy-cifar10-xla"
    # A run dir left from before would resume; the stage's compilation cache starts empty.
    assert remove == ["rm", "-rf", workdir, cache]
    command = list(map(str, command))
    assert command[:2] == ["env", f"{suite.CACHE_VARIABLE}={cache}"]
    assert command[command.index("--workdir") + 1] == str(workdir)
    assert command[command.index("--results") + 1] == str(tmp_path / "accuracy-cifar10")
    assert command[command.index("--config") + 1] == "experiments/cifar10.py"
    assert "--seeds" not in command and "--config.download=false" in command  # seeds 0, 1, 2

    # The figures of what seeds writes: a config with its own views (flip and shifts).
    config = load_config(str(ROOT / "experiments" / "cifar10.py"))
    config.eval_shift = 1
    runs = [
        {"seed": seed, "epochs": 50, "wall_seconds": 90.0 + seed, "test_accuracy": single,
         "test_accuracy_flip": single + 0.002, "test_accuracy_views": single + 0.004}
        for seed, single in [(0, 0.905), (1, 0.907), (2, 0.903)]
    ]  # fmt: skip
    (tmp_path / "accuracy-cifar10").mkdir()
    summary = seeds.summarize(config, runs)
    (tmp_path / "accuracy-cifar10" / "summary.json").write_text(json.dumps(summary))
    figures = suite.BY_NAME["accuracy-cifar10"].figures(context, 300.0)
    assert figures["seeds"] == "0 1 2" and figures["epochs"] == 50
    assert figures["test_accuracy"] == "90.50% ± 0.20%"
    assert figures["test_accuracy_flip"] == "90.70% ± 0.20%"
    assert figures["test_accuracy_views"] == "90.90% ± 0.20%"
    assert figures["wall_s per seed"] == 91.0


def test_the_suite_runs_without_a_compilation_cache_but_where_a_stage_names_one(tmp_path):
    suite = load_suite()
    log = tmp_path / "log"
    variables = (suite.CACHE_VARIABLE, suite.DATA_CACHE_VARIABLE)
    with log.open("w") as out, pytest.MonkeyPatch.context() as patch:
        for variable in variables:  # as a caller's environment may have them
            patch.setenv(variable, "/mine")
        command = ["sh", "-c", " ".join(f'echo "[${v}]";' for v in variables)]
        assert suite.run_command(command, out, 10) == 0
        named = ["env", *(f"{v}=/c" for v in variables), *command]
        assert suite.run_command(named, out, 10) == 0
    assert log.read_text().split() == ["[]", "[]", "[/c]", "[/c]"]


def test_the_warm_stage_runs_mnist_twice_on_one_fresh_cache_and_the_second_loads_it(
    tmp_path, shared_tfds
):
    # At CPU sizes, for real: two processes, the second loading what the first compiled.
    out, work = tmp_path / "out", tmp_path / "work"
    subprocess.run(
        [
            sys.executable, SUITE, "--out", out, "--workdir", work, "--sizes", "cpu",
            "--stages", "tta-mnist-warm", "--data-dir", shared_tfds, "--budget", "400",
        ],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    (stage,) = json.loads((out / "summary.json").read_text())["stages"]
    assert stage["status"] == "ok", stage
    figures = stage["figures"]
    cold, warm = (
        json.loads((out / f"tta-mnist-{run}.json").read_text()) for run in ("cold", "warm")
    )
    cache = str(work / "tta-mnist-warm-cache" / "xla")
    assert cold["compilation_cache"]["folder"] == warm["compilation_cache"]["folder"] == cache
    # The first run decoded MNIST's training and validation ranges into the data cache.
    assert len(list((work / "tta-mnist-warm-cache" / "data").glob("mnist-3.0.1-train-*.npz"))) == 2
    assert cold["compilation_cache"]["programs_loaded"] == 0
    assert cold["compilation_cache"]["programs_compiled"] >= 1
    assert figures["warm programs loaded"] == cold["compilation_cache"]["programs_compiled"]
    assert figures["warm programs compiled"] == 0
    # The executables loaded compute what the compiled ones did.
    assert [row["train_loss"] for row in warm["history"]] == [
        row["train_loss"] for row in cold["history"]
    ]
    assert figures["warm wall_s"] == round(warm["wall_seconds"], 1)
