"""What the collectives over a one-device mesh cost a CPU training step, not part of alexnet_jax.

    PYTHONPATH=. python benchmarks/results/cpu/one-device/collectives.py   (B=16 R=5 by default)

The same Flax model (conv11, pooling gradient by masks) in plain jitted SGD steps, batch B at
67x67 from CIFAR-10-shaped uint8 images, one device: "plain-masks" a plain jit; "nocoll-masks"
under shard_map over the one-device mesh with no collectives; "shard-masks" with the means of
the gradients, loss and BatchNorm statistics over the mesh (pmean); "shard-bnaxis-masks" with
BatchNorm's own axis_name instead; "vmap-bnaxis-masks" vmapped over a named axis of size 1;
"ours" the trainer's epoch (`run.train_epoch`, bench-peers' conv11-f32-k1). Epochs of 8 steps in
turn, R rounds; ms a step, median over the rounds.
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from alexnet_jax import bench
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.model import AlexNet
from alexnet_jax.parallel import make_mesh
from alexnet_jax.run import build, train_epoch

B, S, R, SIZE = int(os.environ.get("B", 16)), 8, int(os.environ.get("R", 5)), 67
mesh = make_mesh(jax.devices()[:1])
rng = jax.random.PRNGKey(0)
ds = synthetic_dataset("cifar10", train_size=B * S, test_size=64)
imgs = jnp.asarray(ds.train.images[: B * S]).reshape(S, B, 32, 32, 3)
labs = jnp.asarray(ds.train.labels[: B * S]).reshape(S, B)
tx = optax.sgd(0.01, 0.9, nesterov=True)


def make(pool, sharded, axis_bn, mode="shard"):
    model = AlexNet(stem="conv11", pool_backward=pool, axis_name="data" if axis_bn else None)
    variables = AlexNet(stem="conv11").init(
        {"params": rng, "dropout": rng}, jnp.zeros((B, SIZE, SIZE, 3)), train=False
    )
    carry = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]

    def step(params, stats, opt, images, labels, key):
        x = images.astype(jnp.float32) / 255
        x = jax.image.resize(x, (images.shape[0], SIZE, SIZE, 3), "bilinear")

        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd[
                "batch_stats"
            ]

        varying = (
            jax.lax.pcast(params, "data", to="varying") if sharded and mode == "shard" else params
        )
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(varying)
        if sharded and mode != "nocoll":
            g = jax.lax.pmean(g, "data")
            loss = jax.lax.pmean(loss, "data")
            if not axis_bn:
                stats = jax.lax.pmean(stats, "data")
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), stats, opt, loss

    if mode == "nocoll":
        f = jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P(), P(), P("data"), P("data"), P()),
            out_specs=P(),
            check_vma=False,
        )
    elif mode == "vmap":

        def f(params, stats, opt, images, labels, key):
            out = jax.vmap(
                step, in_axes=(None, None, None, 0, 0, None), out_axes=0, axis_name="data"
            )(params, stats, opt, images[None], labels[None], key)
            return jax.tree.map(lambda x: x[0], out)
    elif sharded:
        f = jax.shard_map(
            step, mesh=mesh, in_specs=(P(), P(), P(), P("data"), P("data"), P()), out_specs=P()
        )
    else:
        f = step
    f = jax.jit(f, donate_argnums=(0, 1, 2))

    def epoch(e):
        for i in range(S):
            *carry[:3], loss = f(*carry, imgs[i], labs[i], jax.random.fold_in(rng, e * S + i))
        jax.block_until_ready(carry[0])

    return epoch


config = bench.base_config("experiments/cifar10.py", 67, 64, [])
config.batch_size = B
config.update(bench.configuration("conv11-f32-k1"))
run = build(config, ds, jax.devices()[:1])
state = [run.fresh_state()]


def ours(e):
    state[0], _ = train_epoch(run, state[0], e, StopRequests())
    jax.block_until_ready(state[0])


variants = {
    "nocoll-masks": make("masks", True, False, "nocoll"),
    "vmap-bnaxis-masks": make("masks", True, True, "vmap"),
    "plain-masks": make("masks", False, False),
    "shard-masks": make("masks", True, False),
    "shard-bnaxis-masks": make("masks", True, True),
    "ours": ours,
}
for f in variants.values():
    f(0)
times = {n: [] for n in variants}
names = list(variants)
for r in range(R):
    order = names[r % len(names) :] + names[: r % len(names)]
    for n in order:
        t = time.perf_counter()
        variants[n](r + 1)
        times[n].append((time.perf_counter() - t) / S * 1000)
for n, ts in times.items():
    print(f"{n:20s} median {statistics.median(ts):6.1f} ms/step  all {[round(t) for t in ts]}")
