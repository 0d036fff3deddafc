"""What bounding the calls in flight costs (`run.CALLS_IN_FLIGHT`, issue 15): the bench with the
bound and without it, in alternating fresh processes.

    python benchmarks/calls_in_flight.py --rounds 4 --out-dir DIR [-- bench options]

The driver dispatches call n + 1 only once call n - 1 is done, so that a stop request takes
effect after the call in progress instead of after every call queued on the devices. Each round
runs `python -m alexnet_jax.bench` twice, with the bound (2) and with none (the host may queue
a whole epoch between metric fetches), in that order, then the next round: a shared machine's
speed drifts, and alternating spreads the drift over both. Writes each run's JSON to DIR and
prints each run's training images/s and the median of each setting.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {"bounded": 2, "unbounded": 10**9}
RUN = (
    "import sys; import alexnet_jax.run as run; run.CALLS_IN_FLIGHT = int(sys.argv[1]); "
    "from alexnet_jax import bench; bench.main(sys.argv[2:])"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("bench", nargs="*", help="options for alexnet_jax.bench (after --)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rates = {name: [] for name in SETTINGS}
    for round_ in range(1, args.rounds + 1):
        for name, bound in SETTINGS.items():
            path = out / f"{name}-{round_}.json"
            command = [sys.executable, "-c", RUN, str(bound), *args.bench, "--out", str(path)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            results = json.loads(path.read_text())["results"]
            rate = [r["train"]["images_per_second"] for r in results]
            rates[name].append(rate)
            print(f"round {round_} {name:<10} training img/s {rate}", flush=True)
    for name, values in rates.items():
        medians = [statistics.median(column) for column in zip(*values, strict=True)]
        print(f"median {name:<10} training img/s {medians}")


if __name__ == "__main__":
    main()
