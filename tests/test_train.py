import dataclasses
import errno
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_jax import artifacts, keys, rundir, step, train
from alexnet_jax.augmentation import Augmentation
from alexnet_jax.checkpoint import Checkpoints
from alexnet_jax.config import derive
from alexnet_jax.data import Dataset, Split, synthetic_dataset, training_data_from
from alexnet_jax.errors import UserError
from alexnet_jax.evaluation import DeviceSplit, evaluate, make_evaluator
from alexnet_jax.guarded_update import MomentumSGD
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.metric_log import read_steps
from alexnet_jax.parallel import DATA_AXIS, make_mesh
from alexnet_jax.pipeline import TrainPartitions
from alexnet_jax.run import NonFiniteLoss, build, run_epoch
from alexnet_jax.step import TrainCalls, all_finite, step_is_finite

from conftest import LEVERS, new_state, single_steps, tiny_config, train_until_interrupted


def one_step(config, dataset, devices):
    """Parameters and batch statistics after one train step on the first global batch."""
    states, metrics = single_steps(config, dataset, devices, 1)
    return (states[1].params, states[1].batch_stats), metrics[0]


def test_two_devices_step_equals_one_device_step(tiny_dataset, cpu_devices):
    # Augmentation on (its randomness is drawn per example, independent of the split), with
    # the affine transforms and mixing too; dropout off, because its masks are drawn per device.
    config = tiny_config(crop_padding=2, dropout_rate=0.0, batch_size=16, **LEVERS)
    one, metrics_one = one_step(config, tiny_dataset, cpu_devices[:1])
    two, metrics_two = one_step(config, tiny_dataset, cpu_devices[:2])
    # Float sums are reordered across devices: equal to float32 rounding, not bit for bit.
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert metrics_one["count"] == metrics_two["count"] == 16
    np.testing.assert_allclose(metrics_one["loss_sum"], metrics_two["loss_sum"], rtol=1e-5)
    # The step really changed the parameters (the comparison is not between two initial states).
    initial = new_state(config).params
    assert not np.allclose(initial["conv2d"]["kernel"], one[0]["conv2d"]["kernel"])


def step_input(augmentation, batch, devices, seed: int = 7):
    """The model's input and the targets that the step computes from `batch` on `devices`."""
    mesh = make_mesh(devices)
    augment_rng, _ = keys.augment_and_dropout_keys(jax.random.key(seed))

    def per_device(images, labels):
        local = labels.shape[0]
        first = jax.lax.axis_index(DATA_AXIS) * local
        example_keys = keys.example_keys(augment_rng, first, local)
        axis_name = step.device_axis(len(devices))
        return augmentation.apply(
            {"image": images, "label": labels}, example_keys, first, axis_name
        )

    spec = PartitionSpec(DATA_AXIS)
    mapped = jax.shard_map(
        per_device, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=len(devices) > 1
    )
    return jax.device_get(jax.jit(mapped)(batch["image"], batch["label"]))


def test_the_step_input_has_the_same_bits_on_one_and_two_devices(tiny_dataset, cpu_devices):
    # Every lever, the crop, flip and cutout on. Mixup's blend in float32 rounded otherwise in
    # the two programs on a Zen 4 (most likely a fused multiply-add in one of them and not in
    # the other), and the whole step's gradients then differed by more than rounding, until its
    # weight was put on a grid that makes it exact (mixing.exact_blend_weight; 2026-12-07).
    config = tiny_config(crop_padding=2, flip=True, cutout=6, batch_size=16, **LEVERS)
    augmentation = Augmentation.from_config(config, derive(config))
    batch = {"image": tiny_dataset.train.images[:16], "label": tiny_dataset.train.labels[:16]}
    (x_one, targets_one), (x_two, targets_two) = (
        step_input(augmentation, batch, devices) for devices in (cpu_devices[:1], cpu_devices[:2])
    )
    np.testing.assert_array_equal(x_one, x_two)
    np.testing.assert_array_equal(targets_one, targets_two)
    assert x_one.shape == (16, 67, 67, 1) and x_one.dtype == np.float32
    # Some examples were mixed (two classes in their targets), so the check covers the blend.
    assert np.sum(np.count_nonzero(targets_one, axis=1) == 2) >= 4


