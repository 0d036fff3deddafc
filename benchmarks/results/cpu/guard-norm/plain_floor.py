"""A floor, not part of alexnet_jax: the same Flax model in the plainest jitted train step (no
shard_map, no guard, no metrics; optax.sgd with Nesterov momentum; uint8 -> /255 -> bilinear
resize to 67; the pooling's gradient by select-and-scatter, or POOL=masks) against the trainer's
epochs (bench-peers' conv11-f32-k1 configuration), in turn in one process: batch 32, epochs of 8
steps, ms a step. Run from the repository root:

    PYTHONPATH=. python benchmarks/results/cpu/guard-norm/plain_floor.py
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import bench
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.interrupt import StopRequests
from alexnet_jax.model import AlexNet
from alexnet_jax.run import build, train_epoch

B, S, R, SIZE = 32, 8, int(os.environ.get("R", 6)), 67
POOL = os.environ.get("POOL", "select_and_scatter")
model = AlexNet(stem="conv11", pool_backward=POOL)
rng = jax.random.PRNGKey(0)
x0 = jnp.zeros((B, SIZE, SIZE, 3))
variables = model.init({"params": rng, "dropout": rng}, x0, train=False)
tx = optax.sgd(0.01, 0.9, nesterov=True)
params, stats = variables["params"], variables["batch_stats"]
opt = tx.init(params)


def step(params, stats, opt, images, labels, key):
    x = images.astype(jnp.float32) / 255
    x = jax.image.resize(x, (B, SIZE, SIZE, 3), "bilinear")

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

    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), stats, opt, loss


step = jax.jit(step, donate_argnums=(0, 1, 2))
ds = synthetic_dataset("cifar10", train_size=B * S, test_size=1)
imgs = jnp.asarray(ds.train.images[: B * S]).reshape(S, B, 32, 32, 3)
labs = jnp.asarray(ds.train.labels[: B * S]).reshape(S, B)


def plain_epoch(e):
    global params, stats, opt
    for i in range(S):
        params, stats, opt, loss = step(
            params, stats, opt, imgs[i], labs[i], jax.random.fold_in(rng, e * S + i)
        )
    jax.block_until_ready(params)


config = bench.base_config("experiments/cifar10.py", 67, 64, [])
config.batch_size = B
config.update(bench.configuration("conv11-f32-k1"))
run = build(config, synthetic_dataset("cifar10", train_size=B * S, test_size=64), jax.devices()[:1])
state = run.fresh_state()


def ours_epoch(e):
    global state
    state, _ = train_epoch(run, state, e, StopRequests())
    jax.block_until_ready(state)


plain_epoch(0)
ours_epoch(0)
times = {"plain": [], "ours": []}
for r in range(R):
    for n in ["plain", "ours"] if r % 2 == 0 else ["ours", "plain"]:
        t = time.perf_counter()
        (plain_epoch if n == "plain" else ours_epoch)(r + 1)
        times[n].append((time.perf_counter() - t) / S * 1000)
for n, ts in times.items():
    m = statistics.median(ts)
    print(
        f"{n:8s} median {m:6.1f} ms/step ({B * 1000 / m:5.1f} img/s) all {[round(t) for t in ts]}"
    )
