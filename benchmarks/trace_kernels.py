"""Where a traced step's device time goes: the kernels of a `jax.profiler` trace, summed.

    python benchmarks/trace_kernels.py TRACE.perfetto_trace.json.gz [--steps 6] [--top 30]

Reads the Perfetto file that `python -m alexnet_jax.bench --profile N` writes, keeps the events
on the device's streams, and prints each stream's busy time and, per kernel name, its time per
step (the total over `--steps`, the number of traced steps), its share of the compute stream's
busy time, and how many times it ran per step. The groups at the end sum kernels by what XLA
named them for (convolutions, pooling, reductions, ...), which is what to work on first.

A trace made on the CPU has no device process: there XLA runs the operations on the host's
threads, so their events (on the `tf_XLAEigen` and `tf_XLAPjRtCpuClient` threads, by the
operations' own names, without the executor's wrappers and waits) take the compute stream's
place, each thread a stream.
"""

import argparse
import collections
import gzip
import json

# Kernel name fragments and the group each belongs to, first match wins.
GROUPS = (
    # (Not a bare "conv": XLA's "convert" fusions would match it.)
    ("convolution (cuDNN)", ("xmma_fprop", "xmma_dgrad", "xmma_wgrad", "implicit_gemm", "cudnn")),
    ("matrix products", ("gemm", "nvjet", "sgemm", "dot")),
    ("collectives", ("all-reduce", "all-gather", "AllReduce", "AllGather")),
    ("max-pool backward (select and scatter)", ("scatter",)),
    ("max-pool forward (reduce window)", ("reduce_window",)),
    ("reductions (BatchNorm with its ReLU, forward and backward; norms; guard)", ("reduce",)),
    ("copies and conversions", ("memcpy", "convert", "transpose", "copy", "Memset")),
)


# On the CPU: the threads that run XLA's operations, and the events that wrap or wait for them.
CPU_THREADS = ("tf_XLAEigen", "tf_XLAPjRtCpuClient")
CPU_WRAPPERS = ("ThunkExecutor", "SlinkyThreadPool")


def group_of(name: str) -> str:
    for group, fragments in GROUPS:
        if any(fragment in name for fragment in fragments):
            return group
    return "other fusions"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="a perfetto_trace.json.gz of jax.profiler")
    parser.add_argument("--steps", type=int, default=6, help="steps traced (default 6)")
    parser.add_argument("--top", type=int, default=30, help="kernels listed (default 30)")
    args = parser.parse_args(argv)

    with gzip.open(args.trace) as f:
        document = json.load(f)
    events = document["traceEvents"] if isinstance(document, dict) else document
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"
    }
    on_device = any("/device" in name for name in processes.values())
    busy, kernels, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        stream = threads.get((e["pid"], e["tid"]), "?")
        if on_device:
            if "/device" not in processes.get(e["pid"], ""):
                continue
            computes = "Compute" in stream
        else:
            if not stream.startswith(CPU_THREADS) or e["name"].startswith(CPU_WRAPPERS):
                continue
            computes = True
        busy[stream] += e["dur"]
        if computes:
            kernels[e["name"]] += e["dur"]
            counts[e["name"]] += 1

    steps = args.steps
    print(
        "device streams, busy ms per step:" if on_device else "XLA's CPU threads, busy ms per step:"
    )
    for stream, microseconds in busy.most_common():
        print(f"  {microseconds / 1e3 / steps:8.3f}  {stream}")
    compute = sum(kernels.values())
    where = "the compute stream" if on_device else "those threads"
    print(f"\nkernels of {where} ({compute / 1e3 / steps:.3f} ms per step):")
    print("  ms/step  share  runs/step  kernel")
    for name, microseconds in kernels.most_common(args.top):
        share = microseconds / compute
        runs = counts[name] / steps
        print(f"  {microseconds / 1e3 / steps:7.3f}  {share:5.1%}  {runs:9.1f}  {name[:90]}")
    groups = collections.Counter()
    for name, microseconds in kernels.items():
        groups[group_of(name)] += microseconds
    print("\nby group:")
    for group, microseconds in groups.most_common():
        print(f"  {microseconds / 1e3 / steps:7.3f}  {microseconds / compute:5.1%}  {group}")


if __name__ == "__main__":
    main()