def test_one_device_steps_have_no_collectives_and_donation_keeps_their_bits(
    tiny_dataset, cpu_devices, monkeypatch
):
    # test_same_seed_same_result's config: its program is in the compilation cache.
    config = tiny_config(dropout_rate=0.5)
    devices = cpu_devices[:1]
    one_device = lowered_program(config, devices)
    assert "all_reduce" not in one_device and "all_gather" not in one_device
    assert "all_reduce" in lowered_program(config, cpu_devices[:2])  # what the check would see
    # SGD with momentum runs in place, on the CPU too; optax's AdamW does not there.
    assert step.donates_state(make_mesh(devices), config)
    assert not step.donates_state(make_mesh(devices), tiny_config(optimizer="adamw"))

    donated, _ = one_step(config, tiny_dataset, devices)
    monkeypatch.setattr(step, "donates_state", lambda mesh, config: False)
    kept, _ = one_step(config, tiny_dataset, devices)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(donated), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_written_out_sgd_gives_the_bits_of_optax_chain_in_the_step(
    tiny_dataset, cpu_devices, monkeypatch
):
    # Two steps (the momentum of the first moves the second), on one device: on two, XLA fuses
    # the means over devices into the update otherwise, and the bits differ by rounding.
    config = tiny_config(dropout_rate=0.5, ema_decay=0.9)
    written, _ = single_steps(config, tiny_dataset, cpu_devices[:1], 2)
    monkeypatch.setattr(MomentumSGD, "from_config", classmethod(lambda cls, config, steps: None))
    through_optax, _ = single_steps(config, tiny_dataset, cpu_devices[:1], 2)
    assert not np.array_equal(written[2].opt_state[1][0].trace["dense"]["kernel"], 0)
    for a, b in zip(jax.tree.leaves(written[2]), jax.tree.leaves(through_optax[2]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_gradients_kept_in_buffers_of_their_own_keep_the_bits_and_the_temporaries_small(
    tiny_dataset, cpu_devices, monkeypatch
):
    # test_same_seed_same_result's config: its program is in the compilation cache.
    config = tiny_config(dropout_rate=0.5)
    devices = cpu_devices[:1]
    assert step.keeps_gradients(make_mesh(devices))
    # Two steps: the second writes into the buffers the first returned.
    kept, _ = single_steps(config, tiny_dataset, devices, 2)
    plan = lowered(config, devices).compile().memory_analysis()
    monkeypatch.setattr(step, "keeps_gradients", lambda mesh: False)
    in_temporaries, _ = single_steps(config, tiny_dataset, devices, 2)
    plan_without = lowered(config, devices).compile().memory_analysis()
    for a, b in zip(jax.tree.leaves(kept[2]), jax.tree.leaves(in_temporaries[2]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The gradients (4 bytes a parameter) are written into the donated buffers, not temporaries.
    gradient_bytes = 4 * sum(p.size for p in jax.tree.leaves(kept[0].params))
    assert plan.alias_size_in_bytes - plan_without.alias_size_in_bytes == gradient_bytes
    assert plan.temp_size_in_bytes < plan_without.temp_size_in_bytes - gradient_bytes / 2


def test_gradient_buffers_taken_by_a_failed_call_are_made_anew(tiny_dataset, cpu_devices):
    config = tiny_config()
    mesh = make_mesh(cpu_devices[:1])
    partitions = TrainPartitions(training_data_from(tiny_dataset, config), mesh, config.batch_size)
    calls = TrainCalls(config, derive(config), mesh, partitions)
    state = new_state(config)
    buffers = calls.gradient_buffers(state)
    assert calls.gradient_buffers(state) is buffers
    jax.tree.leaves(buffers)[0].delete()  # as a donated buffer is, once dispatched
    fresh = calls.gradient_buffers(state)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(fresh))
    assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, state.params)


def lowered(config, devices):
    """The one-step training program of `config` on `devices`, lowered."""
    mesh = make_mesh(devices)
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    partitions = TrainPartitions(training_data_from(dataset, config), mesh, config.batch_size)
    calls = TrainCalls(config, derive(config), mesh, partitions)
    state = new_state(config)
    (program,) = calls.lower(state, partitions.epoch_orders(state.rng, 0))
    return program


def lowered_program(config, devices) -> str:
    """The text of the one-step training program of `config` on `devices`, lowered."""
    return lowered(config, devices).as_text()


def test_same_seed_same_result(tiny_dataset, cpu_devices):
    config = tiny_config(dropout_rate=0.5)
    a, _ = one_step(config, tiny_dataset, cpu_devices[:1])
    b, _ = one_step(config, tiny_dataset, cpu_devices[:1])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_batch_must_divide_by_device_count(tiny_dataset, cpu_devices, tmp_path):
    config = tiny_config(batch_size=15)
    with pytest.raises(UserError, match="batch_size=15 does not divide by the 2 devices"):
        train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:2])


