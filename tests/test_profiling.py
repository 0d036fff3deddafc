import gzip
import json

from alexnet_jax import profiling


def trace_steps(folder) -> list[str]:
    """The step numbers marked in a trace folder's Perfetto trace, which must be there with the
    XPlane file that TensorBoard reads."""
    files = profiling.trace_files(folder)
    assert {f.suffix for f in files} >= {".pb", ".gz"}, files
    (perfetto,) = [f for f in files if f.name == "perfetto_trace.json.gz"]
    events = json.loads(gzip.decompress(perfetto.read_bytes()))["traceEvents"]
    return [e["args"]["step_num"] for e in events if e.get("name") == "train"]


def test_only_process_zero_writes_a_trace(tmp_path):
    with profiling.trace(tmp_path / "p1", process_index=1) as folder:
        assert folder is None
    assert not (tmp_path / "p1").exists()
    with profiling.trace(tmp_path / "p0", process_index=0) as folder:
        assert folder == tmp_path / "p0"
    assert profiling.trace_files(folder)
    assert trace_steps(folder) == []  # nothing was marked as a step
