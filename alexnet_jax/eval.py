"""Evaluate a trained model: `python -m alexnet_jax.eval --ckpt runs/cifar10`.

The checkpoint carries its config, so no other option is needed; the test split is read from
the data dir the run used unless --data-dir says otherwise.
"""

import argparse
import sys

from alexnet_jax import checkpoint, compilation_cache, outputs
from alexnet_jax.config import validate
from alexnet_jax.data import data_record, describe_data, load_test_split
from alexnet_jax.errors import UserError, cli
from alexnet_jax.evaluation import (
    DeviceSplit,
    evaluate,
    format_result,
    make_evaluator,
    result_json,
    views,
)
from alexnet_jax.parallel import make_mesh


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    checkpoint.add_arguments(parser)
    parser.add_argument("--data-dir", help="TFDS data dir (default: the one the run used)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--flip", action="store_true", help="average with mirrored images (TTA)")
    parser.add_argument(
        "--shift",
        type=int,
        metavar="PIXELS",
        help="average with views shifted this far up, down, left and right (TTA)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results as JSON to FILE, or only them, to stdout, with -",
    )
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size} must be at least 1")
    if args.shift is not None and args.shift < 0:
        raise UserError(f"--shift={args.shift} must be at least 0 (pixels)")
    outputs.check_file(args.json, "--json")
    compilation_cache.enable()

    mesh = make_mesh()
    trained = checkpoint.load_trained(args.ckpt, args.best, mesh)
    config = trained.config
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.batch_size is not None:
        config.eval_batch_size = args.batch_size
    if args.flip:
        config.eval_flip = True
    if args.shift is not None:
        config.eval_shift = args.shift
        validate(config)

    test, class_names = load_test_split(config.dataset, config.data_dir, config.download)
    split = DeviceSplit(test, config.eval_batch_size, mesh)
    evaluator = make_evaluator(config, trained.derived, mesh)
    result = evaluate(trained.state, split, evaluator, trained.derived.num_classes)
    tfds = describe_data(data_record(config))
    note = checkpoint.in_memory_note(trained, f"it was evaluated on {tfds}'s test split instead")
    if note:
        print(note, file=sys.stderr)

    shown = views(config.eval_flip, config.eval_shift)
    if args.json != "-":
        print(f"{config.dataset}, {checkpoint.describe(trained, args.best)}, {len(shown)} view(s)")
        print(format_result(result, class_names))
    if args.json:
        payload = result_json(
            result,
            class_names,
            dataset=config.dataset,
            checkpoint=str(trained.path),
            epoch=trained.epoch,
            partial=trained.progress,
            eval_flip=bool(config.eval_flip),
            eval_shift=config.eval_shift,
            views=views(config.eval_flip, config.eval_shift),
        )
        outputs.write_json(payload, args.json)


if __name__ == "__main__":
    main()