@pytest.mark.parametrize(
    "change, message",
    [
        # Each used to fail deep in Flax (ScopeParamShapeError), train silently on all-zero
        # targets then fail in the evaluation's figures (IndexError), or train a whole epoch
        # and then fail in the evaluation.
        (
            lambda d: Split(np.repeat(d.images, 3, axis=-1), d.labels),
            "the train split of the Dataset 'mnist' has 3-channel images",
        ),
        (lambda d: Split(d.images, d.labels + 10), r"has labels 10\.\.19, .*: pass labels 0\.\.9$"),
        (lambda d: Split(d.images[:0], d.labels[:0]), "the train split .* holds no images"),
    ],
)
def test_a_dataset_that_does_not_fit_is_refused_before_anything_is_placed_leaving_no_folder(
    tiny_dataset, tmp_path, monkeypatch, change, message
):
    def placed(*args):
        raise AssertionError("the run was built: its data placed on the devices")

    monkeypatch.setattr(train, "build", placed)
    dataset = dataclasses.replace(tiny_dataset, train=change(tiny_dataset.train))
    with pytest.raises(UserError, match=message):
        train.train_and_evaluate(tiny_config(), tmp_path / "runs", dataset)
    assert list(tmp_path.iterdir()) == []  # neither runs/mnist, its lock nor its checkpoints/


def test_images_of_any_height_and_width_train_and_evaluate(cpu_devices):
    # What check_dataset lets through: 5x9 images, not square and far smaller than MNIST's,
    # through every lever, cutout, and the evaluation's mirrored and shifted views.
    rng = np.random.default_rng(0)

    def split(n):
        images = rng.integers(0, 256, (n, 5, 9, 1)).astype(np.uint8)
        return Split(images, rng.integers(0, 10, n).astype(np.int32))

    dataset = Dataset("small", split(32), split(8), tuple(map(str, range(10))))
    config = tiny_config(cutout=2, eval_flip=True, eval_shift=1, **LEVERS)
    run = build(config, dataset, cpu_devices[:1])
    with StopRequests() as stop:
        _, row, result = run_epoch(run, run.fresh_state(), 0, stop)
    assert np.isfinite(row["train_loss"]) and np.isfinite(result.loss)
    assert result.confusion.sum() == 8


