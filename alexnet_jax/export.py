"""Export a trained model for inference: `python -m alexnet_jax.export --ckpt runs/mnist --out DIR`.

DIR receives the inference function (uint8 images of the run's source size -> logits, the
preprocessing included) serialized with `jax.export` as StableHLO for any batch size, its weights
as .npz and a manifest. `alexnet_jax.exported` runs it without the model code or the config.
DIR is new, empty or an earlier export, which this one replaces; any other folder is refused,
and so is a second export into DIR while one writes it.
`--onnx` adds model.onnx, converted by jax2onnx (the `onnx` extra).
"""

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import checkpoint, compilation_cache, exported, outputs
from alexnet_jax.errors import UserError, cli
from alexnet_jax.evaluation import combined_logits, inference_options, view_logits, views
from alexnet_jax.locks import hold_output
from alexnet_jax.outputs import listed
from alexnet_jax.parallel import make_mesh
from alexnet_jax.state import inference_variables

ONNX = "model.onnx"
ONNX_OPSET = 21
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# What an export writes into --out, the manifest last (export_checked).
EXPORT_FILES = (exported.FUNCTION, exported.WEIGHTS, ONNX, exported.MANIFEST)


def logits_function(trained: checkpoint.Trained):
    """(weights as a flat list, uint8 images [B, H, W, C]) -> logits [B, classes], and the weights.

    The logits are evaluation's: over the run's test-time views (`eval_flip`, `eval_shift`),
    the log of the mean probability, so that their softmax is what evaluation and `predict`
    compute. The weights are the parameters and BatchNorm statistics; passing them as arguments
    rather than closing over them keeps them out of the serialized program (~180 MB at 224x224).
    """
    options = inference_options(trained.config, trained.derived)
    variables = inference_variables(trained.state)
    named, treedef = jax.tree_util.tree_flatten_with_path(variables)
    names = ["/".join(str(key.key) for key in path) for path, _ in named]
    weights = [np.asarray(jax.device_get(leaf)) for _, leaf in named]
    apply_fn = trained.state.apply_fn

    def logits(weights, images):
        variables = jax.tree.unflatten(treedef, weights)
        return combined_logits(view_logits(apply_fn, variables, images, **options))

    return logits, names, weights


