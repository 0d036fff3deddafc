"""Does OpenCV read the datasets faster than Pillow? `python benchmarks/decoder.py --data-dir DIR`.

TFDS decodes each PNG with OpenCV when `cv2` imports, else with Pillow (and warns). This times
`alexnet_jax.data.load_dataset` for MNIST and CIFAR-10 in fresh processes, Pillow and OpenCV
alternating (`cv2` is hidden from the Pillow ones), wall and CPU seconds, and checks that both
decoders give the same bytes; then, in this process, the decoding alone of the test split's
10,000 PNGs, alternating too. On a shared machine the wall times carry the other load; the CPU
seconds are the process's own.
"""

import argparse
import hashlib
import io
import json
import subprocess
import sys
import time

DATASETS = (("mnist", "3.0.1"), ("cifar10", "3.0.2"))


def child(decoder: str, data_dir: str) -> dict:
    """One process's load of both datasets with `decoder`."""
    if decoder == "pillow":
        sys.modules["cv2"] = None  # `import cv2` now fails, so TFDS falls back to Pillow
    from alexnet_jax.data import load_dataset

    result = {"decoder": decoder}
    for name, _ in DATASETS:
        wall, cpu = time.perf_counter(), time.process_time()
        dataset = load_dataset(name, data_dir, download=False)
        result[name] = {
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "sha256": hashlib.sha256(
                dataset.train.images.tobytes() + dataset.test.images.tobytes()
            ).hexdigest(),
        }
    return result


def decode_only(data_dir: str, rounds: int) -> dict:
    """CPU seconds to decode each dataset's 10,000 test PNGs, per decoder and round."""
    import cv2
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    def pillow(blob):
        with Image.open(io.BytesIO(blob)) as image:
            return np.asarray(image)

    def opencv(blob):
        return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)

    results = {}
    for name, version in DATASETS:
        source = tfds.data_source(
            f"{name}:{version}",
            split="test",
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        blobs = [item["image"] for item in source.__getitems__(list(range(len(source))))]
        times = {"pillow": [], "opencv": []}
        for _ in range(rounds):
            for decoder, decode in (("pillow", pillow), ("opencv", opencv)):
                start = time.process_time()
                for blob in blobs:
                    decode(blob)
                times[decoder].append(round(time.process_time() - start, 3))
        results[name] = {"images": len(blobs), "cpu_seconds": times}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a TFDS data dir with both datasets")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results as JSON")
    parser.add_argument("--child", choices=("pillow", "opencv"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data_dir)))
        return

    from alexnet_jax.environment import environment

    loads = []
    for _ in range(args.rounds):
        for decoder in ("pillow", "opencv"):
            command = [sys.executable, __file__, "--child", decoder, "--data-dir", args.data_dir]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            loads.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(loads[-1]), file=sys.stderr, flush=True)
    for name, _ in DATASETS:
        if len({load[name]["sha256"] for load in loads}) != 1:
            raise SystemExit(f"the decoders gave different {name} images")
    document = {
        **environment(),
        "loads": loads,
        "decode_only": decode_only(args.data_dir, args.rounds),
    }
    text = json.dumps(document, indent=2) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
