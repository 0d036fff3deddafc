"""Where the time of our training step goes on a CPU, against Keras' compiled train step.

    PYTHONPATH=. python benchmarks/step_breakdown.py [--variants all] [--rounds 5] [--steps 3]
        [--image-size 67] [--batch-size 32] [--out f.json]

A measurement aid, not part of alexnet_jax. Compiles, in one process, the trainer's one-step
program of `make bench-peers`' configuration (experiments/cifar10.py, conv11, float32, one step
per call) and variants of it with one piece taken out or changed (`VARIANTS`), and Keras' jitted
`train_step` of the seed model (what `model.fit` runs, as `benchmarks/keras_peer.py` builds it).
Each program is called directly, `--steps` steps per timing, the programs in turn (rotated each
round) for `--rounds` rounds, so that load from other processes on the machine falls on all of
them alike; a figure is the median milliseconds per step over the rounds. The variants are a copy
of `step.train_step` with switches (`ablated_step`); the copy with every switch on is checked to
give the trainer's bits.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from alexnet_jax import bench, keys, mixing, preprocess
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.environment import environment
from alexnet_jax.guarded_update import MomentumSGD, apply_if_finite, keep_if
from alexnet_jax.parallel import DATA_AXIS
from alexnet_jax.pipeline import device_batch
from alexnet_jax.run import build
from alexnet_jax.state import make_model, update_ema
from alexnet_jax.step import (
    _over_devices,
    all_finite,
    cross_entropy,
    device_axis,
    donates_state,
    keeps_gradients,
    step_is_finite,
)
from alexnet_jax.trivial_augment import trivial_augment

# name -> (what it leaves out or changes, switches of `ablated_step` and `program`)
VARIANTS = {
    "trainer": ("the trainer's program (step.make_train_steps), as bench measures it", {}),
    "copy": ("the copy below with every piece on (must give the trainer's bits)", {}),
    "no-augment": ("no random crop or flip", {"augment": False}),
    "no-resize": (
        "32->67 by pixel repetition and zero padding instead of bilinear",
        {"resize": False},
    ),
    "no-guard": ("no finiteness check: the new state always", {"guard": False}),
    "guard-pass": (
        "the check as a pass of its own over the gradients (all_finite), not by their norm",
        {"guard": "pass"},
    ),
    "no-norms": ("no gradient norm in the metrics (the guard's sum kept)", {"norms": False}),
    "no-metrics": (
        "no loss sum, accuracy or gradient norm in the metrics",
        {"norms": False, "metrics": False},
    ),
    "no-smoothing": ("label smoothing 0", {"smoothing": False}),
    "no-dropout": ("dropout rate 0", {"dropout": "off"}),
    "dropout-rbg": ("dropout masks from an rbg key instead of threefry", {"dropout": "rbg"}),
    "no-decay": ("no weight decay in the optimiser chain", {"decay": False}),
    "optax-chain": (
        "the update through optax's chain, then the choice of old or new state (the trainer's "
        "before 2026-12-03)",
        {"optimizer": "optax"},
    ),
    "keras-sgd": (
        "Keras' SGD update written out (no optax chain, no decay)",
        {"optimizer": "keras"},
    ),
    "no-barrier": ("no optimisation barriers around the step", {"barrier": False}),
    "no-donate": ("the state not donated", {"donate": False}),
    "donate": (
        "the state donated (as the trainer with SGD, and on accelerators)",
        {"donate": True},
    ),
    "no-kept-gradients": (
        "the gradients in the call's temporaries, not in buffers kept from call to call",
        {"keep_gradients": False},
    ),
    "scan": (
        "the step in an unrolled lax.scan of length 1 (the trainer's before 2026-11-26)",
        {"scan": True},
    ),
    "serial-scheduler": (
        "XLA:CPU's concurrency-optimized scheduler off (same program, ops ordered otherwise)",
        {"xla": {"xla_cpu_enable_concurrency_optimized_scheduler": False}},
    ),
    "bare": (
        "all of: no augment, guard, norms, metrics, smoothing, decay; Keras' SGD",
        {
            "augment": False,
            "guard": False,
            "norms": False,
            "metrics": False,
            "smoothing": False,
            "decay": False,
            "optimizer": "keras",
        },
    ),
}
PROGRAM_SWITCHES = ("barrier", "donate", "scan", "keep_gradients", "xla")


def variant(name: str) -> tuple[str, dict]:
    """A variant by name; `a+b` is both changes (its switches merged)."""
    parts = [VARIANTS[part] for part in name.split("+")]
    return "; ".join(what for what, _ in parts), {k: v for _, sw in parts for k, v in sw.items()}


def ablated_step(
    state, batch, rng, *, derived, config, tx, schedule, apply_fn, switches, axis_name
):
    """`step.train_step` with pieces switched off (`switches`); all on, the same program.
    `axis_name` None: one device, no means or sums over devices (`step.device_axis`)."""
    on = lambda name, default=True: switches.get(name, default)  # noqa: E731
    mean, std = derived.mean, derived.std
    local = batch["label"].shape[0]
    device = jax.lax.axis_index(DATA_AXIS)
    augment_rng, dropout_rng = keys.augment_and_dropout_keys(rng)
    example_keys = keys.example_keys(augment_rng, device * local, local)
    fill = jnp.round(jnp.asarray(mean) * 255).astype(jnp.uint8)
    images = preprocess.random_affine(
        batch["image"], example_keys, preprocess.Affine.from_config(config)
    )
    images = trivial_augment(images, example_keys, config.trivial_augment)
    if on("augment"):
        images = preprocess.augment(
            images, example_keys, config.crop_padding, config.flip, config.cutout, fill
        )
    images, targets = mixing.mix_batch(
        images,
        batch["label"],
        example_keys,
        device * local,
        mixing.Mixing.from_config(config),
        derived.num_classes,
        axis_name,
    )
    if on("resize"):
        x = preprocess.to_model_input(images, config.image_size, mean, std, derived.dtype)
    else:
        x = jnp.repeat(jnp.repeat(images, 2, axis=1), 2, axis=2)
        extra = config.image_size - x.shape[1]
        x = jnp.pad(x, ((0, 0), (0, extra), (0, extra), (0, 0))).astype(jnp.float32) / 255
        x = ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(derived.dtype)
    dropout_key = keys.dropout_key(dropout_rng, device)
    if on("dropout", "threefry") == "rbg":
        data = jnp.concatenate([jax.random.key_data(k) for k in jax.random.split(dropout_key)])
        dropout_key = jax.random.wrap_key_data(data, impl="rbg")
    smoothing = config.label_smoothing if on("smoothing") else 0.0

    def loss_fn(params):
        logits, updates = apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        loss = cross_entropy(logits, targets, smoothing)
        return loss, (logits, updates["batch_stats"])

    params = (
        state.params if axis_name is None else jax.lax.pcast(state.params, axis_name, to="varying")
    )
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = _over_devices(jax.lax.pmean, grads, axis_name)
    grads_squared_norm = optax.tree.norm(grads, squared=True)
    global_loss = _over_devices(jax.lax.pmean, loss, axis_name)
    if on("guard") == "pass":
        finite = all_finite((global_loss, grads, batch_stats))
    elif on("guard"):
        finite = step_is_finite(global_loss, grads_squared_norm, batch_stats)
    else:
        finite = jnp.asarray(True)
    optimizer = on("optimizer", "trainer")
    if optimizer == "keras":
        updated = update_ema(
            keras_sgd(state, grads, batch_stats, config, schedule), config.ema_decay
        )
        new = keep_if(finite, updated, state).replace(step=updated.step)
        gradients = grads
    else:
        decay = config.weight_decay if on("decay") else 0.0
        sgd = (
            MomentumSGD(schedule, config.momentum, config.nesterov, decay)
            if optimizer == "trainer"
            else None
        )
        new, gradients = apply_if_finite(
            state.replace(tx=tx), grads, batch_stats, finite, config.ema_decay, sgd
        )
        new = new.replace(tx=state.tx)
    metrics = {"count": jnp.asarray(local, jnp.int32)}
    if on("metrics"):
        metrics["loss_sum"] = loss * local
        metrics["correct"] = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    metrics = _over_devices(jax.lax.psum, metrics, axis_name)
    if on("norms"):
        metrics["grad_norm"] = jnp.sqrt(grads_squared_norm)
    return new, {**metrics, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}, gradients


def keras_sgd(state, grads, batch_stats, config, schedule):
    """Keras' SGD with Nesterov momentum (keras/src/optimizers/sgd.py), on optax's momentum
    buffer: m <- momentum m - lr g; p <- p + momentum m - lr g. Its cost, not its bits."""
    lr = schedule(state.step)
    momentum = jnp.float32(config.momentum)
    trace = state.opt_state[1][0].trace  # optax.sgd's TraceState inside the chain
    new_trace = jax.tree.map(lambda m, g: m * momentum - g * lr, trace, grads)
    params = jax.tree.map(
        lambda p, m, g: p + (m * momentum - g * lr), state.params, new_trace, grads
    )
    opt_state = (state.opt_state[0], (optax.TraceState(trace=new_trace), *state.opt_state[1][1:]))
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
    )


def variant_tx(config, steps_per_epoch: int, switches):
    """The optimiser of a variant: the config's, or without its weight decay."""
    from alexnet_jax.state import learning_rate_schedule, make_optimizer

    schedule = learning_rate_schedule(config, steps_per_epoch)
    if switches.get("decay", True):
        tx = make_optimizer(config, steps_per_epoch)
    else:
        tx = optax.chain(
            optax.add_decayed_weights(0.0, mask=lambda p: jax.tree.map(lambda x: False, p)),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
        )
    return tx, schedule


