"""A run owns its output folder's result set: files an earlier run wrote that this run did not are
removed (through the staging folder, each file replaced atomically); other files are left alone."""
import json

import numpy as np
import pytest

from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.io import MANIFEST, staged_output
from amanita.predictions import write_predictions
from tests.test_report import run_validate


def test_files_of_the_earlier_result_set_not_written_again_are_removed(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with staged_output(tmp_path) as stage:
        for name in ("metrics.json", "observation_predictions.csv", "extra.png"):
            (stage / name).write_text("A")
    with staged_output(tmp_path) as stage:
        (stage / "metrics.json").write_text("B")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "metrics.json", "notes.txt"]
    assert (tmp_path / "metrics.json").read_text() == "B" and (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / MANIFEST).read_text()) == ["metrics.json"]


def test_a_folder_from_before_manifests_loses_only_the_known_names_and_a_manifest_names_nothing_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("observation_predictions.csv", "figure.png"):
        (out / name).write_text("old")
    (tmp_path / "outside.txt").write_text("keep")
    with staged_output(out, known=("observation_predictions.csv", "baseline_predictions.csv")) as stage:
        (stage / "predictions.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "figure.png", "predictions.csv"]
    (out / MANIFEST).write_text(json.dumps(["../outside.txt", "/etc/hostname", "figure.png"]))  # a hand-edited list
    with staged_output(out) as stage:
        (stage / "predictions.csv").write_text("newer")
    assert (tmp_path / "outside.txt").read_text() == "keep" and not (out / "figure.png").exists()


@pytest.fixture
def two_runs(tmp_path):
    """Predictions of run A (per image and per observation) and of run B (per image only)."""
    tax = synthetic_taxonomy({"phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 8,
                              "leaf": 9}, seed=0)
    tax.save(tmp_path / "m.json")
    for run, seed in (("a", 0), ("b", 1)):
        (tmp_path / run).mkdir()
        preds = synthetic_predictions(tax, 60, seed=seed)
        write_predictions(preds, tmp_path / run / "predictions.csv", tax)
        if run == "a":
            obs = preds.drop_duplicates("observationID").assign(n_images=2)
            write_predictions(obs, tmp_path / run / "observation_predictions.csv", tax)
    return tmp_path


def test_a_later_run_into_the_same_folder_leaves_no_file_of_the_earlier_one(two_runs, monkeypatch):
    monkeypatch.setattr("amanita.evaluate.make_figures", lambda *a, **k: ([], []))
    root, out = two_runs, two_runs / "out"
    common = ["--mappings", root / "m.json", "--output-dir", out]
    code, _, err = run_validate("--from-predictions", root / "a" / "predictions.csv", *common)
    assert code == 0, err
    assert (out / "observation_predictions.csv").is_file()
    code, _, err = run_validate("--from-predictions", root / "b" / "predictions.csv", "--aggregate", "image", *common)
    assert code == 0, err
    assert not (out / "observation_predictions.csv").exists()  # A's, which B did not write
    # the report remade from the folder is B's alone: no per-observation numbers of A
    code, _, err = run_validate("--from-predictions", out / "predictions.csv", *common[:2], "--output-dir", root / "again")
    assert code == 0, err
    m = json.loads((root / "again" / "metrics.json").read_text())
    assert "observation" not in m and m["model"]["n_samples"] == 60
    assert np.isclose(m["model"]["keys"]["leaf"]["top1"],
                      json.loads((out / "metrics.json").read_text())["model"]["keys"]["leaf"]["top1"])
