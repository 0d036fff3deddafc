import base64
import errno
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import report
from alexnet_jax.data import synthetic_dataset
from alexnet_jax.errors import UserError
from alexnet_jax.evaluation import EvalResult

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)


class Page(html.parser.HTMLParser):
    """The parts of a report page the tests look at: images, table ids, scripts and links."""

    def __init__(self, text):
        super().__init__()
        self.images, self.tables, self.external = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables.append(attrs.get("id"))
        if tag in ("script", "link", "iframe") or any(
            value and re.match(r"\w+://", value) for value in attrs.values()
        ):
            self.external.append((tag, attrs))


def decoded_pngs(page: Page) -> list[Image.Image]:
    prefix = "data:image/png;base64,"
    assert all(image["src"].startswith(prefix) for image in page.images)
    return [
        Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix) :])))
        for image in page.images
    ]


def cell(text, name):
    """The value next to the row header `name` in the page's tables."""
    match = re.search(rf"<tr><th>{re.escape(name)}</th><td[^>]*>([^<]*)</td>", text)
    assert match, f"no row {name!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def mnist_report(tiny_run, shared_tfds, tmp_path_factory):
    """The CLI's report of the tiny run (trained on synthetic data) on the real MNIST test split."""
    workdir = tmp_path_factory.mktemp("report")
    shutil.copytree(tiny_run, workdir / "mnist")
    report.main(["--workdir", str(workdir), "--data-dir", str(shared_tfds)])
    return workdir / "mnist" / report.REPORT


def test_report_of_a_run_on_the_real_test_split(mnist_report):
    text = mnist_report.read_text()
    page = Page(text)
    assert page.tables == ["metrics", "evaluation", "per-class", "config", "environment"]
    assert page.external == []  # self-contained: no script, stylesheet link or URL
    alts = [image["alt"] for image in page.images]
    assert alts == [
        "loss and accuracy curves",
        "confusion matrix",
        "sample predictions",
        "misclassified examples",
    ]
    sizes = [png.size for png in decoded_pngs(page)]
    assert sizes[0] == (1100, 400) and all(w > 300 and h > 300 for w, h in sizes)
    assert cell(text, "test images") == "10000"
    accuracy = float(cell(text, "top-1 accuracy").rstrip("%")) / 100
    assert int(cell(text, "misclassified")) == pytest.approx(10000 * (1 - accuracy), abs=1)
    assert cell(text, "epochs") == "1"
    assert cell(text, "image_size") == "67" and cell(text, "data_dir") == "null"
    # The environment the run was trained in, from its environment.json.
    assert cell(text, "jax") == jax.__version__ and cell(text, "processes") == "1"
    assert cell(text, "devices").endswith("(cpu)")


def test_the_report_of_a_run_trained_on_a_dataset_says_it_evaluates_tfds_instead(mnist_report):
    # Its final metrics are its synthetic test split's; the evaluation below them is MNIST's.
    text = mnist_report.read_text()
    note = (
        f"{mnist_report.parent}/checkpoints/1 was trained on the in-memory Dataset &#x27;mnist"
        "&#x27;: the report evaluates it on TFDS mnist:3.0.1&#x27;s test split instead; its final "
        "metrics are those of its training, on that Dataset"
    )
    assert f'<h2>Evaluation of the test split</h2>\n<p class="note">{note}</p>' in text
    # The classes evaluated are MNIST's, and so are the per-class rows' names.
    assert cell(text, "7").endswith("%") and "class 7" not in text


def test_report_evaluates_what_training_evaluated(tiny_run, cpu_devices, tmp_path, capsys):
    # The tiny run's last evaluation was of this same synthetic test split.
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    path = report.write_report(
        tiny_run, dataset, best=True, devices=cpu_devices[:2], out=tmp_path / "r.html"
    )
    # Which checkpoint it reports, and for --best how it was chosen, as eval says.
    assert capsys.readouterr().out.startswith(
        f"mnist, epoch 1 of {tiny_run}/checkpoints, the best by "
    )
    text = path.read_text()
    assert cell(text, "test accuracy") == cell(text, "top-1 accuracy")
    assert cell(text, "test images") == "32"
    assert len(Page(text).images) == 4


def test_a_run_whose_metrics_go_past_its_checkpoint_says_which_epoch_is_evaluated(
    tiny_run, cpu_devices, tmp_path
):
    # A training in progress: metrics.jsonl has epochs its newest checkpoint does not, and the
    # page showed the last of them as "Final metrics" beside the older checkpoint's evaluation.
    run = tmp_path / "mnist"
    shutil.copytree(tiny_run, run)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    later = {**json.loads(rows[-1]), "epoch": 2}
    (run / "metrics.jsonl").write_text("\n".join([*rows, json.dumps(later)]) + "\n")
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    text = report.write_report(run, dataset, devices=cpu_devices[:2]).read_text()
    note = (
        "The run&#x27;s metrics above reach epoch 2, past this checkpoint of epoch 1, whose "
        "evaluation this is"
    )
    assert f'<h2>Evaluation of the test split</h2>\n<p class="note">{note}</p>' in text
    assert cell(text, "epochs") == "2"