def program(run, body, *, barrier=True, donate=None, scan=False, keep_gradients=None):
    """One step per call, as `step.make_train_steps` compiles it (count 1): (state, gradients,
    images, labels, orders, first) -> (state, metrics, gradients). `donate` and
    `keep_gradients` None: as the trainer does (`step.donates_state`, `step.keeps_gradients`);
    with `scan`, the gradients are not kept."""
    if donate is None:
        donate = donates_state(run.mesh, run.config)
    if keep_gradients is None:
        keep_gradients = keeps_gradients(run.mesh)
    keep_gradients = keep_gradients and not scan  # (the scan's body returns none)
    size = run.partitions.per_device_batch

    def per_device(state, gradients, images, labels, orders, first):
        def one(state, i):
            if barrier:
                state = jax.lax.optimization_barrier(state)
            batch = device_batch(images, labels, orders, first + i, size=size)
            state, metrics, gradients = body(state, batch, keys.step_key(state.rng, state.step))
            out = (state, metrics)
            return (jax.lax.optimization_barrier(out) if barrier else out), gradients

        if scan:
            steps = jnp.arange(1, dtype=jnp.int32)
            state, metrics = jax.lax.scan(lambda s, i: one(s, i)[0], state, steps, unroll=True)
            return state, metrics, None
        (state, metrics), gradients = one(state, jnp.int32(0))
        metrics = jax.tree.map(lambda m: m[None], metrics)
        return state, metrics, gradients if keep_gradients else None

    sharded = jax.shard_map(
        per_device,
        mesh=run.mesh,
        in_specs=(PartitionSpec(),) * 2 + (PartitionSpec(DATA_AXIS),) * 3 + (PartitionSpec(),),
        out_specs=(PartitionSpec(),) * 3,
        check_vma=device_axis(run.mesh.devices.size) is not None,
    )
    jitted = jax.jit(sharded, donate_argnums=(0, 1) if donate else (1,), keep_unused=True)
    return jitted, keep_gradients


