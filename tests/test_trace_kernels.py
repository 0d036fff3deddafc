"""benchmarks/trace_kernels.py sums a Perfetto trace's device kernels per step and per group."""

import gzip
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import trace_kernels  # noqa: E402


def write_trace(path, kernels):
    """A trace in jax.profiler's Perfetto layout: a device process with a compute stream and a
    copy stream, and a host process whose events must be left out."""
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {
            "ph": "M",
            "name": "thread_name",
            "pid": 1,
            "tid": 7,
            "args": {"name": "Stream #14(Compute)"},
        },
        {
            "ph": "M",
            "name": "thread_name",
            "pid": 1,
            "tid": 8,
            "args": {"name": "Stream #15(MemcpyH2D)"},
        },
        {"ph": "X", "name": "MemcpyH2D", "pid": 1, "tid": 8, "ts": 0, "dur": 400},
        {"ph": "X", "name": "loop_convert_fusion", "pid": 2, "tid": 3, "ts": 0, "dur": 10**6},
    ]
    events += [
        {"ph": "X", "name": name, "pid": 1, "tid": 7, "ts": 0, "dur": dur} for name, dur in kernels
    ]
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_kernels_are_summed_per_step_and_grouped(tmp_path, capsys):
    trace = tmp_path / "perfetto_trace.json.gz"
    # Two steps: 6 ms of convolution, 2 ms of conversions (not convolutions), 2 ms of pooling.
    write_trace(
        trace,
        [
            ("sm90_xmma_fprop_implicit_gemm_bf16", 3000),
            ("sm90_xmma_fprop_implicit_gemm_bf16", 3000),
            ("loop_convert_fusion", 2000),
            ("input_scatter_fusion_1", 2000),
        ],
    )
    trace_kernels.main([str(trace), "--steps", "2"])
    out = capsys.readouterr().out
    assert "5.000  Stream #14(Compute)" in out
    assert "0.200  Stream #15(MemcpyH2D)" in out
    assert "(5.000 ms per step)" in out  # the host's event is not the device's
    assert "3.000  60.0%        1.0  sm90_xmma_fprop_implicit_gemm_bf16" in out
    groups = out.split("by group:")[1]
    assert "3.000  60.0%  convolution (cuDNN)" in groups
    assert "1.000  20.0%  copies and conversions" in groups
    assert "1.000  20.0%  max-pool backward (select and scatter)" in groups


def test_a_cpu_trace_sums_the_operations_on_xlas_threads(tmp_path, capsys):
    # On the CPU there is no device process: XLA's operations run on the host's threads, next
    # to the executor's wrappers and waits and the Python thread, which must be left out.
    threads = {3: "tf_XLAEigen/11", 4: "tf_XLAPjRtCpuClient/12", 5: "python"}
    events = [{"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    events += [
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": tid, "args": {"name": name}}
        for tid, name in threads.items()
    ]
    for tid, name, dur in [
        (3, "ThunkExecutor::Execute", 9000),
        (3, "SlinkyThreadPool::Await", 9000),
        (3, "ynn_fusion.21", 3000),
        (3, "all-reduce.4", 1000),
        (4, "copy.404", 2000),
        (4, "ThunkExecutor::Execute (wait for completion)", 9000),
        (5, "$run.py:236 drive", 10**6),
    ]:
        events.append({"ph": "X", "name": name, "pid": 2, "tid": tid, "ts": 0, "dur": dur})
    trace = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    trace_kernels.main([str(trace), "--steps", "2"])
    out = capsys.readouterr().out
    assert "XLA's CPU threads" in out
    assert "2.000  tf_XLAEigen/11" in out and "1.000  tf_XLAPjRtCpuClient/12" in out
    assert "python" not in out and "ThunkExecutor" not in out
    assert "(3.000 ms per step)" in out
    assert "1.500  50.0%        0.5  ynn_fusion.21" in out
    groups = out.split("by group:")[1]
    assert "0.500  16.7%  collectives" in groups
    assert "1.000  33.3%  copies and conversions" in groups
    assert "1.500  50.0%  other fusions" in groups