def test_tiny_training_learns_and_writes_its_artifacts(tiny_dataset, cpu_devices, tmp_path, capsys):
    # With a validation split: the last 16 of the 64 training images are held out.
    config = tiny_config(num_epochs=3, learning_rate=0.02, validation_examples=16)
    trained = train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:2])
    history = trained.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Evaluated under the name "validation", on the held-out images and those alone: they give
    # the figures of the last epoch again.
    assert [row["eval_split"] for row in history] == ["validation"] * 3
    out = capsys.readouterr().out
    assert "| validation loss" in out
    # Once, from the first call after compilation: 3 steps an epoch, 3 epochs to go.
    (estimate,) = [line for line in out.splitlines() if "estimate" in line]
    assert re.fullmatch(
        r"estimate on the CPU: [\d.]+ m?s a step: about \d+ s an epoch and \d+ s for 3 "
        r"epochs",
        estimate,
    ), estimate
    held_out = Split(tiny_dataset.train.images[48:], tiny_dataset.train.labels[48:])
    mesh = make_mesh(cpu_devices[:2])
    result = evaluate(
        trained.state,
        DeviceSplit(held_out, config.eval_batch_size, mesh),
        make_evaluator(config, trained.derived, mesh),
        trained.derived.num_classes,
    )
    assert result.loss == pytest.approx(history[-1]["test_loss"], rel=1e-6)
    assert result.accuracy == history[-1]["test_accuracy"]
    # Never trained on: the devices hold exactly the first 48 images for training.
    partitions = build(config, tiny_dataset, cpu_devices[:2]).partitions
    on_devices = np.asarray(partitions.images).reshape(-1, *held_out.images.shape[1:])
    assert sorted(image.tobytes() for image in on_devices) == sorted(
        image.tobytes() for image in tiny_dataset.train.images[:48]
    )
    run = tmp_path / "mnist"
    assert artifacts.read_history(run) == history
    for name in ("mnist_loss.png", "mnist.png", "mnist_confusion.png", "config.json"):
        assert (run / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
        "3",
    ]


def test_interrupted_run_resumes_to_the_same_parameters(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch, capsys
):
    # With every part of the state a recipe can carry (the moving average too) and all the
    # randomness (dropout, crops, cutout, affine transforms, mixing); test_kill.py does the same
    # for the default recipe with real kills.
    config = tiny_config(
        num_epochs=3, dropout_rate=0.5, crop_padding=2, ema_decay=0.9, cutout=8, **LEVERS
    )
    devices = cpu_devices[:1]
    train.train_and_evaluate(config, tmp_path / "straight", tiny_dataset, devices)

    train_until_interrupted(config, tmp_path / "resumed", tiny_dataset, devices, 1, monkeypatch)
    history = train.train_and_evaluate(config, tmp_path / "resumed", tiny_dataset, devices).history
    assert len(history) == 3

    straight = load_final_state(config, tmp_path / "straight")
    resumed = load_final_state(config, tmp_path / "resumed")
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    straight_history = artifacts.read_history(tmp_path / "straight" / "mnist")
    assert straight_history[-1]["test_loss"] == history[-1]["test_loss"]
    # The step log goes on where it stopped: the same steps and losses as the straight run's,
    # in TensorBoard's reading too.
    straight_steps, resumed_steps = (
        [(row["step"], row["loss"]) for row in read_steps(tmp_path / run / "mnist")]
        for run in ("straight", "resumed")
    )
    assert resumed_steps == straight_steps and len(straight_steps) == 6
    straight_events, resumed_events = (
        [(e.step, e.value) for e in losses_in_tensorboard(tmp_path / run / "mnist")]
        for run in ("straight", "resumed")
    )
    assert resumed_events == straight_events
    assert [step for step, _ in straight_events] == [2, 4, 6, 8, 10, 12]
    printed = capsys.readouterr().out
    assert '"best" is chosen on the test split' in printed
    assert "was written by a run on" not in printed  # resumed on the devices it was written on