def copy_state(state):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


class Ours:
    """A variant of our step: a compiled program and its own state."""

    def __init__(self, run, state, name):
        switches = variant(name)[1]
        self.state = copy_state(state)
        if name == "trainer":
            self.call = lambda s, orders: run.calls.dispatch(s, (orders, 0, 1))
            (lowered,) = run.calls.lower(self.state, run.orders)
            self.compiled = lowered.compile()
            return
        config, derived = run.config, run.derived
        tx, schedule = variant_tx(config, run.steps_per_epoch, switches)
        if switches.get("decay", True) is False:
            self.state = self.state.replace(opt_state=tx.init(self.state.params))
        model_config = config.copy_and_resolve_references()
        if switches.get("dropout") == "off":
            model_config.dropout_rate = 0.0
        axis_name = device_axis(run.mesh.devices.size)
        apply_fn = make_model(model_config, derived, axis_name).apply
        step_switches = {k: v for k, v in switches.items() if k not in PROGRAM_SWITCHES}
        body = functools.partial(
            ablated_step,
            derived=derived,
            config=config,
            tx=tx,
            schedule=schedule,
            apply_fn=apply_fn,
            switches=step_switches,
            axis_name=axis_name,
        )
        kwargs = {k: v for k, v in switches.items() if k in PROGRAM_SWITCHES and k != "xla"}
        jitted, keep_gradients = program(run, body, **kwargs)
        p = run.partitions
        arguments = (p.images, p.labels, run.orders, jnp.asarray(0, jnp.int32))
        self.gradients = jax.tree.map(jnp.zeros_like, self.state.params) if keep_gradients else None
        lowered = jitted.lower(self.state, self.gradients, *arguments)
        self.compiled = lowered.compile(compiler_options=switches.get("xla"))

        def call(state, orders):
            state, metrics, self.gradients = self.compiled(state, self.gradients, *arguments)
            return state, metrics

        self.call = call

    def steps(self, run, n: int) -> None:
        for _ in range(n):
            self.state, metrics = self.call(self.state, run.orders)
        jax.block_until_ready((self.state, metrics))


