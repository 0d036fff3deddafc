#!/usr/bin/env bash
# Wheels for the GPU machine lent to some sessions (see benchmarks/README.md): the Python 3.12
# packages this project needs that its image lacks, at the versions tested here, without their
# dependencies (the image has the rest: jax, flax, optax, orbax, numpy, ...). Not OpenCV (60 MB):
# without it TFDS decodes with Pillow, to the same images.
#
#   bash benchmarks/stage-wheels.sh [OUTDIR]        (default .whl; about 15 MB)
#
# There, before the project's commands:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
out=${1:-.whl}
python=${PYTHON:-python3}
mkdir -p "$out"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out" \
  ml-collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 \
  array-record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 \
  docstring-parser==0.18.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 \
  keras==3.15.1 namex==0.1.0 optree==0.20.0 tensorboardx==2.6.5
# promise (a tensorflow-datasets requirement) is published as source only: build its wheel.
"$python" -m pip wheel --quiet --no-deps -w "$out" promise==2.3
ls -l "$out" | awk 'NR > 1 {print $5, $NF}'
du -sh "$out"