def test_resuming_on_another_device_count_says_it_is_not_bit_for_bit(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch, capsys
):
    config = tiny_config(num_epochs=2)
    train_until_interrupted(config, tmp_path, tiny_dataset, cpu_devices[:1], 1, monkeypatch)
    capsys.readouterr()
    history = train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:2]).history
    assert len(history) == 2
    printed = capsys.readouterr().out
    assert re.search(
        r"note: \S+/checkpoints/1 was written by a run on 1 device\(s\), and this one has 2: it "
        r"goes on as that run would up to rounding, not bit for bit",
        printed,
    ), printed


def losses_in_tensorboard(run_dir):
    return EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")


def load_final_state(config, workdir):
    checkpoints = Checkpoints(workdir / "mnist" / "checkpoints", read_only=True)
    mesh = make_mesh(jax.devices()[:1])
    state, _ = checkpoints.restore(checkpoints.latest_epoch(), new_state(config), mesh)
    return jax.device_get((state.params, state.batch_stats, state.opt_state, state.step, state.ema))


def test_resume_with_other_settings_is_refused(tiny_dataset, cpu_devices, tmp_path):
    config = tiny_config(num_epochs=1)
    train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1])
    changed = tiny_config(num_epochs=1, learning_rate=0.5)
    with pytest.raises(UserError, match=r"other settings \(learning_rate: 0.01 -> 0.5\)"):
        train.train_and_evaluate(changed, tmp_path, tiny_dataset, cpu_devices[:1])


def test_unwritable_workdir_fails_before_training(tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write to the run directory"):
        train.train_and_evaluate(tiny_config(), blocker, tiny_dataset)


def test_cli_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "experiments/quick.py", "--bogus"])
    assert exit_info.value.code == 2
    assert "unknown option --bogus" in capsys.readouterr().err


def poison(state):
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])  # written out (MomentumSGD), and optax
def test_a_non_finite_step_leaves_the_state_unchanged(tiny_dataset, cpu_devices, optimizer):
    config = tiny_config(optimizer=optimizer, ema_decay=0.9)
    (before, after), (metrics,) = single_steps(
        config, tiny_dataset, cpu_devices[:2], 1, state=poison(new_state(config))
    )
    assert int(metrics["nonfinite"]) == 1
    assert int(after.step) == int(before.step) + 1
    for a, b in zip(
        jax.tree.leaves((before.params, before.opt_state, before.batch_stats, before.ema)),
        jax.tree.leaves((after.params, after.opt_state, after.batch_stats, after.ema)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def poisoned_steps(monkeypatch, at_call: int, restore_after: bool):
    """Make the compiled step meet NaN parameters on call number `at_call` (1-based).

    With `restore_after`, the next calls get the unpoisoned state back, as if the fault had been
    transient (a bad batch); otherwise the NaNs stay.
    """
    dispatch, calls = TrainCalls.dispatch, [0]

    def poisoned(self, state, work):
        calls[0] += 1
        if calls[0] != at_call:
            return dispatch(self, state, work)
        clean = jax.device_get(state)
        new_state, metrics = dispatch(self, poison(state), work)
        if restore_after:
            sharding = jax.tree.leaves(state)[0].sharding
            new_state = jax.device_put(clean.replace(step=clean.step + 1), sharding)
        return new_state, metrics

    monkeypatch.setattr(TrainCalls, "dispatch", poisoned)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch
):
    config = tiny_config(num_epochs=3)  # 4 steps per epoch: call 6 is in epoch 2
    poisoned_steps(monkeypatch, at_call=6, restore_after=False)
    with pytest.raises(NonFiniteLoss, match=r"non-finite at step 6 \(epoch 2\)"):
        train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1])
    checkpoints = Checkpoints(tmp_path / "mnist" / "checkpoints", read_only=True)
    assert checkpoints.epochs() == [1]
    state, history = checkpoints.restore(1, new_state(config), make_mesh())
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))
    assert len(history) == 1