def export(
    trained: checkpoint.Trained,
    out: Path,
    platforms=("cpu", "cuda"),
    onnx=False,
    shown: Path | None = None,
) -> dict:
    """Write the serialized function, its weights, optionally model.onnx, and the manifest.

    The manifest goes last, so that a folder that has one is complete. Returns the manifest.
    `shown` is the folder that errors name, when `out` is a staging folder beside it.
    """
    config, shape = trained.config, trained.source_shape
    logits, names, weights = logits_function(trained)
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *shape), jnp.uint8)
    weight_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
    function = jax.export.export(jax.jit(logits), platforms=platforms)(weight_specs, images)

    out.mkdir(parents=True, exist_ok=True)
    (out / exported.MANIFEST).unlink(missing_ok=True)
    shown = shown or out
    with _writing(exported.FUNCTION, shown):
        (out / exported.FUNCTION).write_bytes(function.serialize())
    with _writing(exported.WEIGHTS, shown):
        np.savez(out / exported.WEIGHTS, **dict(zip(names, weights, strict=True)))
    if onnx:
        with _writing(ONNX, shown):
            export_onnx(trained, out / ONNX)
    manifest = {
        "format": exported.FORMAT,
        "format_version": exported.FORMAT_VERSION,
        "dataset": config.dataset,
        "input": {"shape": [None, *shape], "dtype": "uint8"},
        "output": "logits",
        "class_names": list(trained.class_names),  # the run's own, when it had a Dataset
        "image_size": config.image_size,
        "compute_dtype": jnp.dtype(trained.derived.dtype).name,
        # Evaluation's test-time views, inside the function: shifts in source pixels (down,
        # right), then the mirror. With more than one, the logits are the log of the views'
        # mean probability.
        "test_time_views": views(config.eval_flip, config.eval_shift),
        "test_time_flip": bool(config.eval_flip),
        "platforms": list(platforms),
        "weight_names": names,
        "onnx": ONNX if onnx else None,
        "checkpoint": str(trained.path),
        "epoch": trained.epoch,
        "partial": trained.progress,  # a stopped epoch's progress (checkpoint.Trained)
        "metrics": trained.history[-1] if trained.history else None,
        "jax_version": jax.__version__,
    }
    with _writing(exported.MANIFEST, shown):
        (out / exported.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def _writing(name: str, out: Path):
    """A full disk while writing the export's file `name` is one line naming it: the folder it is
    written in is removed by export_checked, so nothing half-written is left."""
    try:
        yield
    except OSError as e:
        if not outputs.disk_full(e):
            raise
        raise outputs.write_error(f"the export's {name} for {out}", e) from e


def export_onnx(trained: checkpoint.Trained, path: Path) -> None:
    """Write the same function as an ONNX model (weights inside) with a dynamic batch axis."""
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise UserError(
            f"--onnx needs jax2onnx ({e}): install the extra, pip install -e '.[onnx]'"
        ) from e
    logits, _, weights = logits_function(trained)
    shape = jax.export.symbolic_shape(f"batch, {', '.join(map(str, trained.source_shape))}")
    with _quiet("jax2onnx", "onnx_ir"):
        model = to_onnx(
            lambda images: logits(weights, images),
            [jax.ShapeDtypeStruct(shape, jnp.uint8)],
            model_name=f"alexnet_{trained.config.dataset}",
            opset=ONNX_OPSET,
            input_names=["images"],
            output_names=["logits"],
        )
    path.write_bytes(model.SerializeToString())


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Errors only from these loggers, and no prints.

    jax2onnx prints debugging lines, logs a traceback for each of its plugins that fails to
    import with this JAX (dm_pix ones, which we do not use) and warns about shapes it infers.
    """
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class ExportMismatch(UserError):
    """What was written does not compute what the live model computes."""


def check_export(trained: checkpoint.Trained, out: Path, onnx: bool) -> dict[str, float]:
    """Run the written formats on random images: the largest |logit difference| to the live model.

    Raises ExportMismatch when one is further than float32 rounding allows (16-bit compute: 2%
    of the logits).
    """
    logits, _, weights = logits_function(trained)
    images = np.random.default_rng(0).integers(0, 256, (3, *trained.source_shape), np.uint8)
    live = np.asarray(jax.jit(logits)(weights, images))
    outputs = {"jax": exported.load(out)(images)}
    if onnx:
        with contextlib.suppress(ImportError):  # written but not checked; main says so
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only, not jax2onnx's shape-merging warnings
            session = onnxruntime.InferenceSession(
                str(out / ONNX), options, providers=["CPUExecutionProvider"]
            )
            outputs["onnx"] = session.run(None, {"images": images})[0]
    exact = jnp.dtype(trained.derived.dtype) == jnp.float32
    tolerance = (1e-4 if exact else 2e-2) * max(1.0, float(np.abs(live).max()))
    differences = {}
    for name, output in outputs.items():
        differences[name] = float(np.abs(output - live).max())
        if not differences[name] <= tolerance:  # also catches NaN
            raise ExportMismatch(
                f"the {name} export's logits differ from the live model's by "
                f"{differences[name]:.3g}, more than {tolerance:.3g}: please report this"
            )
    return differences


def earlier_export_files(out: Path) -> set[str] | None:
    """The files an earlier export wrote into `out`, as its manifest says; None when `out` holds
    no manifest of an alexnet_jax export."""
    try:
        manifest = json.loads((out / exported.MANIFEST).read_text())
    except (OSError, ValueError):  # none, a folder, not JSON, not text
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != exported.FORMAT:
        return None
    written = {exported.FUNCTION, exported.WEIGHTS, exported.MANIFEST}
    return written | {ONNX} if manifest.get("onnx") == ONNX else written


def check_replaceable(out: Path) -> None:
    """Refuse an `out` that is neither empty (or absent) nor an earlier export: exporting
    replaces or removes the files of EXPORT_FILES' names, which there may be the user's own."""
    present = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if not present:
        return
    ours = earlier_export_files(out)
    if ours is None and exported.FUNCTION in present and set(present) <= set(EXPORT_FILES):
        return  # an export stopped as it moved its files in (the manifest comes last): redone
    if ours is None:
        at_risk = [name for name in EXPORT_FILES if name in present]
        if at_risk:
            raise UserError(
                f"--out {out} is not an alexnet_jax export (it has no manifest of one), and "
                f"exporting would replace or remove its {listed(at_risk)}: move them away, "
                "or name an empty or new folder"
            )
        raise UserError(
            f"--out {out} holds files that are not an alexnet_jax export ({listed(present)}): "
            "name an empty or new folder"
        )
    theirs = [name for name in EXPORT_FILES if name in present and name not in ours]
    if theirs:
        raise UserError(
            f"--out {out} holds an earlier export and a {listed(theirs)} that it did not write, "
            "which exporting would replace or remove: move it away, or name another folder"
        )


def export_checked(
    trained: checkpoint.Trained, out: Path, platforms=("cpu", "cuda"), onnx=False
) -> tuple[dict, dict[str, float]]:
    """`export` into a folder beside `out`, `check_export` it there, and only then move it into
    `out`, the manifest last: an export that fails its check leaves `out` as it was. `out` is
    empty, new or an earlier export (`check_replaceable`), and then holds this one export: an
    earlier export's file that this one does not write (its ONNX model, when this one has none)
    is removed with the rest replaced, so that nothing stale looks current."""
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = export(trained, staging, platforms, onnx, shown=out)
        try:
            differences = check_export(trained, staging, onnx)
        except ExportMismatch as e:
            raise ExportMismatch(f"{e}; nothing was written to {out}") from e
        check_replaceable(out)  # again: files may have come into it during the export
        out.mkdir(exist_ok=True)
        (out / exported.MANIFEST).unlink(missing_ok=True)
        for name in EXPORT_FILES:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, differences


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    checkpoint.add_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to write the export into")
    parser.add_argument(
        "--platforms",
        default="cpu,cuda",
        help=f"where the function may run, comma-separated from {', '.join(PLATFORMS)}",
    )
    parser.add_argument("--onnx", action="store_true", help=f"also write {ONNX} (jax2onnx)")
    args = parser.parse_args(argv)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise UserError(f"--platforms {args.platforms}: choose from {', '.join(PLATFORMS)}")
    out = Path(args.out)
    outputs.check_folder(args.out, "--out")
    # Held until the export is in place: another export into `out` would mix its files in.
    with hold_output(out, "export", "--out"):
        check_replaceable(out)  # before the checkpoint is read: nothing of the user's is replaced
        compilation_cache.enable()
        trained = checkpoint.load_trained(args.ckpt, args.best, make_mesh(jax.devices()[:1]))
        manifest, differences = export_checked(trained, out, platforms, args.onnx)
    names = listed(list(trained.class_names))
    note = checkpoint.in_memory_note(trained, f"the manifest lists its class names ({names})")
    if note:
        print(note, file=sys.stderr)

    shape = "x".join(map(str, manifest["input"]["shape"][1:]))
    print(f"exported {trained.config.dataset}, {checkpoint.describe(trained, args.best)}")
    print(f"  {out / exported.FUNCTION}: uint8 [batch, {shape}] -> logits, for {args.platforms}")
    print(f"  {out / exported.WEIGHTS}, {out / exported.MANIFEST}")
    if args.onnx:
        print(f"  {out / ONNX}")
    for name, difference in differences.items():
        print(f"  checked {name}: logits within {difference:.2g} of the live model")
    if args.onnx and "onnx" not in differences:
        print("  not checked onnx: onnxruntime is not installed")


if __name__ == "__main__":
    main()
