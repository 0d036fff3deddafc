import json

import numpy as np
import pytest

from alexnet_jax import seeds

from conftest import tiny_config


def test_runs_each_seed_and_summarises_with_evidence(tiny_dataset, tmp_path, capsys):
    # With test-time shifts of its own: evaluated single view, flipped, and over its 5 views.
    config = tiny_config(num_epochs=1, eval_shift=1)
    results = tmp_path / "results"
    summary = seeds.run_seeds(config, [3, 4], tmp_path / "runs", results, tiny_dataset)

    assert summary["seeds"] == [3, 4] and summary["epochs"] == 1
    for run in summary["runs"]:
        folder = results / f"seed{run['seed']}"
        saved = json.loads((folder / "config.json").read_text())
        assert saved["seed"] == run["seed"]
        single = json.loads((folder / "eval.json").read_text())
        flip = json.loads((folder / "eval_flip.json").read_text())
        own = json.loads((folder / "eval_views.json").read_text())
        assert (single["eval_flip"], flip["eval_flip"], own["eval_flip"]) == (False, True, False)
        assert (len(single["views"]), len(flip["views"]), len(own["views"])) == (1, 2, 5)
        assert own["eval_shift"] == 1
        assert single["accuracy"] == run["test_accuracy"]
        assert flip["accuracy"] == run["test_accuracy_flip"]
        assert own["accuracy"] == run["test_accuracy_views"]
        assert single["num_examples"] == len(tiny_dataset.test)
        for name in ("metrics.jsonl", "mnist_loss.png"):
            assert (folder / name).stat().st_size > 0
    accuracies = [run["test_accuracy"] for run in summary["runs"]]
    assert summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert json.loads((results / "summary.json").read_text()) == summary
    assert summary["views"]["test_accuracy_views"] == own["views"]
    table = (results / "summary.md").read_text()
    assert len(table.strip().splitlines()) == 5 and "mean ± std" in table
    assert "with the config's 5 views" in table


def test_repeated_seeds_are_refused(tiny_dataset, tmp_path):
    with pytest.raises(seeds.UserError, match="repeats a seed"):
        seeds.run_seeds(tiny_config(), [1, 1], tmp_path, None, tiny_dataset)