def test_non_finite_steps_can_be_skipped(tiny_dataset, cpu_devices, tmp_path, monkeypatch, capsys):
    config = tiny_config(num_epochs=2, nonfinite="skip")
    poisoned_steps(monkeypatch, at_call=3, restore_after=True)
    history = train.train_and_evaluate(config, tmp_path, tiny_dataset, cpu_devices[:1]).history
    assert [row["skipped_steps"] for row in history] == [1, 0]
    assert "skipped step 3" in capsys.readouterr().out
    assert np.isfinite(history[-1]["train_loss"])


def test_a_full_disk_is_refused_before_training(tiny_dataset, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: usage._replace(free=50 << 20))
    message = r"only 50 MiB free in .*, and a checkpoint of the model at image_size 67 needs"
    with pytest.raises(UserError, match=message):
        train.train_and_evaluate(tiny_config(), tmp_path, tiny_dataset)
    assert not (tmp_path / "mnist").exists()


def test_a_failing_save_keeps_the_previous_checkpoint(
    tiny_dataset, cpu_devices, tmp_path, monkeypatch
):
    save = ocp.CheckpointManager.save

    def disk_full_at_epoch_two(self, step, *args, **kwargs):
        if step == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_epoch_two)
    with pytest.raises(
        UserError,
        match=r"epoch 2 .* failed \(.*No space left on device\); epoch 1's checkpoint is intact",
    ):
        train.train_and_evaluate(tiny_config(num_epochs=3), tmp_path, tiny_dataset, cpu_devices[:1])
    checkpoints = Checkpoints(tmp_path / "mnist" / "checkpoints", read_only=True)
    assert checkpoints.epochs() == [1]
    checkpoints.restore(1, new_state(tiny_config()), make_mesh())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_non_finite_element_in_any_leaf(bad):
    tree = {"a": np.zeros((3, 4), np.float32), "b": np.full(5, 3e38, np.float32), "n": np.arange(3)}
    assert bool(jax.jit(all_finite)(tree))  # large but finite values (their sum overflows)
    for leaf, index in (("a", (2, 1)), ("b", (0,))):
        poisoned = {**tree, leaf: tree[leaf].copy()}
        poisoned[leaf][index] = bad
        assert not bool(jax.jit(all_finite)(poisoned))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_guard_finds_one_non_finite_element_in_the_loss_gradients_or_statistics(bad):
    grads = {"kernel": np.ones((3, 4), np.float32), "bias": np.full(5, -2.0, np.float32)}
    stats = {"mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}

    def guard(loss, grads, stats):
        return bool(jax.jit(step_is_finite)(loss, optax.tree.norm(grads, squared=True), stats))

    def poisoned(tree, leaf, index):
        copy = {**tree, leaf: tree[leaf].copy()}
        copy[leaf][index] = bad
        return copy

    assert guard(np.float32(2.3), grads, stats)
    assert not guard(np.float32(bad), grads, stats)
    assert not guard(np.float32(2.3), poisoned(grads, "kernel", (2, 1)), stats)
    assert not guard(np.float32(2.3), poisoned(grads, "bias", (0,)), stats)
    assert not guard(np.float32(2.3), grads, poisoned(stats, "var", (3,)))


def test_the_guard_counts_a_gradient_whose_norm_overflows_float32_as_non_finite():
    # Finite elements whose squared norm passes float32's largest number (~3.4e38): the step log
    # would show an infinite grad_norm, and the step is not applied (step_is_finite's docstring).
    stats = {"mean": np.zeros(4, np.float32)}
    just_finite = {"kernel": np.full(4, 9e18, np.float32)}  # squared norm 3.24e38
    too_large = {"kernel": np.full(4, 1e19, np.float32)}  # squared norm 4e38
    for grads, expected in ((just_finite, True), (too_large, False)):
        norm = optax.tree.norm(grads, squared=True)
        assert bool(jax.jit(step_is_finite)(np.float32(1.0), norm, stats)) == expected
