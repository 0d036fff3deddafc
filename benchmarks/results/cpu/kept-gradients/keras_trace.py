"""A jax.profiler trace of 8 steps of Keras' jitted `train_step` (benchmarks/step_breakdown.py's,
batch 16, 67x67) after 5 warm ones, into the folder given.

    PYTHONPATH=. python benchmarks/results/cpu/kept-gradients/keras_trace.py runs/keras-trace
    python benchmarks/trace_kernels.py \
        runs/keras-trace/plugins/profile/*/perfetto_trace.json.gz --steps 8
"""

import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
import step_breakdown  # noqa: E402

keras = step_breakdown.Keras(67, 16)
keras.steps(None, 5)
jax.profiler.start_trace(sys.argv[1], create_perfetto_trace=True)
keras.steps(None, 8)
jax.profiler.stop_trace()
