import jax
import numpy as np
import pytest

from alexnet_jax import tta
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.run import build_placed, run_epoch

from conftest import tiny_config


def test_training_stops_at_the_first_epoch_that_reaches_the_target(cpu_devices):
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    config = tiny_config(num_epochs=3, steps_per_dispatch=2)
    # A target the first epoch reaches whatever it learns: the run must stop there.
    result = tta.time_to_accuracy(config, 0.01, dataset, cpu_devices[:2])
    assert result["reached"] is True
    assert result["epochs"] == 1 and len(result["history"]) == 1 and result["max_epochs"] == 3
    row = result["history"][0]
    assert row["test_accuracy"] == result["test_accuracy"] >= 0.01
    assert np.isfinite(row["train_loss"])
    assert result["images_per_epoch"] == 64 and result["devices"] == 2
    parts = [result[k] for k in ("data_seconds", "compile_seconds", "training_seconds")]
    assert all(p > 0 for p in parts)
    data_parts = result["data_parts_seconds"]
    assert sorted(data_parts) == ["backend", "data", "state"]
    assert min(data_parts.values()) >= 0 and data_parts["data"] > 0 and data_parts["state"] > 0
    assert sum(data_parts.values()) <= result["data_seconds"]
    assert tta.data_parts_note(result) == (
        f"backend {data_parts['backend']:.1f} s, dataset {data_parts['data']:.1f} s, "
        f"state {data_parts['state']:.1f} s"
    )
    assert result["training_seconds"] == pytest.approx(row["train_seconds"] + row["eval_seconds"])
    assert sum(parts) <= result["wall_seconds"] == pytest.approx(row["wall_seconds"], abs=0.1)
    # The tests' persistent cache (conftest.py) gave or took the training program (of 2 steps)
    # and the evaluator, at least: each counted as loaded or compiled.
    cache = result["compilation_cache"]
    assert cache["folder"] == (jax.config.jax_compilation_cache_dir or None)
    used = cache["programs_loaded"] + cache["programs_compiled"]
    assert used >= 2 if cache["folder"] else used == 0
    used = {"folder": "f", "programs_loaded": 1, "programs_compiled": 2}
    assert tta.cache_note({"compilation_cache": used}) == (
        " (1 program(s) loaded from the compilation cache, 2 compiled)"
    )
    assert tta.cache_note({"compilation_cache": {"folder": None}}) == " (no compilation cache)"


def test_a_target_that_is_not_an_accuracy_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tta.main(["--config", "experiments/quick.py", "--target", "90"])
    assert exit_info.value.code == 2
    assert "--target 90.0 must be a test accuracy in (0, 1]" in capsys.readouterr().err


# JAX's event for each program it compiles or loads from the persistent cache (jax._src.dispatch).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_after_compiling_ahead_the_first_epoch_and_its_evaluation_compile_nothing(cpu_devices):
    # 4 steps in calls of 3: two training programs (3 steps, then 1) and the evaluator.
    config = tiny_config(num_epochs=1, steps_per_dispatch=3)
    run, state = build_placed(config, synthetic_dataset("mnist", 64, 32), cpu_devices[:2])
    compiled = {"ahead": [], "epoch": []}
    phase = "ahead"

    def listener(event, seconds, fun_name="", **_):
        if event == BACKEND_COMPILE_EVENT:
            compiled[phase].append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run.compile_ahead(state)
        phase = "epoch"
        _, row, _ = run_epoch(run, state, 0, StopRequests())
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled["ahead"].count("jit(per_device)") == 3
    assert compiled["epoch"] == []  # the epoch and its evaluation ran what was compiled ahead
    assert np.isfinite(row["test_loss"])