class Keras:
    """Keras' jitted `train_step` of the seed model, as `model.fit` calls it on each batch."""

    def __init__(self, image_size: int, batch_size: int):
        sys.path.insert(0, str(Path(__file__).parent))
        import keras_peer

        keras = keras_peer.keras
        keras.utils.set_random_seed(0)
        dataset = synthetic_dataset("cifar10", train_size=batch_size, test_size=1)
        model = keras_peer.seed_model(image_size, dataset.train.images.shape[1:])
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        x, y = dataset.train.images, dataset.train.labels
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # builds every variable
        self.state = model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            optimizer_variables=True,
            metrics_variables=True,
        )
        self.data = (jnp.asarray(x), jnp.asarray(y))
        jitted = jax.jit(model.train_step, donate_argnums=0)
        self.compiled = jitted.lower(self.state, self.data).compile()

    def steps(self, run, n: int) -> None:
        for _ in range(n):
            logs, self.state = self.compiled(self.state, self.data)
        jax.block_until_ready((self.state, logs))


def bits_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(la) == len(lb) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb, strict=True)
    )


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cost(compiled) -> dict:
    try:
        analysis = compiled.cost_analysis()
    except Exception:
        return {}
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {k: analysis.get(k) for k in ("flops", "bytes accessed")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="all", help="comma-separated names (a+b: both changes), or all"
    )
    parser.add_argument("--keras", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--image-size", type=int, default=67)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    loads = [load()]
    print(loads[0], flush=True)

    config = bench.base_config("experiments/cifar10.py", args.image_size, 64, [])
    config.batch_size = args.batch_size
    config.update(bench.configuration("conv11-f32-k1"))
    dataset = synthetic_dataset("cifar10", train_size=args.batch_size * 4, test_size=64)
    run = build(config, dataset, jax.devices()[:1])
    state = run.fresh_state()
    run.orders = run.partitions.epoch_orders(state.rng, 0)

    contenders, compile_seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        contenders[name] = Ours(run, state, name)
        compile_seconds[name] = round(time.perf_counter() - start, 2)
        print(f"compiled {name} in {compile_seconds[name]} s", file=sys.stderr, flush=True)
    if args.keras:
        start = time.perf_counter()
        contenders["keras"] = Keras(args.image_size, args.batch_size)
        compile_seconds["keras"] = round(time.perf_counter() - start, 2)

    faithful = None
    if "trainer" in contenders and "copy" in contenders:
        a, b = contenders["trainer"], contenders["copy"]
        a.steps(run, 1)
        b.steps(run, 1)
        faithful = bits_equal(a.state, b.state)
        print(f"copy gives the trainer's bits: {faithful}", flush=True)

    for c in contenders.values():
        c.steps(run, 1)  # warm
    timings = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(args.rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            start = time.perf_counter()
            contenders[name].steps(run, args.steps)
            timings[name].append(1000 * (time.perf_counter() - start) / args.steps)
        loads.append(load())
        print(f"round {r + 1}/{args.rounds}: {loads[-1]}", file=sys.stderr, flush=True)

    base = statistics.median(timings["trainer"]) if "trainer" in timings else None
    rows = []
    for name in contenders:
        ms = statistics.median(timings[name])
        rows.append(
            {
                "name": name,
                "what": variant(name)[0] if name != "keras" else "Keras model.train_step",
                "median_ms": round(ms, 2),
                "min_ms": round(min(timings[name]), 2),
                "ms": [round(t, 2) for t in timings[name]],
                "saved_ms": round(base - ms, 2) if base else None,
                "images_per_second": round(args.batch_size / ms * 1000, 1),
                "compile_seconds": compile_seconds[name],
                **cost(contenders[name].compiled),
            }
        )
    header = f"{'variant':<14}{'median ms':>10}{'min ms':>8}{'saved':>8}{'img/s':>8}  what"
    print(header)
    print("-" * len(header))
    for r in rows:
        saved = "" if r["saved_ms"] is None else f"{r['saved_ms']:>8.1f}"
        print(
            f"{r['name']:<14}{r['median_ms']:>10.1f}{r['min_ms']:>8.1f}{saved:>8}"
            f"{r['images_per_second']:>8.1f}  {r['what']}"
        )
    document = {
        **environment(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_timing": args.steps,
        "copy_gives_trainer_bits": faithful,
        "load": loads,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "variants": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
