"""Where the suite's compilations go: a pytest plugin that logs them per test, and its summary.

    ALEXNET_JAX_TEST_CACHE=<empty folder> PYTHONPATH=benchmarks/results/cpu/test-times \
        python -m pytest -q -p compile_log -n 2 --dist loadfile --no-loadscope-reorder
    python benchmarks/results/cpu/test-times/compile_log.py [LOG_DIR]

The plugin turns on `jax_log_compiles` in the test processes (not in the training processes
that tests start, whose output some tests read) and writes, per pytest process, one JSON line per
XLA compilation (test, program, seconds) and per persistent-cache hit to LOG_DIR
(COMPILE_LOG_DIR, default /tmp/compile-log). It also records each program handed to XLA (hashes
of its StableHLO text as it is and with every constant blanked out), so that the summary can say
how many of the training programs differ only in their constants. Run as a script, it sums them
by program, file and test.
"""

import collections
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest

LOG_DIR = Path(os.environ.get("COMPILE_LOG_DIR", "/tmp/compile-log"))
_test = {"id": "<collection>"}
_events = []
_CONSTANT = re.compile(r"dense(?:_resource)?<[^>]*>")


class _Recorder(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        finished = re.search(r"Finished XLA compilation of (.+?) in ([0-9.e+-]+) sec", message)
        if finished:
            _events.append(
                dict(test=_test["id"], kind="compile", name=finished[1], s=float(finished[2]))
            )
        elif "cache hit" in message.lower():
            _events.append(dict(test=_test["id"], kind="hit"))


def pytest_configure(config):
    import jax

    jax.config.update("jax_log_compiles", True)
    recorder = _Recorder(level=logging.DEBUG)
    for name in ("jax._src.dispatch", "jax._src.compiler", "jax._src.interpreters.pxla"):
        logger = logging.getLogger(name)
        logger.addHandler(recorder)
        logger.setLevel(logging.DEBUG)
    _record_programs()


def _record_programs():
    """Wrap the one function that hands a program to XLA (or to the persistent cache)."""
    from jax._src import compiler

    compile_or_get_cached = compiler.compile_or_get_cached

    def recorded(backend, computation, *args, **kwargs):
        text = str(computation)
        start = time.perf_counter()
        executable = compile_or_get_cached(backend, computation, *args, **kwargs)
        digest = lambda t: hashlib.sha1(t.encode()).hexdigest()[:12]  # noqa: E731
        _events.append(
            dict(
                test=_test["id"],
                kind="program",
                name=str(computation.operation.attributes["sym_name"]).strip('"'),
                s=time.perf_counter() - start,
                program=digest(text),
                without_constants=digest(_CONSTANT.sub("C", text)),
            )
        )
        return executable

    compiler.compile_or_get_cached = recorded


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _test["id"] = item.nodeid
    yield
    _test["id"] = "<between tests>"


def pytest_unconfigure(config):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(LOG_DIR / f"{worker}.jsonl", "w") as f:
        f.writelines(json.dumps(event) + "\n" for event in _events)


def summarise(log_dir: Path, top: int = 25) -> None:
    events = [json.loads(line) for path in log_dir.glob("*.jsonl") for line in open(path)]
    compiles = [e for e in events if e["kind"] == "compile"]
    seconds = collections.defaultdict(collections.Counter)
    for e in compiles:
        seconds["program"][e["name"]] += e["s"]
        seconds["file"][e["test"].split("::")[0]] += e["s"]
        seconds["test"][e["test"]] += e["s"]
    count = collections.Counter(e["test"] for e in compiles)
    hits = collections.Counter(e["test"] for e in events if e["kind"] == "hit")
    total = sum(e["s"] for e in compiles)
    print(f"{total:.1f} s in {len(compiles)} compilations, {sum(hits.values())} cache hits")
    for by in ("program", "file", "test"):
        print(f"\nby {by} (the {top} longest): seconds" + ("  compilations  hits" * (by == "test")))
        for key, s in seconds[by].most_common(top):
            extra = f"  {count[key]:4d}  {hits[key]:4d}" if by == "test" else ""
            print(f"  {s:7.1f}{extra}  {key}")
    programs = [e for e in events if e["kind"] == "program" and "per_device" in e["name"]]
    if programs:
        _summarise_training_programs(programs)


def _summarise_training_programs(programs) -> None:
    """How many distinct training programs the tests build, and how many would remain if their
    constants (the learning-rate schedule's, the loss's, ...) were inputs instead."""
    first = {}  # each distinct program's first handing over: its compilation
    for e in programs:
        first.setdefault(e["program"], e)
    by_shape = collections.defaultdict(list)
    for e in first.values():
        by_shape[e["without_constants"]].append(e["s"])
    shared = sum(sum(sorted(s)[:-1]) for s in by_shape.values())
    print(
        f"\ntraining programs (jit(per_device)): {len(programs)} handed to XLA in "
        f"{sum(e['s'] for e in programs):.1f} s, {len(first)} distinct "
        f"(their first compilations {sum(e['s'] for e in first.values()):.1f} s); "
        f"{len(by_shape)} distinct with every constant blanked out: constants as inputs "
        f"would save at most {shared:.1f} s"
    )


if __name__ == "__main__":
    summarise(Path(sys.argv[1]) if len(sys.argv) > 1 else LOG_DIR)