def test_misclassified_examples_are_the_wrong_predictions():
    labels = np.arange(40) % 10
    predictions = labels.copy()
    predictions[[3, 5, 7]] = 0  # three mistakes: images 3, 5 and 7
    images = np.zeros((40, 28, 28, 1), np.uint8)
    result = EvalResult(0.5, 37 / 40, predictions, labels, 10)
    text = report.render_html(
        "mnist: x", {"seed": 0}, [], result, images, [str(i) for i in range(10)], "epoch 1"
    )
    assert "The first 3 of 3 misclassified test images." in text
    assert cell(text, "3") == "75.00%" and cell(text, "0") == "100.00%"  # per-class accuracy
    assert [i["alt"] for i in Page(text).images] == [
        "confusion matrix",
        "sample predictions",
        "misclassified examples",
    ]  # no history: no curves
    no_mistakes = EvalResult(0.1, 1.0, labels, labels, 10)
    text = report.render_html("m: x", {}, [], no_mistakes, images, list("0123456789"), "e")
    assert "<p>None.</p>" in text and len(Page(text).images) == 2
    assert "Not recorded (no environment.json" in text  # no environment given


def test_runs_are_found_below_a_workdir(tmp_path):
    for run in ("a/mnist", "b/cifar10", "c"):
        (tmp_path / run / "checkpoints").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    assert report.find_runs(tmp_path) == [tmp_path / r for r in ("a/mnist", "b/cifar10", "c")]
    assert report.find_runs(tmp_path / "c") == [tmp_path / "c"]
    with pytest.raises(UserError, match="holds no run"):
        report.find_runs(tmp_path / "notes")


def test_report_cli_on_a_folder_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds no run" in capsys.readouterr().err


def run_chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # we may be root, in a container
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(mnist_report, tmp_path):
    url = mnist_report.resolve().as_uri()
    dom = Page(run_chromium(tmp_path, "--dump-dom", url).stdout)
    assert dom.tables == ["metrics", "evaluation", "per-class", "config", "environment"]
    assert len(decoded_pngs(dom)) == 4

    shot = tmp_path / "page.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,4200", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(colour, within=30):
        return int((np.abs(pixels - colour).sum(1) < within).sum())

    # What the browser drew from the embedded PNGs: the orange test points of the curves,
    # the darkest blue of the confusion matrix and the black backgrounds of the MNIST digits.
    assert count((255, 127, 14)) > 20
    assert count((8, 48, 107)) > 500
    assert count((0, 0, 0), within=3) > 50_000
    assert count((255, 255, 255), within=3) < 0.9 * len(pixels)


def synthetic_test_split(monkeypatch):
    """Reports read this small synthetic test split instead of MNIST's 10,000 images."""
    dataset = synthetic_dataset("mnist", train_size=64, test_size=32)
    monkeypatch.setattr(report, "load_test_split", lambda *_: (dataset.test, dataset.class_names))


def linked_copy(run, to):
    """A copy of `run` whose files are hard links: quick, and the report only reads them."""
    shutil.copytree(run, to, copy_function=os.link)
    return to


def test_a_run_without_a_checkpoint_is_skipped_and_the_others_are_reported(
    tiny_run, tmp_path, monkeypatch, capsys
):
    synthetic_test_split(monkeypatch)
    # A training before its first checkpoint, sorted before the finished run.
    (tmp_path / "a-starting" / "mnist" / "checkpoints").mkdir(parents=True)
    finished = linked_copy(tiny_run, tmp_path / "b-finished" / "mnist")
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "top-1 accuracy" in (finished / report.REPORT).read_text()
    assert not (tmp_path / "a-starting" / "mnist" / report.REPORT).exists()
    captured = capsys.readouterr()
    assert f"wrote {finished / report.REPORT}" in captured.out
    skipped, note, summary = captured.err.strip().splitlines()
    assert note.startswith(f"note: {finished}/checkpoints/1 was trained on the in-memory Dataset")
    assert skipped.startswith(f"skipped {tmp_path / 'a-starting' / 'mnist'}: ")
    assert "holds no checkpoint: a training writes its first after checkpoint_every" in skipped
    assert summary == (
        f"error: 1 of 2 runs not reported ({tmp_path / 'a-starting' / 'mnist'}): "
        "see the lines above"
    )


def never_evaluate(monkeypatch):
    def load_trained(*_, **__):
        raise AssertionError("the checkpoint was read before the report's path was checked")

    monkeypatch.setattr(report.checkpoint, "load_trained", load_trained)


@pytest.mark.parametrize("problem", ["report.html is a folder", "a place that refuses writing"])
def test_a_report_that_cannot_be_written_is_refused_before_the_evaluation(
    problem, tiny_run, tmp_path, monkeypatch
):
    never_evaluate(monkeypatch)
    run = linked_copy(tiny_run, tmp_path / "mnist")
    if problem == "report.html is a folder":
        (run / report.REPORT).mkdir()
        out, message = None, rf"{run / report.REPORT} is a folder, where the report goes: move it"
    else:
        out = Path("/proc/alexnet_jax_out/report.html")  # refused even to root
        message = r"the report .* cannot be written \(/proc: .*\): make /proc/alexnet_jax_out w"
    with pytest.raises(UserError, match=message):
        report.write_report(run, out=out)


def test_a_report_write_that_fails_keeps_the_earlier_report(
    tiny_run, tmp_path, monkeypatch, capsys
):
    synthetic_test_split(monkeypatch)
    run = linked_copy(tiny_run, tmp_path / "mnist")
    (run / report.REPORT).write_text("the earlier report")
    before = sorted(p.name for p in run.iterdir())
    write_text = Path.write_text

    def disk_fills(path, text, *args, **kwargs):  # half of the page, then a full disk
        if report.REPORT not in path.name:
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_fills)
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--workdir", str(run)])
    assert exit_info.value.code == 2
    assert (run / report.REPORT).read_text() == "the earlier report"
    assert sorted(p.name for p in run.iterdir()) == before  # no partial page left
    error = capsys.readouterr().err
    assert error == (
        f"error: could not write {run / report.REPORT} (No space left on device): "
        "free disk space and run it again\n"
    )
