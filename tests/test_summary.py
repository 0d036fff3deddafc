import re

import pytest

from alexnet_jax.model import STEMS, AlexNet
from alexnet_jax.summary import format_summary, main, summarize

from conftest import ROOT

# The seed README's tables: (name, output shape, parameters); conv2d differs by input channels.
SEED_ROWS = [
    ("conv2d", (None, 54, 54, 96), None),
    ("batch_normalization", (None, 54, 54, 96), 384),
    ("max_pooling2d", (None, 26, 26, 96), 0),
    ("conv2d_1", (None, 26, 26, 256), 614656),
    ("batch_normalization_1", (None, 26, 26, 256), 1024),
    ("max_pooling2d_1", (None, 12, 12, 256), 0),
    ("conv2d_2", (None, 12, 12, 384), 885120),
    ("batch_normalization_2", (None, 12, 12, 384), 1536),
    ("conv2d_3", (None, 12, 12, 384), 1327488),
    ("batch_normalization_3", (None, 12, 12, 384), 1536),
    ("conv2d_4", (None, 12, 12, 256), 884992),
    ("batch_normalization_4", (None, 12, 12, 256), 1024),
    ("max_pooling2d_2", (None, 5, 5, 256), 0),
    ("flatten", (None, 6400), 0),
    ("dense", (None, 4096), 26218496),
    ("dropout", (None, 4096), 0),
    ("dense_1", (None, 4096), 16781312),
    ("dropout_1", (None, 4096), 0),
    ("dense_2", (None, 10), 40970),
]
FIRST_CONV = {3: 34944, 1: 11712}
TOTALS = {3: (46_793_482, 46_790_730, 2_752), 1: (46_770_250, 46_767_498, 2_752)}
SEED_README = ROOT.parent / "shared" / "seed"


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("channels", [3, 1], ids=["cifar10", "mnist"])
def test_rows_equal_the_seed_tables(channels, stem):
    summary = summarize(AlexNet(stem=stem), (224, 224, channels))
    expected = [(n, s, FIRST_CONV[channels] if p is None else p) for n, s, p in SEED_ROWS]
    assert [(r.name, r.output_shape, r.params) for r in summary.rows] == expected
    assert (summary.total, summary.trainable, summary.non_trainable) == TOTALS[channels]


def seed_tables():
    """The two <pre> tables of the seed README (cifar10 first), as lists of stripped lines."""
    files = sorted(SEED_README.glob("*")) if SEED_README.is_dir() else []
    if not files:
        pytest.skip("the seed README is not beside the checkout")
    text = files[0].read_text()
    tables = re.findall(r"<pre>\n(.*?)</pre>", text, flags=re.S)
    return [[line.rstrip() for line in table.strip().splitlines()] for table in tables]


@pytest.mark.parametrize("index, dataset", [(0, "cifar10"), (1, "mnist")])
def test_printed_table_equals_the_seed_readme(index, dataset, capsys):
    expected = seed_tables()[index]
    main(["--dataset", dataset])
    printed = [line.rstrip() for line in capsys.readouterr().out.strip().splitlines()]
    # Compare everything but the closing rule, whose length differs between the seed's tables.
    assert [line.strip() for line in printed[:-1]] == [line.strip() for line in expected[:-1]]


def test_format_lists_totals():
    text = format_summary(summarize(AlexNet(), (224, 224, 3)))
    assert "Total params: 46,793,482" in text
    assert "batch_normalization (BatchNo" in text  # Keras' 28-character name column


def test_small_input_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "mnist", "--image-size", "50"])
    assert exit_info.value.code == 2
    assert "at least 67" in capsys.readouterr().err


def test_a_huge_input_is_counted_without_making_an_image():
    # The dummy image was made before the abstract pass: 120 GB at 100,000 px, out of memory.
    rows = {row.name: row for row in summarize(AlexNet(), (100_000, 100_000, 3)).rows}
    side = (100_000 - 11) // 4 + 1  # conv2d: 11x11, stride 4, no padding (224 -> 54)
    for _ in range(3):
        side = (side - 3) // 2 + 1  # each max-pooling: 3x3, stride 2 (54 -> 26 -> 12 -> 5)
    assert rows["flatten"].output_shape == (None, side * side * 256)
    assert rows["dense"].params == side * side * 256 * 4096 + 4096
